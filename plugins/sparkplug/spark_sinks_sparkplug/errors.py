"""The one exception of the Sparkplug library."""

from __future__ import annotations


class SparkplugError(ValueError):
    """A value, topic or payload that Sparkplug B cannot carry; the message says why."""
