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
