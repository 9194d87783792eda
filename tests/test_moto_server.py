import contextlib
import uuid


def test_moto_server_serves_kinesis_over_http(moto):
    k = moto.client("kinesis")
    name = f"probe-{uuid.uuid4().hex[:8]}"
    k.create_stream(StreamName=name, ShardCount=2)
    summary = k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 2
    k.delete_stream(StreamName=name)


def _put_concurrently(server, threads=8, requests=10, batch=100):
    """PutRecords on one shard from several threads at once; (acknowledged (shard,
    sequence number) pairs, records GetRecords reads back)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.streams import new_stream, shard_records

    k = server.client("kinesis")
    stream = new_stream(k, shards=1)

    def put(t):
        client = server.client("kinesis")  # one connection per thread, as the sink's lanes
        acks = []
        for r in range(requests):
            records = [
                {"Data": f"{t}-{r}-{i}".encode(), "PartitionKey": f"m{t}"} for i in range(batch)
            ]
            answer = client.put_records(StreamName=stream, Records=records)
            assert answer["FailedRecordCount"] == 0
            acks += [(e["ShardId"], e["SequenceNumber"]) for e in answer["Records"]]
        return acks

    with ThreadPoolExecutor(threads) as pool:
        acks = [a for part in pool.map(put, range(threads)) for a in part]
    return acks, list(shard_records(k, stream))


def test_concurrent_writes_to_one_shard_keep_every_acknowledged_record(moto):
    """The tests' server (moto_main.py) stores one record at a time; moto as it comes
    (MotoServer(serialised=False)) gives two records one sequence number and keeps one."""
    acks, stored = _put_concurrently(moto)
    assert len(acks) == 8 * 10 * 100
    assert len(set(acks)) == len(acks), "one sequence number acknowledged for two records"
    assert len(stored) == len(acks)


def test_concurrent_conditional_updates_of_one_item_keep_the_newest(moto):
    """The consumer stores metadata with ``attribute_not_exists(pk) OR version < :v`` from
    several threads; moto as it comes creates a new item empty before applying the update,
    so a concurrent update could be refused against it and the older version stay."""
    from concurrent.futures import ThreadPoolExecutor

    db = moto.client("dynamodb")
    table = f"probe-{uuid.uuid4().hex[:8]}"
    db.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    def update(key_and_version):
        key, version = key_and_version
        with contextlib.suppress(db.exceptions.ConditionalCheckFailedException):
            moto.client("dynamodb").update_item(
                TableName=table,
                Key={"pk": {"S": key}},
                UpdateExpression="SET #v = :v",
                ConditionExpression="attribute_not_exists(pk) OR #v < :v",
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues={":v": {"N": str(version)}},
            )

    keys = [f"k{i}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(update, [(k, v) for k in keys for v in (1, 2)]))
    for k in keys:
        item = db.get_item(TableName=table, Key={"pk": {"S": k}})["Item"]
        assert item["version"] == {"N": "2"}, (k, item)


def test_a_port_taken_before_moto_binds_it_is_given_up_for_another(monkeypatch):
    import socket

    from tests.support import moto_server

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()  # accepts, never answers: what another test's server looks like
    ports = iter([taken.getsockname()[1]])
    real = moto_server.free_port
    monkeypatch.setattr(moto_server, "free_port", lambda: next(ports, None) or real())
    server = moto_server.MotoServer()
    try:
        assert server.port == taken.getsockname()[1]
        server.start()
        assert server.port != taken.getsockname()[1]
        k = server.client("kinesis")
        k.create_stream(StreamName="after-retry", ShardCount=1)
        assert k.list_streams()["StreamNames"] == ["after-retry"]
    finally:
        server.stop()
        taken.close()
