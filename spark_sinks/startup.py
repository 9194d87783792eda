"""What the ``spark-sinks`` command sets up before pydantic builds its first model.

Imported by ``cli.py`` ahead of every module that defines a config model.
"""

from __future__ import annotations

import os

# pydantic looks for plugins of its own (validation hooks, not ours) in the entry points of
# every installed distribution when it builds the first model: about 30 ms of each start
# and reload (median of 9 runs, `spark-sinks run` with one kinesis sink). The command uses
# none. A PYDANTIC_DISABLE_PLUGINS the user set, even empty (then pydantic loads them all),
# is kept.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
