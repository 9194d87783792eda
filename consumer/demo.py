"""The whole pipeline on this machine, in one command (`make demo`, or `python consumer/demo.py`).

machines (spark-sinks' simulator) -> spark-sinks -> Kinesis -> the Lambda handler -> DynamoDB

1. starts a moto server (AWS's APIs, locally, over HTTP);
2. builds the deployment zip and deploys template.yaml on it, as `make deploy` does on AWS:
   stream, tables, function, event source mapping;
3. runs `spark-sinks run` with demo.yaml: simulated machines into the stack's stream;
4. runs the local runner (spark_consumer.poller) with the deployed function's settings: every
   shard's records go to the Lambda handler, which writes the tables;
5. prints what the tables hold, then stops the server (or keeps it with --keep).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **FAKE_AWS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("moto server did not start within 30 s")


def deploy(stack: str, workdir: Path) -> dict[str, str]:
    import boto3
    from build_zip import build

    archive = build(workdir / "spark-consumer.zip", "3.12", "manylinux2014_x86_64")
    print(f"built {archive.name} ({archive.stat().st_size / 1e6:.1f} MB)")
    boto3.client("s3").create_bucket(Bucket="spark-demo-code")
    boto3.client("s3").upload_file(str(archive), "spark-demo-code", "spark-consumer.zip")
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(
        StackName=stack,
        TemplateBody=(HERE / "template.yaml").read_text(),
        Parameters=[
            {"ParameterKey": "CodeS3Bucket", "ParameterValue": "spark-demo-code"},
            {"ParameterKey": "CodeS3Key", "ParameterValue": "spark-consumer.zip"},
            {"ParameterKey": "ShardCount", "ParameterValue": "2"},
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    cloudformation.get_waiter("stack_create_complete").wait(
        StackName=stack, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    outputs = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]
    result = {o["OutputKey"]: o["OutputValue"] for o in outputs}
    for key in ("StreamName", "DataTableName", "MetadataTableName", "FunctionName"):
        print(f"  {key:18} {result[key]}")
    return result


def produce(stream: str, endpoint: str, cycles: int) -> None:
    cli = Path(sys.executable).with_name("spark-sinks")
    env = {
        **os.environ,
        "DEMO_STREAM": stream,
        "DEMO_ENDPOINT": endpoint,
        "DEMO_CYCLES": str(cycles),
    }
    subprocess.run([str(cli), "run", "-c", str(HERE / "demo.yaml")], env=env, check=True)


def consume(outputs: dict[str, str]) -> None:
    import boto3
    from spark_consumer.handler import lambda_handler
    from spark_consumer.poller import Poller

    function = boto3.client("lambda").get_function_configuration(
        FunctionName=outputs["FunctionName"]
    )
    # as the deployed function has it (moto may hand back a Number parameter as a number)
    os.environ.update({k: str(v) for k, v in function["Environment"]["Variables"].items()})
    print(f"handler {function['Handler']}, environment {function['Environment']['Variables']}")
    stats = Poller(boto3.client("kinesis"), outputs["StreamName"], lambda_handler).drain()
    print(
        f"{stats.records} Kinesis records delivered in {stats.invocations} invocations, "
        f"{stats.retries} retries, {len(stats.given_up)} given up"
    )


def summary(outputs: dict[str, str]) -> int:
    import boto3
    from boto3.dynamodb.conditions import Key

    dynamodb = boto3.resource("dynamodb")
    metadata = dynamodb.Table(outputs["MetadataTableName"]).scan()["Items"]
    data = dynamodb.Table(outputs["DataTableName"])
    print(f"{outputs['MetadataTableName']}: {len(metadata)} machines")
    total = 0
    for item in sorted(metadata, key=lambda i: i["pk"]):
        history = data.query(KeyConditionExpression=Key("pk").eq(item["pk"]))["Items"]
        total += len(history)
        described = item["info"].get("description") or item["info"].get("hpl", "")
        print(f"  {item['pk']:24} {described!s:18} variables: {', '.join(item['variables'])}")
        if history:
            last = history[-1]
            values = ", ".join(f"{k}={v['value']}" for k, v in last["attributes"].items())
            print(
                f"    {len(history)} records {history[0]['time']} .. {last['time']}; "
                f"latest: {values}"
            )
    print(f"{outputs['DataTableName']}: {total} records")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10, help="simulator cycles (default 10)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the moto server running until Ctrl-C"
    )
    args = parser.parse_args()

    step("starting a local AWS (moto server)")
    proc, endpoint = start_moto()
    os.environ.update(FAKE_AWS)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    print(f"moto server at {endpoint}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            step("deploying consumer/template.yaml (stream, tables, function, mapping)")
            outputs = deploy("spark-demo", Path(tmp))
        step(f"spark-sinks: {args.cycles} simulator cycles -> Kinesis {outputs['StreamName']}")
        produce(outputs["StreamName"], endpoint, args.cycles)
        step("local runner: every shard -> Lambda handler -> DynamoDB")
        consume(outputs)
        step("DynamoDB")
        stored = summary(outputs)
        if args.keep:
            print(
                f"\nThe server stays up: AWS_ENDPOINT_URL={endpoint} aws dynamodb scan "
                f"--table-name {outputs['DataTableName']}   (Ctrl-C to stop)"
            )
            with contextlib.suppress(KeyboardInterrupt):
                proc.wait()
        return 0 if stored else 1
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
