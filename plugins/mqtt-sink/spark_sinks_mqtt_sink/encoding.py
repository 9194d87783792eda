"""What the ``mqtt`` sink publishes for an envelope: topic, payload, QoS, retain.

``JsonEncoder`` sends the envelope's JSON unchanged on a templated topic. The Sparkplug B
encoder, ``edge.EdgeNode``, is a module of its own: it needs protobuf, which a sink
publishing JSON then never imports. Both are used only under the sink's lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from spark_sinks_sparkplug.topics import topic_problem

from spark_sinks import METADATA, Envelope

from .config import MqttSinkConfig


class EncodeError(ValueError):
    """This envelope can never be published (bad topic, value Sparkplug cannot carry)."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


class JsonEncoder:
    """The seed envelope's bytes, on ``topic`` formatted with host, machine and type."""

    def __init__(self, config: MqttSinkConfig) -> None:
        self._template = config.topic
        self._qos = config.effective_qos
        self._retain_metadata = config.retain_metadata
        self._topics: dict[tuple[str, str | None, str], str] = {}
        """Formatted topics; as many as machines times types, which the config bounds."""

    def encode(self, env: Envelope) -> list[Message]:
        key = (env.host, env.machine, env.type)
        topic = self._topics.get(key)
        if topic is None:
            topic = self._topics[key] = self._topic(env)
        retain = self._retain_metadata and env.type == METADATA
        return [Message(topic, env.to_json(), self._qos, retain)]

    def _topic(self, env: Envelope) -> str:
        machine = env.machine if env.machine is not None else "_gateway"
        topic = self._template.format(host=env.host, machine=machine, type=env.type)
        problem = topic_problem(topic)
        if problem:
            raise EncodeError(f"topic {topic[:200]!r} {problem}")
        return topic
