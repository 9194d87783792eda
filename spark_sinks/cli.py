"""The ``spark-sinks`` command. Every error reaches the user through ``main``:
one line on stderr, no traceback, and an exit code that means something:

0 everything accepted was delivered; 1 something was not delivered or a sink
could not start; 2 bad config or usage; 3 delivered, but some input was rejected.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from . import __version__, logs, startup  # noqa: F401  (startup: before any config model)
from .config import Config, load_config
from .errors import ConfigError, SparkSinksError
from .metrics import check_operations
from .plugins import LOAD_ENV, Provided, Registry, load_registry
from .runtime import EXIT_CONFIG, Report, Runtime, path_problems, start_sink, stop_sink
from .sink import describe, lost_anything
from .supervisor import CheckSupervisor, Phase, Supervisor

log = logging.getLogger("spark_sinks")
F = TypeVar("F", bound=Callable[..., Any])

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SPARK_SINKS_CONFIG",
    required=True,
    help="YAML config file (or SPARK_SINKS_CONFIG).",
)


def _load(path: Path) -> tuple[Config, Registry]:
    # only the plugins the config names: importing one can cost more than the rest of a start
    registry = load_registry(everything=False)
    return load_config(path, registry), registry


LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
LOG_FORMATS = click.Choice(["text", "json"])


def _relog(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--log-level``/``--log-format`` given after the subcommand: they override the
    global ones (kept in the root context's ``meta``)."""
    if value is None:
        return
    settings = ctx.find_root().meta.setdefault("log", {"level": "INFO", "fmt": "text"})
    settings["level" if param.name == "log_level" else "fmt"] = value
    logs.setup(settings["level"], settings["fmt"])


def log_options(command: F) -> F:
    """The global logging options, accepted after the subcommand too."""
    for name, choice in (("--log-format", LOG_FORMATS), ("--log-level", LOG_LEVELS)):
        command = click.option(
            name,
            type=choice,
            expose_value=False,
            callback=_relog,
            help="As before the subcommand (see spark-sinks --help).",
        )(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spark-sinks")
@click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True)
@click.option("--log-format", type=LOG_FORMATS, default="text", show_default=True)
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """Deliver industrial machine data (Spark records and metadata) to sinks."""
    ctx.meta["log"] = {"level": log_level, "fmt": log_format}
    logs.setup(log_level, log_format)


@cli.command()
@CONFIG_OPTION
@log_options
def run(config_path: Path) -> None:
    """Run until the source ends or SIGINT/SIGTERM arrives, then flush and close every sink."""

    def body(sup: Supervisor) -> Report:  # on the pipeline thread
        config, registry = _load(config_path)
        runtime = Runtime(config, registry)
        sup.adopt(runtime)
        runtime.start()
        # Start-up objects live as long as the process: keep them out of every later collection.
        gc.freeze()
        gc.enable()
        sup.phase = Phase.RUNNING
        return runtime.run()

    sup = Supervisor(body, summarise)
    sup.install()  # before anything is loaded: every phase honours the first signal
    report = sup.run()
    summarise(report)
    sys.exit(report.exit_code)


def summarise(report: Report) -> None:
    """The run's last lines: the input, then one line per sink."""
    log.info(
        "input: %d items, %d envelopes assembled, %d rejected, %d incomplete records dropped, "
        "%d incomplete records emitted, %d items of disabled machines ignored",
        report.items,
        report.envelopes,
        report.rejected,
        report.incomplete_dropped,
        report.incomplete_emitted,
        report.ignored,
    )
    if report.source:
        counts = ", ".join(f"{n} {name}" for name, n in report.source.items())
        log.info("source: %s", counts)
    for name, s in report.sinks.items():
        why = report.not_started.get(name)
        head = f"sink {name!r} not started: {why};" if why else f"sink {name!r}:"
        line = f"{head} {describe(s)}"
        if not lost_anything(s):
            (log.warning if why else log.info)("%s", line)
            continue
        error = f"; last error: {s['last_error']}" if s.get("last_error") and not why else ""
        log.error("%s%s", line, error)


@cli.command()
@CONFIG_OPTION
@log_options
def check(config_path: Path) -> None:
    """Validate the config, and run the source's and each enabled sink's connection check.

    Exits 0 when every check passed, 1 when one failed, 2 for a bad config; a first
    SIGINT/SIGTERM ends it at once with one line and 128 + the signal's number."""
    sys.exit(CheckSupervisor().run(lambda sup: _check(config_path, sup)))


