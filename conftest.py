"""Fixtures shared by the core, plugin, consumer and example test suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.moto_server import MotoServer, moto_server


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
