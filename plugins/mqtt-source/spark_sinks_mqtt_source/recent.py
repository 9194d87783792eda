"""A map bounded by how recently its entries were heard from (what the Sparkplug source
remembers per edge node and per device)."""

from __future__ import annotations

import logging
from typing import TypeVar

from .connection import RateLimited

K = TypeVar("K")
V = TypeVar("V")


class Recent(dict[K, V]):
    """At most ``limit`` entries, the least recently ``put`` first. Putting one more
    forgets the oldest: counted in ``forgotten`` (read by other threads) and logged at most
    once a minute, never silently. Owned by the source thread."""

    def __init__(self, limit: int, what: str, logger: logging.Logger) -> None:
        super().__init__()
        self.limit = limit
        self.what = what
        """What an entry is, in the plural (``devices``)."""
        self.forgotten = 0
        self._warn = RateLimited(logger=logger)

    def put(self, key: K, value: V) -> V:
        """Set ``key`` and make it the most recently heard from."""
        if self.pop(key, None) is None and len(self) >= self.limit:
            del self[next(iter(self))]
            self.forgotten += 1
            self._warn.warn(
                "%d %s forgotten so far: more than %d %s were heard from; the one heard from"
                " least recently is asked for a rebirth if it sends again",
                self.forgotten,
                self.what,
                self.limit,
                self.what,
            )
        self[key] = value
        return value
