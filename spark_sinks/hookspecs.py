"""Every hook a plugin can implement. Each one is documented in docs/writing-plugins.md.

Hooks run at start-up only; per-record delivery goes through the ``Sink``
methods (see ``sink.py``) so that one sink's exception or slowness is isolated
from the others and the hot path pays no hook-call overhead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .sink import Sink
    from .sources import Source

hookspec = pluggy.HookspecMarker("spark_sinks")
hookimpl = pluggy.HookimplMarker("spark_sinks")


@hookspec
def spark_sinks_register_sink_types(register: Callable[[type[Sink]], None]) -> None:
    """Register sink types by calling ``register(SinkClass)`` once per type.

    ``SinkClass.type_name`` is the value users write as ``type:`` under
    ``sinks.<name>``; ``SinkClass.Config`` validates the rest of that block.
    """


@hookspec
def spark_sinks_register_sources(register: Callable[[type[Source]], None]) -> None:
    """Register source types by calling ``register(SourceClass)`` once per type.

    ``SourceClass.type_name`` is the value users write as ``source.type``.
    """
