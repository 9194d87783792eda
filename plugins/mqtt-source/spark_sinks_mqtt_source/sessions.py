"""The edge nodes' Sparkplug sessions as a host application must follow them.

Sparkplug B 3.0 (*Host Application Message Ordering*, *Receive Data*): every NBIRTH, DBIRTH,
NDATA, DDATA and DDEATH of an edge node carries ``seq``, one more than the node's previous
message (255 wraps to 0), starting at its NBIRTH's. A message that arrives ahead of the
expected number opens a *Reorder Timeout*: when the missing numbers have not arrived once
it elapses, the host sends the node a rebirth request (``NCMD`` with ``Node Control/Rebirth``
= true); when they do arrive in time, nothing happens. A message of a node whose NBIRTH
this host has not seen, or data of a device without its DBIRTH, may be answered with a
rebirth request as well. An NDEATH ends the session only when its ``bdSeq`` is the one its
NBIRTH announced (an older will arriving late is ignored).

After asking for a rebirth a node counts as unborn until its next NBIRTH: its messages are
still read, and it is asked again (at most every ``rebirth_interval`` seconds) while they
come.

``place`` gives each message of a node its position in the node's publishing order (``seq``
unwrapped: a number ahead of the newest seen by less than 128 is later, any other is
earlier), so that a message arriving late cannot pass for a newer one. At most
``max_nodes`` edge nodes are followed; beyond it the one heard from least recently is
forgotten (counted in ``forgotten``, logged at most once a minute), and asked for a rebirth
if it sends again.
State is kept by the source thread only.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from paho.mqtt.client import topic_matches_sub
from spark_sinks_sparkplug import codec

from .recent import Recent

log = logging.getLogger(__name__)

MAX_NODES = 10_000
"""Edge nodes followed at most (memory stays bounded whatever topics arrive); beyond it
the one heard from least recently is forgotten, and asked for a rebirth if it sends again."""
_ANY_DEVICE = f"spark-sinks-any-{uuid.uuid4().hex}"
"""A device id no real device has: only a wildcard level matches it."""


class Node(NamedTuple):
    group: str
    edge_node: str

    def __str__(self) -> str:
        return f"{self.group}/{self.edge_node}"


class Order(NamedTuple):
    """Where a message stands in its edge node's publishing order. Positions compare only
    within one ``epoch`` (one session as followed here: an NBIRTH, an NDEATH or a node
    forgotten and heard from again starts another)."""

    epoch: int
    position: int

    def before(self, other: Order) -> bool:
        """Whether this message was published before ``other`` (False when unknowable)."""
        return self.epoch == other.epoch and self.position < other.position


@dataclass
class _Session:
    """One edge node's session as seen here."""

    epoch: int
    born: bool = False
    bd_seq: int | None = None
    expected: int = 0
    """The ``seq`` the next message should carry."""
    missing: set[int] = field(default_factory=set)
    """Numbers skipped by a message that came ahead of them, not arrived yet."""
    gap_since: float | None = None
    """When the oldest of ``missing`` was found missing (the Reorder Timeout's start)."""
    asked_at: float | None = None
    newest_seq: int | None = None
    """The ``seq`` of the latest-published message seen (None: no message yet)."""
    newest: int = 0
    """Its position: ``seq`` unwrapped, counting from the session's first message."""


