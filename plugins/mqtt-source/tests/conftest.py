"""The MQTT source tests: no ``spark-sinks run`` outlives its test, even a failed one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mqtt_source_helpers import Run


@pytest.fixture(autouse=True)
def _no_run_left_behind() -> Iterator[None]:
    yield
    while Run.started:
        run = Run.started.pop()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
