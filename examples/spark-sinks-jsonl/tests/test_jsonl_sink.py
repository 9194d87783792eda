"""The jsonl sink: the spark-sinks contract kit, plus what is particular to it (rotation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import spark_sinks_jsonl
from spark_sinks_jsonl import JsonlSink

from spark_sinks import ConfigError, SinkError
from spark_sinks.testing import MISSING, Invalid, SinkContract, SinkHarness, sample_envelopes


def read_dir(directory: Path, prefix: str = "spark") -> list[dict]:
    lines = []
    for path in sorted(directory.glob(f"{prefix}-*.jsonl")):
        lines.extend(json.loads(line) for line in path.read_bytes().splitlines())
    return lines


class TestJsonlSinkContract(SinkContract):
    sink_class = JsonlSink
    plugin_module = spark_sinks_jsonl
    invalid_configs = [
        Invalid({"directory": MISSING}, "directory", "required key is missing"),
        Invalid({"max_bytes": 0}, "max_bytes", "greater than 0"),
        Invalid({"prefix": "../etc"}, "prefix", "not a plain file-name prefix"),
        Invalid({"keep": 0}, "keep", "greater than or equal to 1"),
    ]

    @pytest.fixture
    def sink_config(self, tmp_path):
        # small files, so that the contract also runs across rotations
        return {"directory": str(tmp_path / "out"), "max_bytes": 4096}

    @pytest.fixture
    def read_back(self, sink_config):
        return lambda: read_dir(Path(sink_config["directory"]))


def run(config: dict, batches: list[list]) -> SinkHarness:
    harness = SinkHarness(JsonlSink, config)
    harness.start()
    for batch in batches:
        harness.write(batch)
    harness.stop()
    return harness


def test_rotates_before_a_file_would_exceed_max_bytes(tmp_path):
    envelopes = sample_envelopes()
    largest = max(len(e.to_json()) + 1 for e in envelopes)
    run({"directory": str(tmp_path), "max_bytes": 2 * largest}, [envelopes])
    files = sorted(tmp_path.glob("spark-*.jsonl"))
    assert len(files) >= len(envelopes) // 2
    assert all(f.stat().st_size <= 2 * largest for f in files)
    assert read_dir(tmp_path) == [e.to_dict() for e in envelopes]


def test_rotates_when_the_file_is_older_than_max_age(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(spark_sinks_jsonl.time, "monotonic", lambda: now[0])
    envelopes = sample_envelopes()[:4]
    harness = SinkHarness(JsonlSink, {"directory": str(tmp_path), "max_age": 5})
    harness.start()
    harness.write(envelopes[:1])
    now[0] += 4  # younger than max_age: same file
    harness.write(envelopes[1:2])
    now[0] += 2  # now older: a new file
    harness.write(envelopes[2:])
    harness.stop()
    counts = [len(f.read_bytes().splitlines()) for f in sorted(tmp_path.glob("*.jsonl"))]
    assert counts == [2, 2]


def test_a_new_run_continues_numbering_and_never_overwrites(tmp_path):
    envelopes = sample_envelopes()
    run({"directory": str(tmp_path)}, [envelopes[:3]])
    run({"directory": str(tmp_path)}, [envelopes[3:6]])
    assert sorted(f.name for f in tmp_path.glob("*.jsonl")) == [
        "spark-000001.jsonl",
        "spark-000002.jsonl",
    ]
    assert read_dir(tmp_path) == [e.to_dict() for e in envelopes[:6]]


def test_keep_deletes_the_oldest_files(tmp_path):
    envelopes = sample_envelopes()
    run({"directory": str(tmp_path), "max_bytes": 1, "keep": 3}, [envelopes])
    names = sorted(f.name for f in tmp_path.glob("*.jsonl"))
    last = len(envelopes)
    assert names == [f"spark-{n:06d}.jsonl" for n in range(last - 2, last + 1)]


def test_an_unwritable_directory_fails_the_connection_check(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    harness = SinkHarness(JsonlSink, {"directory": str(blocker / "out")})
    with pytest.raises(SinkError, match=r"sink 'contract' .*failed in open: cannot create"):
        harness.start()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^sinks\.contract\.max_age: .*greater than 0"):
        SinkHarness(JsonlSink, {"directory": str(tmp_path), "max_age": -1})
