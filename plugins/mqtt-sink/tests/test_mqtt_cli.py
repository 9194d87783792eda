"""``spark-sinks`` as a subprocess with the ``mqtt`` sink (JSON format) and a real Mosquitto:
what arrives, broker restarts, ``kill -9``, TLS, and secrets."""

from __future__ import annotations

import base64
import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from mqtt_helpers import (
    mqtt_block,
    ndjson,
    prefix_of,
    records,
    seq_numbers,
    settled,
    spawn,
    write_config,
)

from tests.helpers import CLI
from tests.support.mosquitto import PASSWORD, USER, Client, Mosquitto


def run(config: Path, data: bytes = b"", timeout: float = 60, *args: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    return subprocess.run(
        [*CLI, *(args or ("run",)), "-c", str(config)],
        input=data,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_every_envelope_arrives_byte_identical_and_metadata_is_retained(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    block = mqtt_block(mosquitto)
    sub = subscriber(prefix_of(block) + "/#")
    cfg = write_config(tmp_path / "c.yaml", {"m": block, "out": {"type": "stdout"}})
    result = run(cfg, ndjson(records(500)))
    assert result.returncode == 0, result.stderr.decode()
    printed = result.stdout.splitlines()  # the stdout sink: the envelopes as assembled
    assert len(printed) == 502
    got = settled(sub, at_least=502)
    assert [m.payload for m in got] == printed  # same bytes, same order
    assert [m.topic for m in got[:2]] == [
        f"{prefix_of(block)}/gw-test/press-1/metadata",
        f"{prefix_of(block)}/gw-test/press-2/metadata",
    ]
    assert got[2].topic == f"{prefix_of(block)}/gw-test/press-1/record"
    assert all(m.qos == 1 for m in got)
    # a subscriber that comes later still gets each machine's metadata: retained
    late = subscriber(prefix_of(block) + "/+/+/metadata")
    retained = late.wait_for(2, 5)
    assert sorted((m.payload, m.retain) for m in retained) == sorted((p, True) for p in printed[:2])


def _feed(proc: subprocess.Popen[bytes], items: list[bytes], pause: float) -> None:
    assert proc.stdin is not None
    for chunk in items:
        proc.stdin.write(chunk)
        proc.stdin.flush()
        time.sleep(pause)


@pytest.mark.slow
def test_broker_restart_mid_run_loses_nothing(tmp_path: Path, mosquitto_own: Mosquitto) -> None:
    """QoS 1 with a spool: the broker stops and comes back while records flow."""
    block = mqtt_block(mosquitto_own, spool={"path": str(tmp_path / "spool")}, max_in_flight=200)
    sub = Client(mosquitto_own, "restart-sub", clean=False).connect()
    sub.subscribe(prefix_of(block) + "/#")
    proc = spawn(write_config(tmp_path / "c.yaml", {"m": block}))
    try:
        chunks = [ndjson(records(100, start=i * 100)) for i in range(30)]
        _feed(proc, chunks[:10], 0.05)
        mosquitto_own.restart(down_for=1.0)
        _feed(proc, chunks[10:], 0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    counts = collections.Counter(seq_numbers([m.payload for m in settled(sub, at_least=3002)]))
    sub.close()
    missing = sorted(set(range(3000)) - set(counts))
    duplicates = sum(n - 1 for n in counts.values())
    assert not missing, f"lost {len(missing)} records, e.g. {missing[:10]}"
    print(f"broker restart: 3000 records, {duplicates} duplicates")  # allowed at QoS 1
    assert "3002 accepted, 3002 delivered" in err.decode()


def wait_for_spool(path: Path, count: int, timeout: float = 30) -> int:
    """Rows in a running process's spool (SQLite WAL lets a reader in), once ``count``."""
    deadline = time.monotonic() + timeout
    rows = 0
    while time.monotonic() < deadline:
        if path.exists():
            with contextlib.suppress(sqlite3.Error), sqlite3.connect(path) as db:
                rows = db.execute("SELECT count(*) FROM spool").fetchone()[0]
            if rows >= count:
                return rows
        time.sleep(0.1)
    return rows


@pytest.mark.slow
def test_kill_9_with_a_spool_loses_nothing(tmp_path: Path, mosquitto_own: Mosquitto) -> None:
    """The broker is down, records go to the spool, spark-sinks is killed; the next run
    delivers everything the first one accepted."""
    block = mqtt_block(mosquitto_own, spool={"path": str(tmp_path / "spool")})
    cfg = write_config(tmp_path / "c.yaml", {"m": block})
    mosquitto_own.stop()
    proc = spawn(cfg)
    try:
        _feed(proc, [ndjson(records(400))], 0)
        spooled = wait_for_spool(tmp_path / "spool" / "m.spool.sqlite3", 402)
        assert spooled == 402, f"only {spooled} envelopes reached the spool"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    mosquitto_own.start()
    sub = Client(mosquitto_own).connect()
    sub.subscribe(prefix_of(block) + "/#")
    result = run(cfg)  # empty input: only the spool's content
    assert result.returncode == 0, result.stderr.decode()
    assert "replaying" in result.stderr.decode()
    got = collections.Counter(seq_numbers([m.payload for m in settled(sub, at_least=402)]))
    sub.close()
    assert set(got) == set(range(400)), f"missing {sorted(set(range(400)) - set(got))[:10]}"


def test_tls_with_client_certificates(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    c = mosquitto.certs
    tls = {"ca_file": str(c.ca), "cert_file": str(c.client_cert), "key_file": str(c.client_key)}
    block = mqtt_block(mosquitto, port=mosquitto.tls_port, tls=tls)
    sub = subscriber(prefix_of(block) + "/#")
    result = run(write_config(tmp_path / "c.yaml", {"m": block}), ndjson(records(20)))
    assert result.returncode == 0, result.stderr.decode()
    got = settled(sub, at_least=22)
    # QoS 1 is at least once: a connection lost on a busy machine may bring a copy again
    # (seen in make test: 24 messages), never a gap
    assert len({(m.topic, m.payload) for m in got}) == 22, [m.topic for m in got]


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"ca_file": "other_ca"}, "certificate is not trusted"),
        ({"ca_file": "ca"}, "does it require a client certificate"),
    ],
)
def test_tls_failures_are_one_readable_line(
    tmp_path: Path, mosquitto: Mosquitto, tls: dict[str, str], expected: str
) -> None:
    c = mosquitto.certs
    files = {key: str(getattr(c, name)) for key, name in tls.items()}
    if tls["ca_file"] == "other_ca":
        files.update(cert_file=str(c.client_cert), key_file=str(c.client_key))
    block = mqtt_block(mosquitto, port=mosquitto.tls_port, tls=files)
    result = run(write_config(tmp_path / "c.yaml", {"m": block}), b"", 60, "check")
    out = result.stdout.decode()
    assert result.returncode == 1
    where = f"127.0.0.1:{mosquitto.tls_port}"
    head = "sink m: FAILED: sink 'm' (mqtt from spark-sinks-mqtt-sink) failed in check: "
    assert f"{head}cannot connect to MQTT broker {where}: " in out, out
    assert expected in out, out
    assert "Traceback" not in out + result.stderr.decode()


def _encodings(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        base64.b64encode(raw).decode(),
        base64.b64encode(f"{USER}:{secret}".encode()).decode(),
        raw.hex(),
        urllib.parse.quote(secret),
    ]


@pytest.mark.slow
def test_a_wrong_password_is_named_never_printed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    wrong = "Wr0ng-Pw-zq81"
    block = mqtt_block(
        mosquitto, port=mosquitto.auth_port, username=USER, password="${MQTT_PASSWORD}"
    )
    cfg = write_config(tmp_path / "c.yaml", {"m": block})
    result = run(cfg, b"", 60, "check", env={"MQTT_PASSWORD": wrong})
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "the broker refused the connection: Not authorized" in out, out
    assert "Traceback" not in out + result.stderr.decode()
    # the right password works, and neither password shows in any output, in any encoding
    ok = run(cfg, ndjson(records(5)), 60, env={"MQTT_PASSWORD": PASSWORD})
    assert ok.returncode == 0, ok.stderr.decode()
    for output in (result.stdout, result.stderr, ok.stdout, ok.stderr):
        text = output.decode()
        for form in [*_encodings(wrong), *_encodings(PASSWORD)]:
            assert form not in text
