"""Test plugin distributions, and how the tests install them.

Each directory here is a complete distribution. ``install`` pip-installs them into
directories of their own under a temporary directory, never into the running
environment (other test runs share it); a ``spark-sinks`` subprocess with those
directories on ``PYTHONPATH`` then discovers them through their entry points,
exactly as after a ``pip install``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SPARK_SINKS = str(Path(sys.executable).parent / "spark-sinks")

_installed: dict[Path, Path] = {}
_build_env: list[dict[str, str] | None] = []
PIP = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]


def _can_build(env: dict[str, str]) -> bool:
    probe = "import setuptools.command.bdist_wheel"  # setuptools>=70.1 builds wheels itself
    if importlib.util.find_spec("wheel"):
        probe = "import setuptools, wheel"
    return (
        subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0
    )


def build_env(base: Path) -> dict[str, str] | None:
    """An environment in which pip can build without an isolated build environment (which
    costs a setuptools install per build), or None to let pip isolate each build."""
    if not _build_env:
        env = dict(os.environ)
        if not _can_build(env):
            tools = base / "build-tools"
            got = subprocess.run(
                [*PIP[:-1], "--target", str(tools), "setuptools>=70.1", "wheel"],
                capture_output=True,
            )
            env["PYTHONPATH"] = str(tools)
            if got.returncode or not _can_build(env):
                env = None
        _build_env.append(env)
    return _build_env[0]


def _pip(source: Path, base: Path) -> subprocess.Popen[bytes]:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources,
    # which would race with other test runs in the same checkout.
    work = base / "src" / source.name
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests"))
    target = base / "site" / source.name
    cmd = [*PIP, "--target", str(target)]
    env = build_env(base)
    if env is not None:
        cmd.append("--no-build-isolation")
    _installed[source] = target
    return subprocess.Popen(
        [*cmd, str(work)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def install(sources: list[Path], base: Path) -> dict[str, Path]:
    """Install each distribution once per test session (in parallel); returns
    distribution directory name -> its install directory."""
    todo = [s for s in sources if s not in _installed]
    procs = [(s, _pip(s, base)) for s in todo]
    for source, proc in procs:
        out, _ = proc.communicate(timeout=180)
        if proc.returncode:
            _installed.pop(source, None)
            raise RuntimeError(f"pip install {source.name} failed:\n{out.decode()}")
    return {s.name: _installed[s] for s in sources}


def environ(*sites: Path, **extra: str) -> dict[str, str]:
    """Environment for a spark-sinks subprocess that sees exactly these installs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_SINKS_")}
    env.pop("PYTHONPATH", None)
    if sites:
        env["PYTHONPATH"] = os.pathsep.join(str(s) for s in sites)
    env.update(extra)
    return env


def spark_sinks(env: dict[str, str], *args: str, stdin: str | None = None):
    """Run the installed ``spark-sinks`` command; returns the CompletedProcess (text)."""
    return subprocess.run(
        [SPARK_SINKS, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
