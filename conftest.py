"""Fixtures shared by the core, plugin, consumer and example test suites."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from spark_sinks import logs
from tests.support.mosquitto import Certs, Mosquitto, make_certs, mosquitto_broker
from tests.support.moto_server import MotoServer, moto_server

SLOW_LIST = Path(__file__).with_name("tests") / "slow_tests.txt"

# Hypothesis: `make test` (and so CI) loads Hypothesis' own "ci" profile: every run
# replays the same generated cases (derandomize), so whether a commit lands depends on
# the code, not on the seed. Exploring with fresh seeds is `make fuzz`
# (HYPOTHESIS_PROFILE=explore), to run while developing; what it finds becomes an
# explicit @example.
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` the test functions listed in ``tests/slow_tests.txt`` (measured; see
    its header), so that ``make test-fast`` stays under a minute without editing every
    suite's files."""
    listed = {
        line.strip()
        for line in SLOW_LIST.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for item in items:
        if item.nodeid.split("[")[0] in listed:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _secret_registry_restored() -> Iterator[None]:
    """Every config a test loads in-process registers its secrets for redaction, for the
    life of the process (as a run needs). Restored after each test: the forms of one
    test's generated secrets (base64 pieces of 4 characters among them) would otherwise
    blank out words in a later test's output (seen in CI as two unrelated failures)."""
    secrets, known = set(logs._secrets), logs._known
    yield
    with logs._lock:
        logs._secrets.clear()
        logs._secrets.update(secrets)
        logs._known = known


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto server process for the session; reset state with ``moto.reset()``."""
    with moto_server() as server:
        yield server


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for code (and subprocesses) that should reach moto through boto3's
    standard variables, with fake credentials."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto.url,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="session")
def mqtt_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A test CA with a server and a client certificate (see tests/support/mosquitto.py)."""
    return make_certs(tmp_path_factory.mktemp("mqtt-pki"))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory, mqtt_certs: Certs) -> Iterator[Mosquitto]:
    """One real Mosquitto broker for the session (plain, password and TLS listeners).
    Tests sharing it use their own client ids and topics."""
    with mosquitto_broker(tmp_path_factory.mktemp("mosquitto"), mqtt_certs) as broker:
        yield broker


@pytest.fixture
def mosquitto_own(tmp_path: Path, mqtt_certs: Certs) -> Iterator[Mosquitto]:
    """A broker of this test's own, free to be stopped, killed and restarted."""
    with mosquitto_broker(tmp_path / "mosquitto", mqtt_certs) as broker:
        yield broker
