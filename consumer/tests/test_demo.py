"""`make demo`: the whole pipeline, locally, in one command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import CONSUMER_DIR


@pytest.mark.slow
def test_the_demo_runs_the_whole_pipeline_and_shows_the_stored_data():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run(
        [sys.executable, str(CONSUMER_DIR / "demo.py"), "--cycles", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SparkMetadata: 3 machines" in done.stdout
    assert "SparkData: 9 records" in done.stdout
    assert "0 given up" in done.stdout
