import uuid


def test_moto_server_serves_kinesis_over_http(moto):
    k = moto.client("kinesis")
    name = f"probe-{uuid.uuid4().hex[:8]}"
    k.create_stream(StreamName=name, ShardCount=2)
    assert name in k.list_streams()["StreamNames"]
    k.delete_stream(StreamName=name)
