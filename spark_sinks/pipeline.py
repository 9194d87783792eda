"""Source -> assembly -> dispatch, with bad input reported and set aside.

Envelopes are handed to the sinks in batches: when the batch is full, or
when the source says it is about to wait (``flush``).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from . import files
from .assembly import Assembler, InputError
from .dispatch import Dispatcher
from .envelope import Envelope
from .show import json_text
from .sources import SkippedLine

log = logging.getLogger(__name__)

BATCH = 500


class Rejects:
    """Bad input: one log line each, an optional JSON-lines dead-letter file, a count.

    Each dead-letter entry holds what was rejected in full: the line (as text, or in
    base64 when it is not UTF-8) or the decoded item, however deep; a line too long to
    keep, its head, length and SHA-256.

    Owner: the pipeline thread (the source feeds it there); the reporter and the metrics
    server only read ``count``, an int."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._fh: BinaryIO | None = None

    def add(
        self, where: str, reason: str, raw: bytes | SkippedLine | None = None, item: Any = None
    ) -> None:
        self.count += 1
        log.error("%s: %s", where, reason)
        if self.path is None:
            return
        entry: dict[str, Any] = {"where": where, "reason": reason}
        if isinstance(raw, SkippedLine):
            entry["head"] = raw.head.decode("utf-8", "replace")
            entry["length"] = raw.length
            entry["sha256"] = raw.sha256
        elif raw is not None:
            try:
                entry["line"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                entry["line_base64"] = base64.b64encode(raw).decode()
        elif item is not None:
            entry["item"] = item
        try:
            data = orjson.dumps(entry, default=repr)
        except TypeError:  # nested deeper than orjson writes
            data = json_text(entry).encode()
        if self._fh is None:
            self._fh = files.append_private(self.path)  # kept open for the run
        self._fh.write(data + b"\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _exact(raw: bytes, obj: Any) -> Any:
    """``raw`` decoded again by the standard library, which keeps integers of any size
    (orjson turns one beyond 64 bits into the nearest float); ``obj`` if it cannot (too
    deep for its recursion). Only for a rejected item: its dead-letter entry keeps what
    was sent."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return obj


class Pipeline:
    """Owner: the pipeline thread (the source's ``run`` feeds it, a reload runs between
    batches). The reporter and the metrics server only read ``items`` and ``envelopes``,
    ints that only this thread writes."""

    def __init__(self, assembler: Assembler, dispatcher: Dispatcher, rejects: Rejects) -> None:
        self.assembler = assembler
        self.dispatcher = dispatcher
        self.rejects = rejects
        self.items = 0
        self.envelopes = 0
        self._pending: list[Envelope] = []
        self._flushed = 0
        """``items`` when envelopes were last dispatched (see ``settled``)."""
        self.between_batches: Callable[[], None] | None = None
        """Called after each dispatch, at a point where no item is half-processed
        (the runtime applies a requested reload there)."""

    # Feed protocol -----------------------------------------------------------------------

    def item(self, obj: Any, where: str, line: int | None = None, raw: bytes | None = None) -> None:
        self.items += 1
        self.assembler.position = self.items
        try:
            out = self.assembler.feed(obj)
        except InputError as exc:
            name = where if line is None else f"{where} line {line}"
            self.rejects.add(name, str(exc), item=obj if raw is None else _exact(raw, obj))
            return
        if out:
            self._add(out)

    def point(self, machine: str, variable: str, value: Any, time: Any = None) -> None:
        self.items += 1
        self.assembler.position = self.items
        try:
            out = self.assembler.add_point(machine, variable, value, time)
        except InputError as exc:
            self.rejects.add(f"{machine}.{variable}", str(exc))
            return
        if out:
            self._add(out)

    def reject(self, where: str, reason: str, raw: bytes | SkippedLine | None = None) -> None:
        self.items += 1
        self.assembler.position = self.items
        self.rejects.add(where, reason, raw=raw)

    def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self.dispatcher.dispatch(batch)
            self._flushed = self.items
        if self.between_batches is not None:
            self.between_batches()

    def settled(self) -> int:
        if self._pending:  # not dispatched yet: nothing fed since the last flush counts
            return min(self.assembler.settled(), self._flushed)
        return self.assembler.settled()

    # ---------------------------------------------------------------------------------------

    def emit(self, envelopes: list[Envelope]) -> None:
        """Send envelopes made outside the source (metadata) right away, in order."""
        self._add(envelopes)
        self.flush()

    def _add(self, envelopes: list[Envelope]) -> None:
        self.envelopes += len(envelopes)
        pending = self._pending
        pending.extend(envelopes)
        if len(pending) >= BATCH:
            self.flush()
