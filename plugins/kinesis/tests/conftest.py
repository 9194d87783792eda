"""Fixtures for the Kinesis sink tests: a stream on the shared moto server, a fault proxy."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kinesis_helpers import new_stream

from tests.support.faultproxy import FaultProxy
from tests.support.moto_server import MotoServer


@pytest.fixture
def kinesis(moto: MotoServer) -> Any:
    return moto.client("kinesis")


@pytest.fixture
def make_stream(kinesis: Any) -> Iterator[Callable[..., str]]:
    """Create streams with unique names (4 shards by default); deleted after the test."""
    made: list[str] = []

    def make(shards: int = 4) -> str:
        name = new_stream(kinesis, shards)
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(Exception):
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto.url, seed=7) as p:
        yield p
