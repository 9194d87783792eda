"""Registers a sink type name that the stdout plugin already provides."""

from spark_sinks import Sink, hookimpl


class AnotherStdout(Sink):
    type_name = "stdout"


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    register(AnotherStdout)
