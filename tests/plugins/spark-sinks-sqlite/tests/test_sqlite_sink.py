import json
import sqlite3

import pytest
import spark_sinks_sqlite
from spark_sinks_sqlite import SqliteSink

from spark_sinks.testing import MISSING, Invalid, SinkContract, SinkHarness, sample_envelopes


def rows(path, table="envelopes"):
    with sqlite3.connect(path) as db:
        return [json.loads(r[0]) for r in db.execute(f"SELECT json FROM {table} ORDER BY id")]


class TestSqliteContract(SinkContract):
    sink_class = SqliteSink
    plugin_module = spark_sinks_sqlite
    invalid_configs = [
        Invalid({"path": MISSING}, "path", "required key is missing"),
        Invalid({"table": "x; DROP TABLE y"}, "table", "not a plain SQL table name"),
        Invalid({"batch_size": 0}, "batch_size", "greater than 0"),
    ]

    @pytest.fixture
    def sink_config(self, tmp_path):
        return {"path": str(tmp_path / "spark.db"), "batch_size": 8}

    @pytest.fixture
    def read_back(self, sink_config):
        return lambda: rows(sink_config["path"])


def test_commits_every_batch_size_and_at_flush(tmp_path):
    db = tmp_path / "spark.db"
    harness = SinkHarness(SqliteSink, {"path": str(db), "batch_size": 5})
    harness.start()
    harness.write(sample_envelopes()[:4])
    assert rows(db) == []  # queued, not yet committed
    harness.write(sample_envelopes()[4:6])
    assert len(rows(db)) == 6
    assert harness.sink.stats.delivered == 6
    harness.write(sample_envelopes()[6:7])
    harness.stop()
    assert len(rows(db)) == 7
    assert harness.sink.stats.delivered == 7


def test_a_failed_commit_keeps_the_envelopes_for_the_next_flush(tmp_path):
    db = tmp_path / "spark.db"
    harness = SinkHarness(SqliteSink, {"path": str(db), "batch_size": 2})
    harness.start()
    with sqlite3.connect(db) as other:  # hold the write lock: the commit in write fails
        other.execute("BEGIN EXCLUSIVE")
        # the connection belongs to the sink's worker thread, as every call does
        harness.on_worker(lambda: harness.sink.db.execute("PRAGMA busy_timeout = 0"))
        harness.write(sample_envelopes()[:3])
        assert harness.sink.stats.delivered == 0
        other.rollback()
    harness.stop()
    assert len(rows(db)) == 3
    stats = harness.sink.stats.snapshot()
    assert (stats["delivered"], stats["failed"], stats["pending"]) == (3, 0, 0)
