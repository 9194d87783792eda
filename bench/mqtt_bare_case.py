"""Bench case (mqtt-bare), run by ``bench/run.py`` in a process of its own, as (mqtt) is.

A bare paho-mqtt 2.x publish loop: connect, publish every envelope of the file at QoS 1
with at most ``MAX_IN_FLIGHT`` unacknowledged (the sink's default ``max_in_flight``),
wait until every PUBACK has arrived, disconnect.

Usage: ``python bench/mqtt_bare_case.py HOST PORT FILE``; the file holds one
``topic<TAB>payload`` line per message. Prints one JSON line:
``{"messages": n, "acknowledged": n, "seconds": s}`` (``seconds`` from connect to the
last PUBACK).
"""

from __future__ import annotations

import sys
import threading
import time

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MAX_IN_FLIGHT = 1000


def main(host: str, port: int, path: str) -> None:
    messages = []
    with open(path, "rb") as fh:
        for line in fh:
            topic, payload = line.rstrip(b"\n").split(b"\t", 1)
            messages.append((topic.decode(), payload))
    slots = threading.Semaphore(MAX_IN_FLIGHT)
    acked = 0
    done = threading.Event()

    def on_publish(c: object, u: object, mid: int, reason: object, props: object) -> None:
        nonlocal acked
        acked += 1  # only paho's network thread counts
        slots.release()
        if acked == len(messages):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{time.time_ns()}")
    client.max_inflight_messages_set(MAX_IN_FLIGHT)
    client.on_publish = on_publish
    t0 = time.perf_counter()
    client.connect(host, port, 60)
    client.loop_start()
    for topic, payload in messages:
        slots.acquire()
        client.publish(topic, payload, qos=1)
    done.wait(600)
    took = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    out = {"messages": len(messages), "acknowledged": acked, "seconds": took}
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
