"""template.yaml: valid for cfn-lint, least privilege, the mapping Lambda needs for partial
batch failures, and a stack that (deployed on the moto server) actually works with the code."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml
from spark_consumer import store
from spark_consumer.poller import Poller

from .conftest import CONSUMER_DIR
from .test_package import build

TEMPLATE = CONSUMER_DIR / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn_yaml.loads(TEMPLATE.read_text())


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


@pytest.mark.slow
def test_cfn_lint_reports_nothing():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    done = subprocess.run(
        [str(cfn_lint), "--format", "parseable", str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # no error, warning or info
    assert done.stdout.strip() == ""


def test_it_creates_the_stream_both_tables_the_function_and_its_mapping(template):
    assert len(resources(template, "AWS::Kinesis::Stream")) == 1
    assert len(resources(template, "AWS::DynamoDB::Table")) == 2
    assert len(resources(template, "AWS::Lambda::Function")) == 1
    assert len(resources(template, "AWS::Lambda::EventSourceMapping")) == 1


def test_the_tables_have_the_keys_the_consumer_writes_and_the_original_names(template):
    tables = template["Resources"]
    data, metadata = tables["DataTable"]["Properties"], tables["MetadataTable"]["Properties"]
    for props, schema in ((data, store.DATA_TABLE_SCHEMA), (metadata, store.METADATA_TABLE_SCHEMA)):
        assert props["KeySchema"] == schema["KeySchema"]
        assert props["AttributeDefinitions"] == schema["AttributeDefinitions"]
    params = template["Parameters"]
    assert params["DataTableName"]["Default"] == store.DEFAULT_DATA_TABLE == "SparkData"
    assert params["MetadataTableName"]["Default"] == store.DEFAULT_METADATA_TABLE


def test_the_function_runs_the_handler_with_table_names_from_its_environment(template):
    (function,) = resources(template, "AWS::Lambda::Function").values()
    props = function["Properties"]
    module, name = props["Handler"].rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name))
    assert props["Environment"]["Variables"]["DATA_TABLE_NAME"] == {"Ref": "DataTable"}
    assert props["Environment"]["Variables"]["METADATA_TABLE_NAME"] == {"Ref": "MetadataTable"}
    assert props["Environment"]["Variables"]["WRITE_CONCURRENCY"] == {"Ref": "WriteConcurrency"}
    # the zip is built for the runtime and architecture the function declares
    makefile = (CONSUMER_DIR / "Makefile").read_text()
    version = re.search(r"^LAMBDA_PYTHON \?= (\S+)", makefile, re.M).group(1)
    platform = re.search(r"^LAMBDA_PLATFORM \?= (\S+)", makefile, re.M).group(1)
    assert props["Runtime"] == f"python{version}"
    assert platform.endswith(props["Architectures"][0])


def test_the_mapping_reports_partial_failures_bisects_and_bounds_retries(template):
    (mapping,) = resources(template, "AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BisectBatchOnFunctionError"] is True
    retries = template["Parameters"][props["MaximumRetryAttempts"]["Ref"]]
    assert 0 <= retries["Default"] <= retries["MaxValue"] <= 10000
    assert props["MaximumRecordAgeInSeconds"] > 0
    assert props["EventSourceArn"] == {"Fn::GetAtt": ["Stream", "Arn"]}
    assert props["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["FailureQueue", "Arn"]
    }


def test_the_function_role_has_least_privilege(template):
    role = template["Resources"]["FunctionRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    granted: dict[str, list[Any]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        targets = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        assert "*" not in json.dumps(actions) and "*" not in json.dumps(targets)
        for action in actions:
            granted.setdefault(action, []).extend(targets)
    tables = [{"Fn::GetAtt": ["DataTable", "Arn"]}, {"Fn::GetAtt": ["MetadataTable", "Arn"]}]
    assert granted["dynamodb:PutItem"] == tables
    assert granted["dynamodb:UpdateItem"] == tables
    assert {a for a in granted if a.startswith("dynamodb:")} == {
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    }
    kinesis = {a for a in granted if a.startswith("kinesis:")}
    assert kinesis <= {
        "kinesis:DescribeStream",
        "kinesis:DescribeStreamSummary",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
    }
    assert {"kinesis:GetRecords", "kinesis:GetShardIterator"} <= kinesis
    assert all(granted[a] == [{"Fn::GetAtt": ["Stream", "Arn"]}] for a in kinesis)


@pytest.mark.slow
def test_the_stack_deployed_on_moto_stores_what_reaches_its_stream(
    moto, aws_env, monkeypatch, tmp_path, produced
):
    moto.reset()
    archive = build(tmp_path / "spark-consumer.zip")
    s3 = moto.client("s3")
    s3.create_bucket(Bucket="deploy")
    s3.upload_file(str(archive), "deploy", "spark-consumer.zip")
    cloudformation = moto.client("cloudformation")
    cloudformation.create_stack(
        StackName="spark",
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[
            {"ParameterKey": "CodeS3Bucket", "ParameterValue": "deploy"},
            {"ParameterKey": "CodeS3Key", "ParameterValue": "spark-consumer.zip"},
            {"ParameterKey": "DataTableName", "ParameterValue": "plant-data"},
            {"ParameterKey": "MetadataTableName", "ParameterValue": "plant-metadata"},
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cloudformation.describe_stacks(StackName="spark")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    function = moto.client("lambda").get_function_configuration(
        FunctionName=outputs["FunctionName"]
    )
    for key, value in function["Environment"]["Variables"].items():
        monkeypatch.setenv(key, str(value))  # the handler set up as the deployed function
    module, name = function["Handler"].rsplit(".", 1)
    handler = getattr(importlib.import_module(module), name)

    kinesis = moto.client("kinesis")
    for raw in produced.envelopes:
        obj = json.loads(raw)
        machine = obj["data"].get("machine") or obj["data"]["info"]["name"]
        kinesis.put_record(StreamName=outputs["StreamName"], Data=raw, PartitionKey=f"gw/{machine}")
    Poller(kinesis, outputs["StreamName"], handler).drain()

    dynamodb = moto.client("dynamodb")
    assert outputs["DataTableName"] == "plant-data"
    assert dynamodb.scan(TableName="plant-data")["Count"] == len(produced.records)
    assert dynamodb.scan(TableName="plant-metadata")["Count"] == len(produced.metadata)
