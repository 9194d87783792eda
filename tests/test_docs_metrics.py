"""The Prometheus metrics and the per-sink counters the docs name are the ones the code
exports: the README's metrics table lists every metric (with its type and labels), the
docs name no metric that does not exist, and the counters the Operations section lists
are ``SinkStats``'s."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from spark_sinks.metrics import _collector
from spark_sinks.sink import SinkStats

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("plugins/*/README.md"))]


class Metric(NamedTuple):
    type: str
    labels: frozenset[str]


def exported() -> dict[str, Metric]:
    """What a scrape shows: name (as exposed, ``_total`` for a counter) -> type, labels."""
    sink = {**SinkStats().snapshot(), "spool_depth": 0, "buffer_envelopes": 0, "buffer_bytes": 0}
    snap: dict[str, Any] = {
        "sinks": {"cloud": sink},
        "input": {"items": 0, "rejected": 0, "source": {"n": 1}, "source_type": "mqtt"},
        "status_write_errors": 0,
    }
    out = {}
    for family in _collector(lambda: snap).collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = frozenset(k for s in family.samples for k in s.labels)
        out[name] = Metric(family.type, labels)
    return out


EXPORTED = exported()


def operations() -> str:
    return README.read_text().split("\n### Operations\n", 1)[1].split("\n### ", 1)[0]


def documented() -> dict[str, Metric]:
    """The README's metrics table: `spark_sinks_x_total`, `_y_total` | type | labels | ..."""
    out = {}
    for line in operations().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`spark_sinks_"):
            labels = frozenset(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cells[2])))
            for name in re.findall(r"`(\w+)`", cells[0]):
                full = name if name.startswith("spark_sinks_") else "spark_sinks" + name
                out[full] = Metric(cells[1], labels)
    return out


DOCUMENTED = documented()


def test_the_collector_exports_metrics_at_all():
    assert "spark_sinks_delivered_total" in EXPORTED and len(DOCUMENTED) > 5


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_every_exported_metric_is_in_the_table_with_its_type_and_labels(name):
    assert name in DOCUMENTED, f"README.md's metrics table lacks {name}"
    assert DOCUMENTED[name] == EXPORTED[name], name


PACKAGES = {p.name for p in ROOT.glob("*/*/spark_sinks_*") if p.is_dir()} | {
    name  # a package the guide writes and imports
    for md in DOCS
    for name in re.findall(r"(?:import |from |= \")(spark_sinks_\w+)", md.read_text())
}


def looks_like_a_metric(name: str, after: str) -> bool:
    """A metric, not a package (``spark_sinks_kinesis``), a hook or a module path."""
    return not (name in PACKAGES or name.startswith("spark_sinks_register_") or after in "/.(:")


def test_the_docs_name_no_metric_that_does_not_exist():
    named = {
        (str(md.relative_to(ROOT)), m.group(1))
        for md in DOCS
        for m in re.finditer(r"\b(spark_sinks_[a-z_]+)\b(.?)", md.read_text())
        if looks_like_a_metric(m.group(1), m.group(2))
    }
    assert ("README.md", "spark_sinks_pending") in named  # the docs do name metrics
    wrong = sorted(f"{where}: {name}" for where, name in named if name not in EXPORTED)
    assert not wrong, "\n".join(wrong)


def test_every_sink_counter_is_a_metric():
    """The log line, the status file and the metrics show the same counters."""
    for field in SinkStats.FIELDS:
        suffix = "" if field == "pending" else "_total"
        assert f"spark_sinks_{field}{suffix}" in EXPORTED, field


def counters_listed() -> set[str]:
    """The counters of the Operations section's "Counters per sink: ..." sentence."""
    sentence = operations().split("- Counters per sink:", 1)[1].split(". ", 1)[0]
    sentence = re.sub(r"\([^)]*\)", "", sentence).replace(" and ", ", ")
    return {w.strip().replace("-", "_").replace(" ", "_") for w in sentence.split(",")}


def test_the_counters_per_sink_in_the_docs_are_sinkstats_fields():
    depths = {"spool_depth", "memory_buffer_depth", "the_last_error"}
    assert counters_listed() - depths == set(SinkStats.FIELDS)
