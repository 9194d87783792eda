"""The main thread of ``spark-sinks run``: it takes the signals and bounds every wait.

The whole run (plugin and config load, sink start-up, the pipeline, the final flush) happens
on one thread, ``pipeline``, so that every sink still gets all its lifecycle calls from one
thread. The main thread only waits for it: Python runs signal handlers on the main thread
only, so a pipeline stuck in a plugin, a socket or a FIFO can never make a signal wait.

After the first SIGINT/SIGTERM the pipeline has a bound to finish by itself: a few seconds
while it loads or starts the sinks (a sink still starting is then reported as not
started), and the sinks' flush timeouts plus a few seconds once data flows. After a second
signal, or when the bound is over, the main thread reports what the counters say and the
process ends, whatever the pipeline is still stuck in.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .runtime import Report, Runtime

log = logging.getLogger("spark_sinks")

START_UP_GRACE = 2.0
"""Seconds a start-up phase (loading, a sink's open or connection check) may still take
after the first signal."""
SHUTDOWN_GRACE = 3.0
"""Seconds on top of the sinks' flush timeouts for stopping the source and closing."""
_POLL = 0.1


class Phase(enum.Enum):
    LOADING = "loading the plugins and the config"
    STARTING = "starting the sinks"
    RUNNING = "running"


@dataclass
class Supervisor:
    """Shared between the main thread (signal handlers, the bounded wait) and the pipeline
    thread. ``runtime`` and ``phase`` are written by the pipeline thread only; ``stop``,
    ``force``, ``signals`` and ``hup_pending`` by the main thread only."""

    body: Callable[[Supervisor], Report]
    summarise: Callable[[Report], None]
    """Prints the run's summary (when the process ends without the pipeline thread)."""
    runtime: Runtime | None = None
    phase: Phase = Phase.LOADING
    stop: threading.Event = field(default_factory=threading.Event)
    force: threading.Event = field(default_factory=threading.Event)
    signals: int = 0
    hup_pending: bool = False
    """A SIGHUP came (maybe before the runtime existed: ``adopt`` passes it on)."""
    stopped_by: str = ""
    _stopped_at: float = 0.0
    _result: Report | None = None
    _error: BaseException | None = None

    def adopt(self, runtime: Runtime) -> None:
        """The pipeline thread has built its runtime: from now on signals go to it."""
        self.runtime = runtime
        runtime.stopped_by = self.stopped_by
        # a SIGHUP while the config was loading may postdate the file read: re-read it.
        # (The handler sets hup_pending before reading runtime: one of the two sees it.)
        if self.hup_pending:
            runtime.request_reload()
        self.phase = Phase.STARTING
        if self.stop.is_set():
            runtime.request_stop(self.stopped_by)

    # -- main thread -----------------------------------------------------------------------

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self.hup_pending = True
        runtime = self.runtime
        if runtime is not None:
            runtime.request_reload()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        runtime = self.runtime
        if self.signals == 1:
            self.stopped_by = name
            self._stopped_at = time.monotonic()
            if self.phase is Phase.RUNNING:
                log.info("%s received: stopping the source, then flushing the sinks", name)
            else:
                log.info("%s received while %s: stopping", name, self.phase.value)
            self.stop.set()
            if runtime is not None:
                runtime.request_stop(name)
        else:
            log.warning("%s received again: giving up on what is still pending", name)
            self.force.set()
            if runtime is not None:
                runtime.force()

    def run(self) -> Report:
        """Run ``body`` on the pipeline thread and wait for it, boundedly after a signal.
        Returns its report, re-raises its exception, or ends the process when it is stuck."""
        thread = threading.Thread(target=self._pipeline, name="pipeline", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(_POLL)
            if self.stop.is_set() and thread.is_alive() and self._bound_passed():
                self._abandon()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _bound_passed(self) -> bool:
        if self.force.is_set():
            return True
        runtime = self.runtime
        if self.phase is Phase.RUNNING and runtime is not None:
            bound = runtime.flush_bound() + SHUTDOWN_GRACE
        else:
            bound = START_UP_GRACE
        return time.monotonic() - self._stopped_at > bound

    def _abandon(self) -> None:
        """The pipeline did not finish in time: report from the counters and end now."""
        runtime = self.runtime
        what = runtime.busy_with() if runtime is not None else self.phase.value
        log.error("gave up waiting for %s after %s", what, self.stopped_by)
        if runtime is None:
            log.info("stopped before any data was accepted")
            code = 0
        else:
            report = runtime.abandon()
            self.summarise(report)
            code = report.exit_code
        logging.shutdown()
        sys.stderr.flush()
        # Not sys.exit: the interpreter would wait for, or trip over, the stuck thread.
        os._exit(code)

    # -- pipeline thread -------------------------------------------------------------------

    def _pipeline(self) -> None:
        try:
            self._result = self.body(self)
        except BaseException as exc:  # handed to the main thread, which reports it
            self._error = exc


@dataclass
class CheckSupervisor:
    """The main thread of ``spark-sinks check``: the checks run on a thread of their own,
    the main thread takes SIGINT/SIGTERM. A check writes nothing and holds nothing that
    needs closing, so the first signal ends the process at once: one line naming what was
    being checked, and exit 128 + the signal's number (130 for SIGINT, 143 for SIGTERM),
    as a shell reports a command a signal ended."""

    doing: str = Phase.LOADING.value
    """What the checks are doing, for that line; written by the checks' thread only."""

    def run(self, body: Callable[[CheckSupervisor], int]) -> int:
        """``body``'s exit code; re-raises its exception (``sys.exit`` included)."""
        received: list[int] = []
        """Signals, appended by the handler (main thread only)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda n, _frame: received.append(n))
        outcome: list[int] = []
        error: list[BaseException] = []

        def checks() -> None:
            try:
                outcome.append(body(self))
            except BaseException as exc:  # handed to the main thread, which raises it
                error.append(exc)

        thread = threading.Thread(target=checks, name="check", daemon=True)
        thread.start()
        while thread.is_alive() and not received:
            thread.join(_POLL)
        if thread.is_alive():
            self._stopped(received[0])
        if error:
            raise error[0]
        return outcome[0]

    def _stopped(self, signum: int) -> None:
        log.error(
            "%s received while %s: check stopped; what was not checked yet is unknown",
            signal.Signals(signum).name,
            self.doing,
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit: the interpreter would wait for the checks' thread, stuck in a socket.
        os._exit(128 + signum)
