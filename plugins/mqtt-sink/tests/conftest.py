"""Fixtures for the MQTT sink tests (the brokers themselves come from the root conftest)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.mosquitto import Client, Mosquitto, Received


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Callable[..., Client]]:
    """Connect test subscribers to the shared broker; each is closed after the test."""
    made: list[Client] = []

    def make(topic: str, broker: Mosquitto | None = None, **kwargs: object) -> Client:
        client = Client(broker or mosquitto, **kwargs).connect()  # type: ignore[arg-type]
        client.subscribe(topic)
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()


def settled(client: Client, quiet: float = 0.3, limit: float = 10.0) -> list[Received]:
    """What ``client`` received once nothing more has arrived for ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    seen = -1
    while time.monotonic() < deadline:
        got = client.messages
        if len(got) == seen:
            return got
        seen = len(got)
        time.sleep(quiet)
    return client.messages