class Sessions:
    """Follows every edge node's session; says when a rebirth request is due and why."""

    def __init__(
        self,
        filters: list[str],
        reorder_timeout: float,
        rebirth_interval: float,
        clock: Callable[[], float] = time.monotonic,
        max_nodes: int = MAX_NODES,
    ) -> None:
        self.filters = [f for f in filters if not f.startswith("$share/")]
        """A shared subscription delivers only some messages here: no order to check."""
        self.reorder_timeout = reorder_timeout
        self.rebirth_interval = rebirth_interval
        """Seconds between two rebirth requests to one edge node, at least."""
        self.clock = clock
        self.max_nodes = max_nodes
        self._nodes: Recent[Node, _Session] = Recent(max_nodes, "edge nodes", log)
        self._covered: dict[Node, bool] = {}
        """A cache of ``covered`` (recomputed after it is cleared: nothing is lost)."""
        self._epochs = itertools.count()

    def covered(self, node: Node) -> bool:
        """Whether the topic filters bring every message of the node (its births, deaths
        and data, of any device): only then can its sequence be followed."""
        seen = self._covered.get(node)
        if seen is None:
            g, e = node
            topics = [codec.topic(g, kind, e) for kind in ("NBIRTH", "NDEATH", "NDATA")]
            topics += [codec.topic(g, k, e, _ANY_DEVICE) for k in ("DBIRTH", "DDATA", "DDEATH")]
            seen = all(any(topic_matches_sub(f, t) for f in self.filters) for t in topics)
            if len(self._covered) >= self.max_nodes:
                self._covered.clear()
            self._covered[node] = seen
        return seen

    def birth(self, node: Node, seq: int | None, bd_seq: int | None) -> None:
        """An NBIRTH: a new session starts at its ``seq``."""
        s = self._nodes.put(node, self._new(True, bd_seq, _next(seq), asked_at=self._asked(node)))
        s.newest_seq = seq if seq is not None and 0 <= seq <= 255 else None

    def death(self, node: Node, bd_seq: int | None) -> bool:
        """An NDEATH; True when it ends the current session (its ``bdSeq`` matches)."""
        s = self._nodes.get(node)
        if s is not None and s.born and None not in (bd_seq, s.bd_seq) and bd_seq != s.bd_seq:
            return False  # the will of an earlier connection, delivered late
        self._nodes.put(node, self._new(asked_at=self._asked(node)))
        return True

    def message(self, node: Node, seq: int | None, kind: str) -> str | None:
        """A DBIRTH, NDATA, DDATA or DDEATH: why the node is out of step, if it is and
        that is clear at once (no NBIRTH seen); a gap waits for ``due``."""
        s = self._session(node)
        if not s.born:
            return f"{kind} before the edge node's NBIRTH"
        if seq is None or not 0 <= seq <= 255:
            return None  # nothing to follow (the codec decoded it; the spec requires seq)
        if seq == s.expected:
            s.expected = _next(seq)
        elif seq in s.missing:  # came late, within the window so far
            s.missing.discard(seq)
            if not s.missing:
                s.gap_since = None
        elif (seq - s.expected) % 256 < 128:  # ahead: the numbers in between are missing
            s.missing.update(
                n % 256 for n in range(s.expected, s.expected + (seq - s.expected) % 256)
            )
            s.expected = _next(seq)
            if s.gap_since is None:
                s.gap_since = self.clock()
        # else behind and not missing: a copy of a message already seen (QoS 1)
        return None

    def place(self, node: Node, seq: int | None) -> Order | None:
        """The message's position in the node's publishing order (None without a valid
        ``seq``). Independent of ``message``: either may be called first."""
        if seq is None or not 0 <= seq <= 255:
            return None
        s = self._session(node)
        if s.newest_seq is None:
            s.newest_seq, s.newest = seq, 0
            return Order(s.epoch, 0)
        ahead = (seq - s.newest_seq) % 256
        if ahead < 128:
            s.newest_seq, s.newest = seq, s.newest + ahead
            return Order(s.epoch, s.newest)
        return Order(s.epoch, s.newest - (256 - ahead))  # published before the newest

    def due(self) -> list[tuple[Node, str]]:
        """Nodes whose Reorder Timeout elapsed with messages still missing."""
        now = self.clock()
        out = []
        for node, s in self._nodes.items():
            if s.gap_since is not None and now - s.gap_since >= self.reorder_timeout:
                first = min(s.missing, key=lambda n: (n - s.expected) % 256)
                out.append(
                    (
                        node,
                        f"{len(s.missing)} message(s) missing (seq {first} first) after "
                        f"reorder_timeout ({self.reorder_timeout:g}s)",
                    )
                )
                s.missing.clear()
                s.gap_since = None
        return out

    def may_ask(self, node: Node) -> bool:
        """Whether a rebirth request may go to the node now; if so it counts as asked and
        as unborn until its next NBIRTH."""
        s = self._session(node)
        now = self.clock()
        if s.asked_at is not None and now - s.asked_at < self.rebirth_interval:
            return False
        s.asked_at = now
        s.born = False
        s.missing.clear()
        s.gap_since = None
        return True

    def _new(
        self,
        born: bool = False,
        bd_seq: int | None = None,
        expected: int = 0,
        asked_at: float | None = None,
    ) -> _Session:
        return _Session(next(self._epochs), born, bd_seq, expected, asked_at=asked_at)

    @property
    def forgotten(self) -> int:
        """Edge nodes forgotten to keep within ``max_nodes`` (read by other threads)."""
        return self._nodes.forgotten

    def _session(self, node: Node) -> _Session:
        s = self._nodes.get(node)  # put again: the most recently heard from
        return self._nodes.put(node, self._new() if s is None else s)

    def _asked(self, node: Node) -> float | None:
        s = self._nodes.get(node)
        return None if s is None else s.asked_at


def _next(seq: int | None) -> int:
    return 0 if seq is None else (seq + 1) % 256
