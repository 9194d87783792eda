"""A plugin that imports fine but raises inside its hook."""

from spark_sinks import hookimpl


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    raise RuntimeError("licence file /etc/frob.lic not found")
