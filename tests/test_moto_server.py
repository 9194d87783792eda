import uuid


def test_moto_server_serves_kinesis_over_http(moto):
    k = moto.client("kinesis")
    name = f"probe-{uuid.uuid4().hex[:8]}"
    k.create_stream(StreamName=name, ShardCount=2)
    summary = k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 2
    k.delete_stream(StreamName=name)
