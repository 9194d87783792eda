"""Fixtures for the MQTT sink tests (the brokers themselves come from the root conftest)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.mosquitto import Client, Mosquitto


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
