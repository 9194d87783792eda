"""The hook's name is misspelt (singular), so no hookspec matches it."""

from spark_sinks import hookimpl


@hookimpl
def spark_sinks_register_sink_type(register):  # type: ignore[no-untyped-def]
    raise AssertionError("never called")
