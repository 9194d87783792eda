"""Registers a sink type whose name could not be written in a metrics label or status file."""

from spark_sinks import Sink, hookimpl


class Spaced(Sink):
    type_name = "my sink"


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    register(Spaced)
