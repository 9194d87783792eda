"""A plugin whose import fails, as when an optional dependency is missing."""

raise ImportError("spark_sinks_broken_import needs the 'libfrobnicate' library")
