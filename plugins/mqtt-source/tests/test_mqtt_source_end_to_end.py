"""From the plant floor to the cloud: the MQTT source through the pipeline to the MQTT sink
and to Kinesis (on moto) at once; and spark-sinks talking Sparkplug B to itself (one
gateway's MQTT sink is another's MQTT source)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from mqtt_source_helpers import (
    Run,
    no_run_left_behind,  # noqa: F401 - autouse
    record,
    unique,
    write_config,
)

from spark_sinks.timefmt import format_ms
from tests.helpers import run_cli
from tests.support.mosquitto import Client, Mosquitto
from tests.support.moto_server import FAKE_CREDENTIALS, MotoServer
from tests.support.streams import new_stream, read_stream

N = 300


@pytest.mark.slow
def test_mqtt_in_mqtt_and_kinesis_out(
    tmp_path: Path, mosquitto: Mosquitto, moto: MotoServer
) -> None:
    kinesis = moto.client("kinesis")
    stream = new_stream(kinesis, shards=2)
    prefix = unique("e2e")
    sinks: dict[str, Any] = {
        "bus": {
            "type": "mqtt",
            "host": mosquitto.host,
            "port": mosquitto.port,
            "client_id": unique("sink"),
            "topic": prefix + "/out/{host}/{machine}/{type}",
        },
        "cloud": {
            "type": "kinesis",
            "stream_name": stream,
            "region": "us-east-1",
            "endpoint_url": moto.url,
            "linger_ms": 20,
        },
    }
    cfg = write_config(tmp_path / "c.yaml", mosquitto, [f"{prefix}/in/#"], sinks=sinks)
    out = Client(mosquitto).connect()
    out.subscribe(f"{prefix}/out/#")
    run = Run(cfg, env=FAKE_CREDENTIALS)
    run.wait_subscribed()
    pub = Client(mosquitto).connect()
    pub.publish_many([(f"{prefix}/in/line-{i % 4}", record(i)) for i in range(N)])
    pub.close()

    def over_mqtt() -> list[bytes]:
        return [m.payload for m in out.messages if m.topic.endswith("/record")]

    run.wait(lambda: len(over_mqtt()) >= N, timeout=60, what="every record over MQTT")
    assert run.stop(signal.SIGTERM) == 0, run.err
    out.close()

    mqtt_records = over_mqtt()
    cloud = [r["raw"] for r in read_stream(kinesis, stream)]
    cloud_records = [raw for raw in cloud if orjson.loads(raw)["type"] == "record"]
    seqs = sorted(orjson.loads(raw)["data"]["attributes"]["seq"]["value"] for raw in mqtt_records)
    assert seqs == list(range(N))
    # both sinks got the very same envelope bytes
    assert sorted(mqtt_records) == sorted(cloud_records)
    assert "sink 'bus': " in run.err and "sink 'cloud': " in run.err


@pytest.mark.parametrize("aliases", [False, True], ids=["names", "aliases"])
def test_sparkplug_from_one_gateway_to_another(
    tmp_path: Path, mosquitto: Mosquitto, aliases: bool
) -> None:
    """Gateway A reads NDJSON and publishes Sparkplug B (the MQTT sink); gateway B
    subscribes (the MQTT source) and prints the same records. With ``aliases`` the DDATA
    name metrics by the alias their DBIRTH gave them only."""
    group = unique("g")
    receiver_cfg = write_config(
        tmp_path / "b.yaml", mosquitto, [f"spBv1.0/{group}/#"], format="sparkplug_b"
    )
    receiver = Run(receiver_cfg)
    receiver.wait_subscribed()
    sender_cfg = write_config(
        tmp_path / "a.yaml",
        mosquitto,
        [],
        source={"type": "ndjson", "path": "-"},
        sinks={
            "bus": {
                "type": "mqtt",
                "host": mosquitto.host,
                "port": mosquitto.port,
                "client_id": unique("edge"),
                "format": "sparkplug_b",
                "group_id": group,
                "edge_node_id": "gw-a",
                "aliases": aliases,
            }
        },
    )
    lines = b"\n".join(record(i) for i in range(30)) + b"\n"
    sent = run_cli("run", "-c", str(sender_cfg), input=lines, timeout=60)
    assert sent.returncode == 0, sent.stderr.decode()

    receiver.wait(lambda: len(receiver.records()) >= 30, what="the 30 records")
    assert receiver.stop(signal.SIGTERM) == 0, receiver.err
    got = {
        r["attributes"]["seq"]["value"]: (r["machine"], r["time"], r["attributes"])
        for r in receiver.records()
    }
    assert sorted(got) == list(range(30))
    # our edge node keeps seq and births as our host application checks them
    assert "asking it for a rebirth" not in receiver.err
    for i in range(30):
        sent_item = orjson.loads(record(i))
        machine, time, attributes = got[i]
        assert machine == sent_item["machine"]
        assert time == format_ms(sent_item["time"])  # to the millisecond
        assert {k: a["value"] for k, a in attributes.items()} == sent_item["values"]
