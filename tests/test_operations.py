"""Operations: the metrics endpoint, the status file and `spark-sinks status`, on a real run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

import yaml

from tests.helpers import CLI, MACHINES, metrics_port, run_cli


def start(tmp_path, **operations):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "host": "gw",
                "machines": MACHINES,
                "source": {"type": "simulator", "interval": 0.05, "seed": 3},
                "sinks": {"out": {"type": "stdout"}},
                "operations": operations,
            }
        )
    )
    proc = subprocess.Popen(
        [*CLI, "--log-format", "json", "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return cfg, proc


def poll(fn, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
            if result:
                return result
        except OSError:
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_metrics_endpoint_counts_deliveries(tmp_path):
    _, proc = start(tmp_path, metrics_port=0, stats_interval=0)
    seen: list[bytes] = []
    try:
        port = metrics_port(proc.stderr, seen)

        def scrape():
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            lines = dict(
                line.rsplit(" ", 1) for line in text.decode().splitlines() if line[:1] != "#"
            )
            delivered = float(lines.get('spark_sinks_delivered_total{sink="out"}', 0))
            return lines if delivered > 10 else None

        lines = poll(scrape)
        assert float(lines['spark_sinks_accepted_total{sink="out"}']) >= 10
        assert float(lines['spark_sinks_dropped_total{sink="out"}']) == 0
        assert float(lines["spark_sinks_input_items_total"]) > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    # --log-format json: every stderr line is one JSON object
    for line in b"".join([*seen, err]).decode().splitlines():
        assert json.loads(line)["level"] in {"INFO", "WARNING"}


def test_status_reports_flowing_then_exited(tmp_path):
    status = tmp_path / "status.json"
    cfg, proc = start(tmp_path, status_file=str(status), stats_interval=0.2)
    try:
        poll(
            # the first status is written before the sinks start: no sink in it yet
            lambda: (
                status.exists()
                and json.loads(status.read_text())["sinks"].get("out", {}).get("delivered")
            )
        )
        result = run_cli("status", "-c", str(cfg))
        assert result.returncode == 0, result.stdout
        out = result.stdout.decode()
        assert out.startswith("OK: pid ")
        assert "sink out: flowing; last delivery" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    result = run_cli("status", "-c", str(cfg))
    assert result.returncode == 1
    out = result.stdout.decode()
    assert out.startswith("EXITED: pid ")
    assert "sink out: all delivered;" in out
    assert "flowing" not in out and "PROBLEM" not in out


def test_status_without_a_status_file_says_how_to_enable_it(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"machines": MACHINES, "sinks": {"o": {"type": "stdout"}}}))
    result = run_cli("status", "-c", str(cfg))
    assert result.returncode == 1  # the README: status exits 0 or 1
    err = result.stderr.decode()
    assert "operations.status_file is not set" in err and len(err.splitlines()) == 1
