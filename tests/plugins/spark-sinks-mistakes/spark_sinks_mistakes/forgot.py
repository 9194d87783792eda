"""The hook is not decorated with @hookimpl, so pluggy never calls it."""


def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    raise AssertionError("never called")