def _check(config_path: Path, sup: CheckSupervisor) -> int:
    """The checks, on their own thread: the config and operations, then each sink."""
    config, _ = _load(config_path)
    ops = check_operations(config.operations)
    problems = ops.problems + path_problems(config)
    if problems:
        raise ConfigError(f"{config_path}: {'; '.join(problems)}")
    click.echo(f"config: ok ({len(config.machines)} machines, source {config.source.type})")
    if ops.notes:
        click.echo(f"operations: ok ({'; '.join(ops.notes)})")
    if log.getEffectiveLevel() >= logging.INFO:
        # Each verdict is printed below, once; a sink's own INFO line would repeat it.
        logging.getLogger("spark_sinks.sink").setLevel(logging.WARNING)
    failed = _check_source(config, sup)
    for spec in config.sinks.values():
        if not spec.config.enabled:
            click.echo(f"sink {spec.name}: disabled")
            continue
        sup.doing = f"checking sink {spec.name!r} (open and connection check)"
        try:
            active = start_sink(spec, config.host, probe=True)
        except SparkSinksError as exc:
            failed += 1
            click.echo(logs.redact(f"sink {spec.name}: FAILED: {exc}"))
            continue
        stop_sink(active)
        detail = "" if active.checked == "ok" else f" ({active.checked})"
        click.echo(logs.redact(f"sink {spec.name}: ok{detail}"))
    return 1 if failed else 0


def _check_source(config: Config, sup: CheckSupervisor) -> int:
    """The source's own check, when it has one (``Source.check``): 1 when it failed."""
    kind = config.source.type
    sup.doing = f"checking source {kind!r} (connection check)"
    try:
        result = config.source_type.cls(config.source, config.machines).check()
    except SparkSinksError as exc:
        click.echo(logs.redact(f"source {kind}: FAILED: {exc}"))
        return 1
    except Exception as exc:  # a plugin's bug: one line, as for a sink that fails to start
        click.echo(
            logs.redact(f"source {kind}: FAILED: the check raised {type(exc).__name__}: {exc}")
        )
        return 1
    if result is not None:
        click.echo(logs.redact(f"source {kind}: ok ({result})"))
    return 0


@cli.command()
@CONFIG_OPTION
@log_options
def status(config_path: Path) -> None:
    """Is data flowing? Reads the status file of a running `spark-sinks run`.

    Exit 0 when every sink of a live run flows; 1 otherwise (stalled, losing envelopes,
    a stale or damaged file, the run has exited, or no status_file is configured)."""
    config, _ = _load(config_path)
    path = config.operations.status_file
    if path is None:
        raise SparkSinksError(
            f"{config_path}: operations.status_file is not set, so no run writes a status; "
            "set it and restart the run"
        )
    from .status import read_status, verdict  # here: its pydantic models cost every run

    result = verdict(read_status(path))
    for i, line in enumerate(result.lines):
        click.echo(line if i == 0 else f"  {line}")
    sys.exit(0 if result.ok else 1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@log_options
def plugins(as_json: bool) -> None:
    """List installed plugins, their hooks, and the sink and source types they provide.

    Exits 1 when a plugin is broken (failed to load or raised in a hook)."""
    registry = load_registry()
    rows = _plugin_rows(registry)
    if as_json:
        click.echo(orjson.dumps({"plugins": rows, "broken": registry.broken}).decode())
        sys.exit(1 if registry.broken else 0)
    _print_plugins(rows, registry)
    if registry.broken:
        loaded = ",".join(
            r["name"] for r in rows if r["distribution"] and r["name"] not in registry.broken
        )
        click.echo(
            f"To start without a broken plugin, list the plugins to load: "
            f"{LOAD_ENV}={loaded or '<names>'}",
            err=True,
        )
        sys.exit(1)


def _plugin_rows(registry: Registry) -> list[dict[str, Any]]:
    """One row per loaded plugin, as ``plugins --json`` prints them."""

    def provided(kinds: dict[str, Provided], plugin: str) -> list[str]:
        return sorted(k for k, v in kinds.items() if v.plugin.name == plugin)

    return [
        {
            "name": p.name,
            "distribution": p.distribution,
            "version": p.version,
            "hooks": list(p.hooks),
            "sink_types": provided(registry.sink_types, p.name),
            "source_types": provided(registry.source_types, p.name),
        }
        for p in registry.plugins
    ]


def _print_plugins(rows: list[dict[str, Any]], registry: Registry) -> None:
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "built into core"
        click.echo(f"{r['name']} ({dist})")
        if r["sink_types"]:
            click.echo(f"  sink types:   {', '.join(r['sink_types'])}")
        if r["source_types"]:
            click.echo(f"  source types: {', '.join(r['source_types'])}")
        click.echo(f"  hooks:        {', '.join(r['hooks'])}")
    for name, why in registry.broken.items():
        click.echo(
            f"{name} ({registry.distribution(name) or 'unknown distribution'}): BROKEN: {why}"
        )


def main() -> None:
    # Imports and config build many long-lived objects; collecting cycles among them is
    # wasted start-up time (about 40 ms of 0.34 s). `run` re-enables it once started.
    gc.disable()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_CONFIG if exc.exit_code == 2 else exc.exit_code)
    except SparkSinksError as exc:
        click.echo(f"spark-sinks: error: {logs.redact(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line, with where to look
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
        click.echo(
            f"spark-sinks: internal error: {type(exc).__name__}: {logs.redact(str(exc))}{where}"
            " (run with --log-level DEBUG and report it)",
            err=True,
        )
        log.debug("traceback", exc_info=True)
        sys.exit(70)
