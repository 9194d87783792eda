"""One PutRecords request and what became of each of its entries: delivered, to retry
(and how), or never acceptable (dead letter). Also the connection test's single put.

Shared state: a ``Sender`` is used by every lane thread at once; it holds only the
client (thread-safe in botocore), settings and callbacks. It touches no queue: the
sink settles the ``Outcome`` under ``Buffer.lock``. The one exception is ``lane.split``,
which only the lane's own thread sets.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from spark_sinks import SinkError

from .errors import (
    INVALID_CODES,
    RETRYABLE_ENTRY_CODES,
    THROTTLE_CODES,
    THROTTLED,
    Explainer,
    Notes,
    closed_shard,
    error_code,
    transient,
)
from .queues import Lane, Outcome, Refused, Rejected, Unit

_TEST_ATTEMPTS = 5


class _Closed(NamedTuple):
    """An entry refused for a closed shard: the shard and the error code."""

    shard: str
    code: str


class Sender:
    """Sends the units of one request and sorts the answer."""

    def __init__(
        self,
        client: Any,
        stream: dict[str, str],
        explain: Explainer,
        note: Notes,
        on_results: Callable[[list[dict[str, Any]]], None],
        on_stale: Callable[[], None],
    ) -> None:
        self.client = client
        self.stream = stream
        """``StreamName`` or ``StreamARN``: how every call names the stream."""
        self.explain = explain
        self.note = note
        self.on_results = on_results
        """Told the answer's entries of every well-formed answer (to notice resharding)."""
        self.on_stale = on_stale
        """Called when a write was refused for a closed shard (to list the shards now)."""

    def send(self, lane: Lane, batch: list[Unit]) -> Outcome[Unit]:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.put_records(
                **self.stream,
                Records=[{"Data": u.data, "PartitionKey": u.route.key} for u in batch],
            )
        except ClientError as exc:
            return self._refused(lane, batch, exc)
        except Exception as exc:  # connection errors, timeouts, resets
            self.note(type(exc).__name__, self.explain(exc, "PutRecords"))
            return Outcome(requeue=batch)
        results = resp.get("Records") or []
        if len(results) != len(batch):  # a malformed answer: assume nothing was stored
            self.note("malformed", "PutRecords answered with a wrong number of entries")
            return Outcome(requeue=batch)
        self.on_results(results)
        if not resp.get("FailedRecordCount"):
            return Outcome(delivered=batch)
        return self._sort_answers(batch, results)

    def _refused(self, lane: Lane, batch: list[Unit], exc: Any) -> Outcome[Unit]:
        """The outcome of a request refused as a whole."""
        err = error_code(exc)
        code = err.code
        shard = closed_shard(code, err.message)
        if shard is not None:
            self._stale(shard, code, len(batch), len(batch))
            return Outcome(requeue=batch)  # retried with the usual backoff
        if code in INVALID_CODES and not (err.status and err.status >= 500):
            if len(batch) == 1:
                reason = f"rejected by Kinesis: {code}: {err.message}".rstrip(": ")
                return Outcome(dead=[Rejected(batch[0], reason)])
            # Some record makes the whole request invalid: halve until it stands alone.
            lane.split = max(1, len(batch) // 2)
            self.note("split", f"PutRecords rejected a batch ({code}); isolating the record")
            return Outcome(requeue=batch, split=True)
        slow = not transient(err)
        self.note(code or "error", self.explain(exc, "PutRecords"), slow=slow)
        return Outcome(requeue=batch, slow=slow)

    def _sort_answers(self, batch: list[Unit], results: list[dict[str, Any]]) -> Outcome[Unit]:
        """The outcome of each entry of a partly failed request."""
        out: Outcome[Unit] = Outcome()
        codes: dict[str, int] = {}
        closed: list[_Closed] = []
        for u, r in zip(batch, results, strict=True):
            code = r.get("ErrorCode")
            if not code:
                out.delivered.append(u)
                continue
            message = str(r.get("ErrorMessage", ""))
            shard = closed_shard(code, message)
            if shard is not None:  # not the record's fault: resent once the map is new
                closed.append(_Closed(shard, code))
                out.requeue.append(u)
            elif code in INVALID_CODES:
                out.dead.append(Rejected(u, f"rejected by Kinesis: {code}: {message}"))
            else:
                out.requeue.append(u)
                codes[code] = codes.get(code, 0) + 1
                if code == THROTTLED:
                    out.throttled.append(Refused(u.route.shard, u.size))
                elif code not in RETRYABLE_ENTRY_CODES:
                    out.slow = True
        out.throttled_only = len(out.throttled) == len(out.requeue)
        if closed:
            self._stale(closed[0].shard, closed[0].code, len(closed), len(batch))
        if codes:
            detail = ", ".join(f"{n} {c}" for c, n in sorted(codes.items()))
            self.note(
                "partial",
                f"PutRecords: {len(out.requeue) - len(closed)} of {len(batch)} failed ({detail})",
            )
        return out

    def _stale(self, shard: str, code: str, refused: int, sent: int) -> None:
        """Writes were refused for a closed shard: list the shards now."""
        self.on_stale()
        self.note(
            "closed-shard",
            f"PutRecords: {refused} of {sent} refused for {shard}, closed by a resharding "
            f"({code}); listing the shards again to resend them to the new shards",
        )

    def put_test(self, data: bytes, key: str, stopping: threading.Event) -> str:
        """PutRecords of the connection test's one record: the call, and the permission,
        used to send; returns the shard it landed on. Throttling and transient failures
        are retried a few times; anything else fails."""
        delay = 0.1
        for attempt in range(_TEST_ATTEMPTS):
            last = attempt == _TEST_ATTEMPTS - 1
            shard = self._try_test(data, key, last)
            if shard is not None:
                return shard
            if stopping.wait(random.uniform(0, delay)):
                break
            delay *= 2
        raise SinkError("stopped during the connection test")

    def _try_test(self, data: bytes, key: str, last: bool) -> str | None:
        """One attempt of ``put_test``: the shard, or None to try again."""
        from botocore.exceptions import ClientError

        what = "PutRecords (connection test)"
        try:
            resp = self.client.put_records(
                **self.stream, Records=[{"Data": data, "PartitionKey": key}]
            )
        except ClientError as exc:
            err = error_code(exc)
            again = err.code in THROTTLE_CODES or err.code == "InternalFailure"
            if last or not (again or (err.status is not None and err.status >= 500)):
                raise SinkError(self.explain(exc, what)) from None
            return None
        except Exception as exc:
            if last:
                raise SinkError(self.explain(exc, what)) from None
            return None
        return self._test_answer((resp.get("Records") or [{}])[0], last)

    def _test_answer(self, entry: dict[str, Any], last: bool) -> str | None:
        code = entry.get("ErrorCode")
        if not code:
            return str(entry.get("ShardId"))
        if code not in RETRYABLE_ENTRY_CODES or last:
            raise SinkError(
                f"the connection test record was refused by Kinesis stream "
                f"{self.explain.config.stream_name!r}: {code}: {entry.get('ErrorMessage')}"
            )
        return None
