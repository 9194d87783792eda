"""``spark-sinks check`` probes the source's broker against a real Mosquitto: it connects,
authenticates and subscribes, and each problem is one line naming it, with exit 1."""

from __future__ import annotations

import base64
import signal
from pathlib import Path
from typing import Any

import pytest
from mqtt_source_helpers import (
    Run,
    no_run_left_behind,  # noqa: F401 - autouse
    record,
    unique,
    write_config,
)

from tests.helpers import run_cli
from tests.support.mosquitto import FORBIDDEN, PASSWORD, USER, Client, Mosquitto, free_port


def check(tmp_path: Path, broker: Mosquitto, topics: list[str], **src: Any) -> tuple[int, str]:
    """Exit code and the one ``source mqtt:`` line of ``spark-sinks check``."""
    cfg = write_config(tmp_path / "c.yaml", broker, topics, **src)
    r = run_cli("check", "-c", str(cfg), env={"MQTT_PASSWORD": src.pop("_pw", PASSWORD)})
    out = r.stdout.decode() + r.stderr.decode()
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("source mqtt:")]
    assert len(lines) == 1, out
    return r.returncode, lines[0]


def tls(broker: Mosquitto, ca: Path | None = None, client_cert: bool = True) -> dict[str, str]:
    c = broker.certs
    block = {"ca_file": str(ca or c.ca)}
    if client_cert:
        block.update(cert_file=str(c.client_cert), key_file=str(c.client_key))
    return block


def test_a_good_source_passes_without_disturbing_a_running_session(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    prefix = unique("chk")
    cfg = write_config(tmp_path / "run.yaml", mosquitto, [f"{prefix}/#"])
    run = Run(cfg)
    run.wait_subscribed()
    # the same source block (same client_id): the check must not take the session over
    r = run_cli("check", "-c", str(cfg))
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    [line] = [ln for ln in out.splitlines() if ln.startswith("source mqtt:")]
    assert line.startswith(f"source mqtt: ok (connected to {mosquitto.host}:{mosquitto.port} as")
    assert "-check'; subscribed to 1 topic filter at QoS 1)" in line
    pub = Client(mosquitto).connect()
    pub.publish(f"{prefix}/a", record(4))
    pub.close()
    run.wait(lambda: run.seqs() == [4], what="the record published after the check")
    assert run.stop(signal.SIGTERM) == 0, run.err
    assert "connection to" not in run.err and "lost" not in run.err, run.err


def test_an_unreachable_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()  # nothing listens there
    rc, line = check(tmp_path, mosquitto, ["a/#"], port=port)
    assert rc == 1
    assert line == (
        f"source mqtt: FAILED: cannot connect to MQTT broker 127.0.0.1:{port}: "
        "connection refused (is the broker running on that port?)"
    )


def test_an_unknown_host(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rc, line = check(tmp_path, mosquitto, ["a/#"], host="no-such-broker.invalid")
    assert rc == 1
    assert "cannot connect to MQTT broker no-such-broker.invalid:" in line
    assert "unknown host 'no-such-broker.invalid'" in line


def test_a_broker_certificate_the_ca_file_does_not_vouch_for(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    other = mosquitto.certs.other_ca
    rc, line = check(
        tmp_path, mosquitto, ["a/#"], port=mosquitto.tls_port, tls=tls(mosquitto, ca=other)
    )
    assert rc == 1
    assert f"TLS: the broker's certificate is not trusted by tls.ca_file '{other}'" in line
    assert "unable to get local issuer certificate" in line or "self" in line, line


def test_tls_without_the_client_certificate_the_broker_requires(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rc, line = check(
        tmp_path, mosquitto, ["a/#"], port=mosquitto.tls_port, tls=tls(mosquitto, client_cert=False)
    )
    assert rc == 1
    assert "does it require a client certificate (tls.cert_file, tls.key_file)?" in line, line


WRONG = "Wr0ng-Check-Passw0rd"


def test_bad_credentials_name_the_connack_code_and_never_the_password(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        mosquitto,
        ["a/#"],
        port=mosquitto.auth_port,
        username=USER,
        password="${MQTT_PASSWORD}",
    )
    r = run_cli("--log-level", "DEBUG", "check", "-c", str(cfg), env={"MQTT_PASSWORD": WRONG})
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    [line] = [ln for ln in r.stdout.decode().splitlines() if ln.startswith("source mqtt:")]
    # Mosquitto answers a wrong password with 0x87 under MQTT 5 (0x86 elsewhere)
    head = (
        f"source mqtt: FAILED: MQTT broker 127.0.0.1:{mosquitto.auth_port} refused the connection: "
    )
    assert line in {
        f"{head}{why} (check username, password and client certificate)"
        for why in ("Not authorized (CONNACK 0x87)", "Bad user name or password (CONNACK 0x86)")
    }, line
    for form in (WRONG.encode(), base64.b64encode(WRONG.encode()), WRONG.encode().hex().encode()):
        assert form not in out
    # and the right password passes
    rc, ok = check(
        tmp_path,
        mosquitto,
        ["a/#"],
        port=mosquitto.auth_port,
        username=USER,
        password="${MQTT_PASSWORD}",
    )
    assert rc == 0 and ok.startswith("source mqtt: ok"), ok


def test_a_refused_subscription_names_its_topic_filter(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    if mosquitto.acl_port is None:
        pytest.skip("this Mosquitto has no dynamic security plugin (Debian's package has it)")
    rc, line = check(tmp_path, mosquitto, ["allowed/#", FORBIDDEN], port=mosquitto.acl_port)
    assert rc == 1
    assert line == (
        f"source mqtt: FAILED: MQTT broker 127.0.0.1:{mosquitto.acl_port} refused the "
        f"subscription to '{FORBIDDEN}': Not authorized (SUBACK 0x87)"
    )
    rc, ok = check(tmp_path, mosquitto, ["allowed/#"], port=mosquitto.acl_port)
    assert rc == 0, ok
