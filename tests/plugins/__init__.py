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


def _pip(source: Path, base: Path) -> subprocess.Popen[bytes]:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources,
    # which would race with other test runs in the same checkout.
    work = base / "src" / source.name
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests"))
    target = base / "site" / source.name
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    if importlib.util.find_spec("wheel"):  # the environment can build offline
        cmd.append("--no-build-isolation")
    _installed[source] = target
    return subprocess.Popen([*cmd, str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


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
