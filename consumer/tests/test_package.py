"""The deployment zip: built by one command, complete on its own, importable by Lambda."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from .conftest import CONSUMER_DIR
from .producer import kinesis_event

LAMBDA_ZIP_LIMIT = 50 * 1024 * 1024  # direct upload limit for a zipped deployment package


def build(output: Path) -> Path:
    subprocess.run(
        ["make", "-C", str(CONSUMER_DIR), "zip", f"ZIP={output}", f"PYTHON={sys.executable}"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return output


@pytest.mark.slow
def test_make_zip_builds_a_package_whose_handler_imports_and_runs_from_the_unzipped_folder(
    tmp_path, tables, produced, aws_env
):
    archive = build(tmp_path / "spark-consumer.zip")
    assert archive.stat().st_size < LAMBDA_ZIP_LIMIT
    unzipped = tmp_path / "task"  # Lambda unzips to /var/task and puts it first on sys.path
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        zf.extractall(unzipped)
    assert "spark_consumer/handler.py" in names
    assert "spark_consumer/poller.py" not in names  # a local tool only
    assert not [n for n in names if "__pycache__" in n]
    assert not [n for n in names if n.startswith("boto3/")]  # the Lambda runtime has it
    # zstd records need zstandard's C backend, built for the Lambda runtime's Python (so it
    # cannot be imported by this interpreter unless they are the same version)
    assert [n for n in names if n.startswith("zstandard/backend_c.cpython-312-")]

    event = tmp_path / "event.json"
    event.write_text(json.dumps(kinesis_event(produced.envelopes)))
    script = textwrap.dedent(
        """\
        import importlib, json, sys
        sys.path.insert(0, sys.argv[1])
        from spark_consumer.handler import lambda_handler
        origins = {
            name: importlib.import_module(name).__file__
            for name in ("spark_consumer", "aws_lambda_powertools", "aws_kinesis_agg",
                         "google.protobuf", "six", "jmespath")
        }
        response = lambda_handler(json.load(open(sys.argv[2])), None)
        print(json.dumps({"origins": origins, "response": response}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-s", "-c", script, str(unzipped), str(event)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**aws_env, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, origin in result["origins"].items():
        assert Path(origin).is_relative_to(unzipped), f"{name} was imported from {origin}"
    assert result["response"] == {"batchItemFailures": []}
    assert tables.scan(TableName="SparkData")["Count"] == len(produced.records)


@pytest.mark.slow
def test_the_zip_is_reproducible(tmp_path):
    first = build(tmp_path / "a" / "spark-consumer.zip").read_bytes()
    second = build(tmp_path / "b" / "spark-consumer.zip").read_bytes()
    assert first == second
