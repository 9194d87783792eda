"""TLS with client certificates, passwords from the environment, and what an operator sees
when either is wrong: one line, exit 1, and never the password."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import orjson
import pytest
from mqtt_source_helpers import (
    Run,
    no_run_left_behind,  # noqa: F401 - autouse
    record,
    unique,
    write_config,
)

from tests.helpers import run_cli
from tests.support.mosquitto import PASSWORD, USER, Client, Mosquitto


def tls_block(broker: Mosquitto, ca: Path | None = None) -> dict[str, str]:
    c = broker.certs
    return {
        "ca_file": str(ca or c.ca),
        "cert_file": str(c.client_cert),
        "key_file": str(c.client_key),
    }


def test_tls_with_a_client_certificate(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = unique("tls")
    cfg = write_config(
        tmp_path / "c.yaml",
        mosquitto,
        [f"{prefix}/#"],
        port=mosquitto.tls_port,
        tls=tls_block(mosquitto),
    )
    run = Run(cfg)
    run.wait_subscribed()
    pub = Client(mosquitto, tls=True).connect()
    pub.publish(f"{prefix}/a", record(5))
    pub.close()
    run.wait(lambda: run.seqs() == [5], what="the record")
    assert run.stop(signal.SIGTERM) == 0, run.err


def test_an_untrusted_broker_certificate_is_one_line(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        mosquitto,
        ["x/#"],
        port=mosquitto.tls_port,
        tls=tls_block(mosquitto, ca=mosquitto.certs.other_ca),
    )
    r = run_cli("run", "-c", str(cfg), timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    [line] = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert "TLS certificate not trusted" in line and "Traceback" not in err


def test_password_from_the_environment(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = unique("auth")
    cfg = write_config(
        tmp_path / "c.yaml",
        mosquitto,
        [f"{prefix}/#"],
        port=mosquitto.auth_port,
        username=USER,
        password="${MQTT_PASSWORD}",
    )
    run = Run(cfg, env={"MQTT_PASSWORD": PASSWORD})
    run.wait_subscribed()
    pub = Client(mosquitto, port=mosquitto.auth_port, username=USER, password=PASSWORD).connect()
    pub.publish(f"{prefix}/a", record(9))
    pub.close()
    run.wait(lambda: run.seqs() == [9], what="the record")
    assert run.stop(signal.SIGTERM) == 0, run.err


WRONG = "Wr0ng-Passw0rd-xyz"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_wrong_password_is_one_line_and_never_printed(
    tmp_path: Path, mosquitto: Mosquitto, log_format: str
) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        mosquitto,
        ["x/#"],
        port=mosquitto.auth_port,
        username=USER,
        password="${MQTT_PASSWORD}",
    )
    r = run_cli(
        "--log-level",
        "DEBUG",
        "--log-format",
        log_format,
        "run",
        "-c",
        str(cfg),
        env={"MQTT_PASSWORD": WRONG},
        timeout=30,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    errors = [ln for ln in r.stderr.decode().splitlines() if "refused" in ln]
    assert len(errors) == 1, r.stderr.decode()
    assert "Bad user name or password" in errors[0] or "Not authorized" in errors[0]
    assert b"Traceback" not in out
    for encoded in (WRONG, base64.b64encode(WRONG.encode()).decode(), WRONG.encode().hex()):
        assert encoded.encode() not in out
    assert orjson.dumps(WRONG)[1:-1] not in out
