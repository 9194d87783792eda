"""PutRecords request bodies encoded with orjson instead of the standard library's json.

Why: botocore builds the JSON body of every request with ``json.dumps``, which scans
each character of the base64 record data while holding the GIL. For a PutRecords of
1 MiB that is about 2.6 ms, the largest single cost of a Kinesis sender thread and time
the reader thread cannot use; orjson writes the same JSON in a fraction of it. With
aggregation, where requests are large, the whole run got about 8% faster
(``bench/run.py``, case d).

Only the body of PutRecords changes. botocore still builds everything else (target,
content type, URL, any other parameter) through its own serializer, then signs, sends,
retries and parses as usual. The wrapper is installed only on clients that speak
botocore's ``json`` protocol and expose the serializer; otherwise botocore is left as it
is. ``tests/test_kinesis_wire.py`` (in this distribution) checks that the body is the
same JSON botocore would have sent, so a botocore upgrade that changes it fails there.
"""

from __future__ import annotations

import binascii
import logging
from typing import Any

import orjson

log = logging.getLogger(__name__)

_RECORD_KEYS = frozenset({"Data", "PartitionKey", "ExplicitHashKey"})
_PLACEHOLDER = [{"Data": b"", "PartitionKey": "-"}]


def _b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return binascii.b2a_base64(data, newline=False).decode("ascii")


class PutRecordsSerializer:
    """A botocore serializer that hands every operation to ``inner`` and, for PutRecords,
    replaces the records part of the body with one encoded by orjson."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def serialize_to_request(self, parameters: dict[str, Any], operation_model: Any) -> Any:
        records = parameters.get("Records")
        if operation_model.name != "PutRecords" or not isinstance(records, list):
            return self.inner.serialize_to_request(parameters, operation_model)
        encoded = []
        for r in records:
            if not isinstance(r, dict) or not r.keys() <= _RECORD_KEYS:
                # something this wrapper was not written for: botocore decides
                return self.inner.serialize_to_request(parameters, operation_model)
            encoded.append({k: (_b64(v) if k == "Data" else v) for k, v in r.items()})
        # botocore serializes the rest, around one empty record (valid for its validator)
        request = self.inner.serialize_to_request(
            {**parameters, "Records": _PLACEHOLDER}, operation_model
        )
        body = orjson.loads(request["body"])
        body["Records"] = encoded
        try:
            request["body"] = orjson.dumps(body)
        except orjson.JSONEncodeError:  # e.g. a lone surrogate, which json.dumps escapes
            return self.inner.serialize_to_request(parameters, operation_model)
        return request


def install(client: Any) -> bool:
    """Put the orjson body encoder in front of ``client``'s serializer, when that is
    known to be safe; True if it was installed."""
    model = getattr(getattr(client, "meta", None), "service_model", None)
    protocol = getattr(model, "protocol", None)
    inner = getattr(client, "_serializer", None)
    if protocol != "json" or inner is None or not hasattr(inner, "serialize_to_request"):
        log.debug("PutRecords bodies are encoded by botocore (protocol %r)", protocol)
        return False
    if not isinstance(inner, PutRecordsSerializer):
        client._serializer = PutRecordsSerializer(inner)
    return True
