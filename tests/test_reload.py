"""Live reconfiguration with real SIGHUP signals sent to a running `spark-sinks run`."""

from __future__ import annotations

import copy
import json
import queue
import signal
import subprocess
import threading
import time

import yaml

from tests.helpers import CLI, MACHINES


class Running:
    """A `spark-sinks run` subprocess fed through stdin, its output read line by line."""

    def __init__(self, cfg_path, env=None):
        self.proc = subprocess.Popen(
            [*CLI, "run", "-c", str(cfg_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.out: queue.Queue[dict] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.stderr_text = ""
        threading.Thread(
            target=self._pump, args=(self.proc.stdout, self.out, True), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(self.proc.stderr, self.err, False), daemon=True
        ).start()

    def _pump(self, stream, q, is_json):
        for line in stream:
            if is_json:
                q.put(json.loads(line))
            else:
                self.stderr_text += line.decode()
                q.put(line.decode())

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def take_until(self, pred, timeout=15):
        got = []
        deadline = time.monotonic() + timeout
        while True:
            item = self.out.get(timeout=max(0.01, deadline - time.monotonic()))
            got.append(item)
            if pred(item):
                return got

    def wait_log(self, text, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in self.err.get(timeout=0.2):
                    return
            except queue.Empty:
                pass
        raise AssertionError(f"{text!r} not logged; stderr so far:\n{self.stderr_text}")

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(20)


def config(sinks, machines=None):
    return {
        "host": "gw",
        "machines": machines or MACHINES,
        "source": {"type": "ndjson", "path": "-"},
        "sinks": sinks,
        "operations": {"stats_interval": 0},
    }


def record(count, machine="press-1", **extra):
    return {"machine": machine, "values": {"temperature": 1.0, "count": count, **extra}}


def is_record(count):
    return lambda e: e["type"] == "record" and e["data"]["attributes"]["count"]["value"] == count


def copies(envelopes, count):
    return sum(1 for e in envelopes if is_record(count)(e))


def test_sighup_applies_sink_and_machine_changes_and_rejects_an_invalid_file(tmp_path):
    path = tmp_path / "c.yaml"
    two = {"a": {"type": "stdout"}, "b": {"type": "stdout"}}
    path.write_text(yaml.safe_dump(config(two)))
    run = Running(path)
    try:
        # both stdout sinks print every envelope: two copies
        run.send(record(1))
        got = run.take_until(is_record(1))
        got += run.take_until(is_record(1))
        assert copies(got, 1) == 2

        # 1. a sink disabled: one copy from now on
        path.write_text(yaml.safe_dump(config({**two, "b": {"type": "stdout", "enabled": False}})))
        run.proc.send_signal(signal.SIGHUP)
        run.wait_log("reload applied")
        run.send(record(2))
        run.send(record(3))
        got = run.take_until(is_record(3))
        assert copies(got, 2) == 1

        # 2. an invalid file: rejected with a clear line, the running config stays
        path.write_text("sinks: [this is not valid\n")
        run.proc.send_signal(signal.SIGHUP)
        run.wait_log("reload rejected, the running configuration stays")
        run.send(record(4))
        got = run.take_until(is_record(4))
        assert copies(got, 4) == 1

        # 3. a variable added to press-1: new metadata, and assembly needs the new variable
        machines = copy.deepcopy(MACHINES)
        machines["press-1"]["variables"]["rpm"] = {"name": "rpm", "format": "uint16"}
        path.write_text(yaml.safe_dump(config({"a": {"type": "stdout"}}, machines)))
        run.proc.send_signal(signal.SIGHUP)
        meta = run.take_until(lambda e: e["type"] == "metadata")
        assert meta[-1]["data"]["info"]["name"] == "press-1"
        assert "rpm" in meta[-1]["data"]["variables"]
        run.wait_log("reload applied")
        run.send(record(5))  # lacks rpm now: rejected
        run.send(record(6, rpm=1200))
        got = run.take_until(is_record(6))
        assert copies(got, 5) == 0
        assert got[-1]["data"]["attributes"]["rpm"]["value"] == 1200
        assert "lacks variables: rpm" in run.stderr_text

        # 4. a sink added: it starts with metadata for every machine, then gets records
        path.write_text(
            yaml.safe_dump(config({"a": {"type": "stdout"}, "c": {"type": "stdout"}}, machines))
        )
        run.proc.send_signal(signal.SIGHUP)
        run.wait_log("reload applied")
        run.send(record(7, rpm=1))
        got = run.take_until(is_record(7))
        got += run.take_until(is_record(7))
        assert copies(got, 7) == 2
        names = [e["data"]["info"]["name"] for e in got if e["type"] == "metadata"]
        assert names == ["press-1", "press-2", "press-avg"]
    finally:
        run.stop()
    assert run.proc.returncode == 3  # everything delivered; record 5 was rejected
    assert "Traceback" not in run.stderr_text
