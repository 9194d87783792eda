"""Plausible values for the configured machines, for demos and soak tests."""

from __future__ import annotations

import random
import threading
from typing import Any, Literal

from pydantic import Field

from ..machines import Machine, Variable
from ..sink import MAX_SECONDS
from . import Feed, Source, SourceConfig


class SimulatorConfig(SourceConfig):
    type: Literal["simulator"] = "simulator"
    interval: float = Field(1.0, ge=0, le=MAX_SECONDS)
    """Seconds between two sample cycles of every machine."""
    count: int | None = Field(None, ge=0)
    """Sample cycles to produce; unset means run until stopped."""
    seed: int | None = None


class SimulatorSource(Source):
    type_name = "simulator"
    Config = SimulatorConfig
    config: SimulatorConfig

    def run(self, feed: Feed, stop: threading.Event) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        state: dict[tuple[str, str], Any] = {}
        machines: list[Machine] = [m for m in self.machines.values() if m.publishing]
        cycle = 0
        while not stop.is_set() and (cfg.count is None or cycle < cfg.count):
            for m in machines:
                for var in m.variables.values():
                    key = (m.name, var.name)
                    state[key] = _next(var, state.get(key), rng, cycle)
                    feed.point(m.name, var.name, state[key])
            feed.flush()
            cycle += 1
            if cfg.interval:
                stop.wait(cfg.interval)


def _next(var: Variable, prev: Any, rng: random.Random, cycle: int) -> Any:
    fmt = var.format
    if fmt in ("float", "double"):
        base = prev if isinstance(prev, float) else rng.uniform(20.0, 80.0)
        return round(base + rng.gauss(0, 0.5), 3)
    if fmt.startswith(("int", "uint")):
        return cycle % 128
    if fmt in ("bool", "boolean"):
        return rng.random() < 0.5
    if fmt in ("char", "string"):
        return rng.choice(["idle", "running", "setup", "fault"])
    return {"cycle": cycle}
