def test_moto_server_serves_kinesis_over_http(moto):
    k = moto.client("kinesis")
    k.create_stream(StreamName="probe", ShardCount=2)
    names = k.list_streams()["StreamNames"]
    assert "probe" in names
    k.delete_stream(StreamName="probe")
