"""Build the Lambda deployment zip: the handler package plus its runtime dependencies.

    python build_zip.py [--output build/spark-consumer.zip] [--python-version 3.12]
                        [--platform manylinux2014_x86_64]

Dependencies come from requirements.txt as wheels for the Lambda runtime's platform (not this
machine's), so the zip is the same whichever machine builds it. The zip itself is
reproducible: sorted entries, fixed timestamps, no bytecode caches.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "spark_consumer"
# Local tools that Lambda does not need.
EXCLUDE_FROM_PACKAGE = {"poller.py"}
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def build(output: Path, python_version: str, platform: str) -> Path:
    staging = output.parent / "package"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _install_requirements(staging, python_version, platform)
    for src in sorted((HERE / PACKAGE).glob("*.py")):
        if src.name not in EXCLUDE_FROM_PACKAGE:
            (staging / PACKAGE).mkdir(exist_ok=True)
            shutil.copy2(src, staging / PACKAGE / src.name)
    output.unlink(missing_ok=True)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(staging.rglob("*")):
            rel = path.relative_to(staging)
            if path.is_dir() or "__pycache__" in rel.parts or rel.parts[0] == "bin":
                continue
            info = zipfile.ZipInfo(rel.as_posix(), FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return output


def _install_requirements(staging: Path, python_version: str, platform: str) -> None:
    """The wheels of requirements.txt for the Lambda runtime, into ``staging``."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--target",
            str(staging),
            "--platform",
            platform,
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--only-binary=:all:",
            "--upgrade",
            "-r",
            str(HERE / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"pip could not install requirements.txt for {platform}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "build" / "spark-consumer.zip")
    parser.add_argument("--python-version", default="3.12", help="the Lambda runtime's Python")
    parser.add_argument(
        "--platform",
        default="manylinux2014_x86_64",
        help="wheel platform of the Lambda architecture (arm64: manylinux2014_aarch64)",
    )
    args = parser.parse_args()
    out = build(args.output.resolve(), args.python_version, args.platform)
    print(
        f"{out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}: "
        f"{out.stat().st_size / 1e6:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
