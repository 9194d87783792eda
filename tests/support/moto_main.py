"""moto's server, with each write to a Kinesis shard made one at a time.

moto (5.x, up to its current source) stores a record by reading the shard's last
sequence number and storing the record under the next one, with no lock
(``moto.kinesis.models.Shard.put_record``, marked "not safe for concurrency"). Two
PutRecords on one shard at the same moment can draw the same number: both are answered
as stored, with that number, and the second overwrites the first, so the stream loses a
record that was acknowledged. Real Kinesis orders a shard's writes itself. The sink may
have several requests on one shard at once (several lanes while the shard map is not
known, e.g. after a failed connection check), so the tests' server makes these writes
one at a time. DynamoDB's conditional writes race in moto the same way, and are made one
at a time too (``serialise_item_writes``). ``tests/test_moto_server.py`` shows the races
and this remedy.

Run as ``python moto_main.py -H HOST -p PORT`` (the arguments of ``python -m moto.server``).
"""

from __future__ import annotations

import threading
from typing import Any

from moto.dynamodb.models import DynamoDBBackend
from moto.kinesis import models
from moto.server import main

_put_record = models.Shard.put_record
_lock = threading.Lock()
"""Held while a record is stored on any shard."""


def _serialised(shard: models.Shard, *args: Any, **kwargs: Any) -> str:
    with _lock:
        return _put_record(shard, *args, **kwargs)


def serialise_shard_writes() -> None:
    models.Shard.put_record = _serialised  # type: ignore[method-assign]


_item_lock = threading.RLock()
"""Held while DynamoDB writes an item (a transaction writes several: reentrant)."""


def _one_at_a_time(write: Any) -> Any:
    def serialised(*args: Any, **kwargs: Any) -> Any:
        with _item_lock:
            return write(*args, **kwargs)

    return serialised


def serialise_item_writes() -> None:
    """moto's ``update_item`` checks the condition, then creates an empty item for a new
    key, then applies the update: a second conditional update of that key in between sees
    an item without the attribute it compares and is refused, and the first then stores
    the older value (the consumer's "the later sequence number wins" failed this way about
    one run in two). DynamoDB applies a conditional write to one item atomically."""
    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        setattr(DynamoDBBackend, name, _one_at_a_time(getattr(DynamoDBBackend, name)))


if __name__ == "__main__":
    serialise_shard_writes()
    serialise_item_writes()
    main()
