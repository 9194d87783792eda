"""Signals at every phase of `spark-sinks run`: the first SIGTERM/SIGINT is honoured while
plugins load, while the config is read, while a sink opens or runs its connection check
(even one that never returns), while running and during the final flush; the process ends
within a few seconds plus the flush timeout, with a summary. A second signal stops waiting
at once.

Every test is a real `spark-sinks run` subprocess and real signals. A phase is held by the
``hang`` test plugin (tests/plugins/spark-sinks-hang: blocks forever in the step it is told
to, ignoring every event and timeout), by a FIFO as the config file, by an endpoint that
accepts TCP and never answers (``silent.SilentServer``) or by the fault proxy delaying one
Kinesis operation for ten minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.faults.silent import SilentServer
from tests.helpers import CLI, MACHINES
from tests.plugins import environ, install
from tests.support.faultproxy import FaultProxy
from tests.support.moto_server import FAKE_CREDENTIALS
from tests.support.streams import new_stream

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
LINE = b'{"machine": "press-1", "values": {"temperature": 1.5, "count": 3}}\n'
START_UP_BOUND = 6.0
"""Seconds from a signal during start-up to the exit: the core waits 2 s for the phase
to end by itself, then gives up; the rest is margin for a loaded machine."""


@pytest.fixture(scope="module")
def hang_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp() / "plugins"
    return install([PLUGINS / "spark-sinks-hang"], base)["spark-sinks-hang"]


class Run:
    """A `spark-sinks run` subprocess; stdout and stderr go to files (never a full pipe)."""

    def __init__(self, tmp: Path, config: Path, env: dict[str, str], *args: str) -> None:
        self.out_path = tmp / "stdout.txt"
        self.err_path = tmp / "stderr.txt"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [*CLI, "run", "-c", str(config), *args],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=self._err,
            env=env,
        )

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def stdout_lines(self) -> int:
        return self.out_path.read_bytes().count(b"\n")

    def feed(self, data: bytes, close: bool = False) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        if close:
            self.proc.stdin.close()

    def signal_and_time_exit(self, signum: int, timeout: float = 20) -> float:
        """Send ``signum``; seconds until the process exited."""
        t0 = time.monotonic()
        self.proc.send_signal(signum)
        self.proc.wait(timeout)
        return time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self._out.close()
        self._err.close()


@pytest.fixture
def runs() -> Iterator[Callable[..., Run]]:
    made: list[Run] = []

    def start(tmp: Path, config: Path, env: dict[str, str], *args: str) -> Run:
        run = Run(tmp, config, env, *args)
        made.append(run)
        return run

    yield start
    for run in made:
        run.close()


def wait_for(what: Callable[[], Any], proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert proc.poll() is None, f"spark-sinks exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "the phase was never reached"
        time.sleep(0.05)


def config(tmp: Path, sinks: dict[str, Any], **extra: Any) -> Path:
    path = tmp / "c.yaml"
    cfg = {"host": "gw", "machines": MACHINES, "sinks": sinks, **extra}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def hang_sink(tmp: Path, step: str, **extra: Any) -> dict[str, Any]:
    return {"type": "hang", "hang_in": step, "marker": str(tmp / "marker"), **extra}


def reached(tmp: Path, step: str) -> Callable[[], bool]:
    marker = tmp / "marker"
    return lambda: marker.exists() and step in marker.read_text().split()


# -- start-up --------------------------------------------------------------------------------


def test_a_signal_while_plugins_load_ends_the_run(hang_site, tmp_path, runs):
    # a run imports only the plugins its config names: name the hang plugin's type
    cfg = config(tmp_path, {"out": {"type": "stdout"}, "h": {"type": "hang"}})
    marker = tmp_path / "imported"
    env = environ(hang_site, HANG_AT_IMPORT="1", HANG_IMPORT_MARKER=str(marker))
    run = runs(tmp_path, cfg, env)
    wait_for(marker.exists, run.proc)
    took = run.signal_and_time_exit(signal.SIGTERM)
    assert took < START_UP_BOUND, run.stderr
    assert run.proc.returncode == 0, run.stderr
    assert "SIGTERM received while loading the plugins and the config" in run.stderr
    assert "stopped before any data was accepted" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_signal_while_the_config_is_read_ends_the_run(tmp_path, runs):
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)  # reading it blocks until a writer writes and closes: config load holds
    run = runs(tmp_path, fifo, environ())
    writer: list[int] = []

    def reader_is_there() -> bool:
        try:  # succeeds once spark-sinks has the FIFO open for reading
            writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    try:
        wait_for(reader_is_there, run.proc)
        took = run.signal_and_time_exit(signal.SIGINT)
    finally:
        for fd in writer:
            os.close(fd)
    assert took < START_UP_BOUND, run.stderr
    assert run.proc.returncode == 0, run.stderr
    assert "SIGINT received while loading the plugins and the config" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_sighup_while_the_config_is_read_rereads_it_once_the_run_starts(tmp_path, runs):
    """The operator edits the file and sends SIGHUP while spark-sinks is still reading it
    (a FIFO holds the read): what was read may be the old file, so the run reads it again
    once it starts. Before: the SIGHUP came before the run existed and was dropped."""
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    run = runs(tmp_path, fifo, environ())

    def reader() -> int:
        """A write end, once spark-sinks has the FIFO open for reading."""
        fds: list[int] = []

        def there() -> bool:
            try:
                fds.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                return False
            return True

        wait_for(there, run.proc)
        return fds[0]

    def send(fd: int, sinks: dict[str, Any]) -> None:
        text = yaml.safe_dump({"host": "gw", "machines": MACHINES, "sinks": sinks})
        os.write(fd, text.encode())  # far below a pipe's buffer: never blocks
        os.close(fd)

    out = {"type": "stdout"}
    fd = reader()  # the config is being read
    run.proc.send_signal(signal.SIGHUP)
    send(fd, {"out": out})
    wait_for(lambda: "sink 'out' ready" in run.stderr, run.proc)  # that read is over
    send(reader(), {"out": out, "more": out})  # read again: the reload
    wait_for(lambda: "reload applied" in run.stderr, run.proc)
    run.feed(LINE, close=True)
    assert run.proc.wait(30) == 0, run.stderr
    assert "sink 'more' started" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("step", ["open", "check"])
def test_a_signal_while_a_sink_hangs_in_its_start_up_ends_the_run(
    hang_site, tmp_path, runs, step, signum
):
    cfg = config(tmp_path, {"ok": {"type": "stdout"}, "stuck": hang_sink(tmp_path, step)})
    run = runs(tmp_path, cfg, environ(hang_site))
    wait_for(reached(tmp_path, step), run.proc)
    took = run.signal_and_time_exit(signum)
    assert took < START_UP_BOUND, run.stderr
    err = run.stderr
    assert run.proc.returncode == 0, err  # nothing was accepted, so nothing was lost
    assert f"sink 'stuck' not started: stopped by {signal.Signals(signum).name}" in err
    assert "sink 'ok': 0 accepted, 0 delivered" in err
    assert "Traceback" not in err


def kinesis_sink(endpoint: str, stream: str = "s") -> dict[str, Any]:
    return {
        "type": "kinesis",
        "stream_name": stream,
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "flush_timeout": 5,
    }


def kinesis_env() -> dict[str, str]:
    env = environ(**FAKE_CREDENTIALS, SPARK_SINKS_LOAD_PLUGINS="kinesis")
    env.pop("AWS_ENDPOINT_URL", None)
    return env


def test_sigterm_while_kinesis_waits_for_an_endpoint_that_never_answers(tmp_path, runs):
    """The issue's case: the start-up check against an endpoint that accepts TCP and never
    answers used to ignore SIGTERM for 77 s (botocore's read timeout, five attempts)."""
    with SilentServer() as silent:
        cfg = config(tmp_path, {"cloud": kinesis_sink(silent.url)})
        run = runs(tmp_path, cfg, kinesis_env())
        assert silent.has_client(timeout=30), run.stderr
        took = run.signal_and_time_exit(signal.SIGTERM)
    err = run.stderr
    assert took < START_UP_BOUND, err
    assert run.proc.returncode == 0, err
    assert "sink 'cloud' not started: stopped by SIGTERM" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_check_stuck_on_an_endpoint_that_never_answers(tmp_path, signum):
    """`spark-sinks check` had no signal handling: SIGTERM killed it with no line at all,
    and SIGINT was a KeyboardInterrupt inside botocore."""
    name = signal.Signals(signum).name
    with SilentServer() as silent:
        sinks = {"out": {"type": "stdout"}, "cloud": kinesis_sink(silent.url)}
        cfg = config(tmp_path, sinks)
        env = {**kinesis_env(), "SPARK_SINKS_LOAD_PLUGINS": "kinesis,stdout"}
        with (tmp_path / "stderr").open("wb") as err_file:
            proc = subprocess.Popen(
                [*CLI, "check", "-c", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err_file,
                env=env,
            )
            try:
                assert silent.has_client(timeout=30), (tmp_path / "stderr").read_text()
                t0 = time.monotonic()
                proc.send_signal(signum)
                out, _ = proc.communicate(timeout=20)
                took = time.monotonic() - t0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    err = (tmp_path / "stderr").read_text()
    assert took < START_UP_BOUND, err  # a check holds nothing to flush: no wait at all
    assert proc.returncode == 128 + signum, err
    assert err.splitlines()[-1].endswith(
        f"{name} received while checking sink 'cloud' (open and connection check): "
        "check stopped; what was not checked yet is unknown"
    ), err
    assert "Traceback" not in err
    # what was checked before the signal was printed, and is not lost
    assert b"config: ok" in out and b"sink out: ok" in out, out


@pytest.mark.slow
@pytest.mark.parametrize("operation", ["DescribeStreamSummary", "ListShards", "PutRecords"])
def test_sigterm_while_one_start_up_request_of_kinesis_hangs(moto, tmp_path, runs, operation):
    """Each request of the start-up check in turn (the stream summary, the shard map, the
    connection-test record) answered only after ten minutes."""
    stream = new_stream(moto.client("kinesis"), 2)
    with FaultProxy(moto.url, seed=1) as proxy:
        proxy.set_faults(slow=1.0, slow_seconds=600, targets={operation})
        cfg = config(tmp_path, {"cloud": kinesis_sink(proxy.url, stream)})
        run = runs(tmp_path, cfg, kinesis_env())
        wait_for(lambda: proxy.counters().get("slowed"), run.proc)
        took = run.signal_and_time_exit(signal.SIGTERM)
    err = run.stderr
    assert took < START_UP_BOUND, err
    assert run.proc.returncode == 0, err
    assert "sink 'cloud' not started: stopped by SIGTERM" in err


@pytest.mark.slow
def test_a_sighup_during_start_up_is_applied_once_the_run_starts(moto, tmp_path, runs):
    """The operator edits the file and sends SIGHUP while a sink's start-up check is still
    waiting (here 4 s for the stream summary). Before: the signal was dropped without a
    word, and the edit was never applied."""
    stream = new_stream(moto.client("kinesis"), 1)
    with FaultProxy(moto.url, seed=1) as proxy:
        proxy.set_faults(slow=1.0, slow_seconds=4, targets={"DescribeStreamSummary"})
        cloud = kinesis_sink(proxy.url, stream)
        cfg = config(tmp_path, {"cloud": cloud})
        env = {**kinesis_env(), "SPARK_SINKS_LOAD_PLUGINS": "kinesis,stdout"}
        run = runs(tmp_path, cfg, env)
        wait_for(lambda: proxy.counters().get("slowed"), run.proc)
        config(tmp_path, {"cloud": cloud, "out": {"type": "stdout"}})  # the edit
        run.proc.send_signal(signal.SIGHUP)
        run.feed(LINE)  # a batch: a requested reload is applied after it
        wait_for(lambda: "reload applied" in run.stderr, run.proc, timeout=60)
        run.feed(LINE, close=True)
        assert run.proc.wait(60) == 0, run.stderr
    assert "Traceback" not in run.stderr
    out = run.out_path.read_bytes()
    assert b'"type":"record"' in out, run.stderr  # the sink the edit added got data


# -- running and the final flush --------------------------------------------------------------


def test_sigterm_while_running_flushes_and_summarises(tmp_path, runs):
    cfg = config(tmp_path, {"out": {"type": "stdout"}})
    run = runs(tmp_path, cfg, environ())
    run.feed(LINE * 5)
    # the five lines go through (the source flushes when input pauses): 3 metadata
    # envelopes (the publishing machines) and 5 records; then the signal, not before
    wait_for(lambda: run.stdout_lines() == 8, run.proc)
    took = run.signal_and_time_exit(signal.SIGTERM)
    assert took < START_UP_BOUND, run.stderr
    assert run.proc.returncode == 0, run.stderr
    assert "input: 5 items" in run.stderr
    assert "sink 'out': 8 accepted, 8 delivered" in run.stderr


def test_sigterm_during_a_final_flush_that_never_returns(hang_site, tmp_path, runs):
    # each sink flushes on its own worker: the bound is the longest flush timeout
    sinks = {
        "stuck": hang_sink(tmp_path, "flush", flush_timeout=1),
        "ok": {"type": "stdout", "flush_timeout": 1},
    }
    run = runs(tmp_path, config(tmp_path, sinks), environ(hang_site))
    run.feed(LINE * 3, close=True)  # end of input: the final flush begins, and hangs
    wait_for(reached(tmp_path, "flush"), run.proc)
    took = run.signal_and_time_exit(signal.SIGTERM)
    err = run.stderr
    assert took < 2 + START_UP_BOUND, err
    # the sink's worker gives up on it at its flush_timeout, or the signal gives up waiting
    gave_up = "gave up waiting" in err or "did not finish within its flush_timeout" in err
    assert gave_up and "sink 'stuck'" in err
    assert "input: 3 items" in err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["end of input", "SIGTERM"])
def test_a_sighup_while_the_run_stops_is_not_applied_and_says_so(hang_site, tmp_path, runs, ending):
    """The input has ended (or SIGTERM came) and the sinks are in their final flush: a
    reload would restart sinks that are being stopped, so it is not applied, and one line
    says so. Before: the SIGHUP was dropped without a word."""
    sinks = {"stuck": hang_sink(tmp_path, "flush", flush_timeout=2), "out": {"type": "stdout"}}
    cfg = config(tmp_path, sinks)
    run = runs(tmp_path, cfg, environ(hang_site))
    run.feed(LINE * 3, close=ending == "end of input")
    if ending == "SIGTERM":
        wait_for(reached(tmp_path, "write"), run.proc)
        run.proc.send_signal(signal.SIGTERM)
    wait_for(reached(tmp_path, "flush"), run.proc)  # the final flush has begun, and hangs
    config(tmp_path, {**sinks, "more": {"type": "stdout"}})  # the edit
    run.proc.send_signal(signal.SIGHUP)
    run.proc.wait(30)
    err = run.stderr
    assert err.count("reload requested while stopping: not applied") == 1, err
    assert "reload applied" not in err and "sink 'more'" not in err, err
    assert "input: 3 items" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_sighup_as_the_input_ends_is_applied_or_said_not_to_be(tmp_path, runs):
    """A SIGHUP and the end of input at the same moment: whichever comes first, the edit
    is applied (the run is still delivering) or one line says it is not; never silence."""
    sinks = {"out": {"type": "stdout"}}
    cfg = config(tmp_path, sinks)
    run = runs(tmp_path, cfg, environ())
    run.feed(LINE * 3)
    wait_for(lambda: run.stdout_lines() == 6, run.proc)  # 3 metadata, 3 records
    config(tmp_path, {**sinks, "more": {"type": "stdout"}})  # the edit
    run.proc.send_signal(signal.SIGHUP)
    run.feed(b"", close=True)
    assert run.proc.wait(30) == 0, run.stderr
    err = run.stderr
    applied = err.count("reload applied")
    refused = err.count("reload requested while stopping: not applied")
    assert applied + refused == 1, err


def test_a_second_signal_stops_waiting_at_once(hang_site, tmp_path, runs):
    sinks = {"stuck": hang_sink(tmp_path, "flush", flush_timeout=300)}
    run = runs(tmp_path, config(tmp_path, sinks), environ(hang_site))
    run.feed(LINE * 2)
    wait_for(reached(tmp_path, "write"), run.proc)
    run.proc.send_signal(signal.SIGTERM)  # stops the input; the final flush hangs
    wait_for(reached(tmp_path, "flush"), run.proc)
    time.sleep(0.3)
    took = run.signal_and_time_exit(signal.SIGTERM)
    err = run.stderr
    assert took < START_UP_BOUND, err  # not the 300 s flush timeout
    assert "SIGTERM received again" in err
    assert "input: 2 items" in err
