"""Any JSON value a Spark variable can carry comes back out of DynamoDB as it went in."""

from __future__ import annotations

import decimal
import itertools
import json
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from spark_consumer.envelope import DYNAMODB_CONTEXT
from spark_consumer.handler import lambda_handler

from .producer import HOST, kinesis_event
from .test_handler import history

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(text.filter(bool), children, max_size=4)
    ),
    max_leaves=12,
)

machines = (f"machine-{i}" for i in itertools.count())


def fits_dynamodb(number: Decimal) -> bool:
    try:
        exact = DYNAMODB_CONTEXT.create_decimal(number)
    except decimal.DecimalException:
        return number.is_zero()
    return number.is_zero() or Decimal("1E-130") <= abs(exact) < Decimal("1E+126")


def assert_same(stored: Any, sent: Any) -> None:
    """Equal, except that a number DynamoDB cannot hold comes back as its exact text."""
    if isinstance(sent, bool) or sent is None or isinstance(sent, str):
        assert stored == sent and type(stored) is type(sent)
    elif isinstance(sent, int | Decimal):
        if fits_dynamodb(Decimal(sent)):
            assert isinstance(stored, Decimal) and stored == sent
        else:
            assert isinstance(stored, str) and Decimal(stored) == sent
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent)
        for a, b in zip(stored, sent, strict=True):
            assert_same(a, b)
    else:
        assert isinstance(stored, dict) and stored.keys() == sent.keys()
        for key in sent:
            assert_same(stored[key], sent[key])


@settings(
    max_examples=40,
    database=None,  # leave no .hypothesis folder in the work tree
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(value=1e-131)  # boto3 accepts it, DynamoDB does not: kept as text
@example(value=[5e-324, 1e126])
@given(value=json_values)
def test_any_json_value_round_trips_through_the_data_table(tables, value):
    machine = next(machines)
    envelope = {
        "type": "record",
        "host": HOST,
        "data": {
            "machine": machine,
            "time": "2026-11-26T10:00:00.000Z",
            "attributes": {"v": {"name": "v", "format": "any", "value": value}},
        },
    }
    raw = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()

    assert lambda_handler(kinesis_event([raw]), None) == {"batchItemFailures": []}

    (item,) = history(machine)
    sent = json.loads(raw, parse_float=Decimal)["data"]["attributes"]["v"]["value"]
    assert_same(item["attributes"]["v"]["value"], sent)
