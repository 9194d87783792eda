"""Settings of the ``mqtt`` source: each problem is one line naming its key, exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mqtt_source_helpers import MACHINES

from tests.helpers import run_cli
from tests.support.mosquitto import Mosquitto


def check(tmp_path: Path, **source: Any) -> tuple[int, str]:
    cfg = {
        "machines": MACHINES,
        "source": {"type": "mqtt", "host": "127.0.0.1", "topics": ["a/#"], **source},
        "sinks": {"out": {"type": "stdout"}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run_cli("check", "-c", str(path), env={"MQTT_PW": "Secret-Value-123"})
    return r.returncode, r.stderr.decode() + r.stdout.decode()


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ({"topics": []}, "source.topics: List should have at least 1 item"),
        ({"topics": ["a/#/b"]}, "source.topics: \"a/#/b\": '#' must be the last level"),
        ({"topics": ["a/b+"]}, "'+' and '#' must fill a whole topic level"),
        ({"topics": ["$share/g"]}, "a shared subscription is $share/<group>/<filter>"),
        ({"qos": 2}, "source.qos: Input should be 0 or 1"),
        ({"format": "xml"}, 'source.format: Input should be "json"'),
        ({"port": 0}, "source.port: Input should be greater than or equal to 1"),
        ({"max_pending": 70000}, "source.max_pending: Input should be less than or equal"),
        ({"tls": {"ca_file": "/nonexistent/ca.crt"}}, "source.tls.ca_file: file"),
        ({"tls": {"cert_file": __file__}}, "cert_file and key_file go together"),
        ({"password": "${MQTT_PW}"}, "password is set but username is not"),
        ({"hostname": "x"}, "source.hostname: unknown key"),
    ],
)
def test_bad_settings_are_one_line(tmp_path: Path, source: dict[str, Any], expect: str) -> None:
    rc, out = check(tmp_path, **source)
    assert rc == 2, out
    [line] = out.strip().splitlines()
    assert expect in line
    assert "Secret-Value-123" not in out


def test_good_settings_pass_check(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rc, out = check(
        tmp_path,
        port=mosquitto.port,
        username="u",
        password="${MQTT_PW}",
        topics=["a/+/b", "$share/g/c/#"],
    )
    assert rc == 0, out
    assert "source mqtt: ok (connected to" in out
    assert "Secret-Value-123" not in out
