"""Config validation (exit code 2, one readable line) and start-up checks against the
endpoint (stream not found, bad credentials, access denied, endpoint unreachable)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kinesis_helpers import (
    cli_env,
    config,
    edit_sink,
    moto_auth,
    read_stream,
    records_ndjson,
    run_cli,
)
from spark_sinks_kinesis import KinesisConfig

from spark_sinks import ConfigError
from spark_sinks.config import load_config
from spark_sinks.plugins import load_registry
from tests.support.moto_server import free_port

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _config_with(tmp_path: Path, **sink) -> Path:
    return edit_sink(config(tmp_path / "c.yaml", "s", "http://127.0.0.1:9"), **sink)


def _one_line_error(proc) -> str:  # type: ignore[no-untyped-def]
    err = proc.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ("mars-north-1", 'sinks.cloud.region: "mars-north-1" is not an AWS region'),
        ("", "sinks.cloud.region: must not be empty"),
        ("   ", "sinks.cloud.region: must not be empty"),
        (None, "sinks.cloud.region: required key is missing"),
    ],
)
def test_a_bad_empty_or_missing_region_refuses_to_start_with_exit_2(tmp_path, region, message):
    cfg = _config_with(tmp_path, region=region)  # None removes the key
    proc = run_cli("run", "-c", str(cfg), input=b"")
    assert proc.returncode == 2
    assert message in _one_line_error(proc)


@pytest.mark.slow
def test_a_missing_or_invalid_stream_name_refuses_to_start_with_exit_2(tmp_path):
    proc = run_cli("check", "-c", str(_config_with(tmp_path, stream_name=None)))
    assert proc.returncode == 2
    assert "sinks.cloud.stream_name: required key is missing" in _one_line_error(proc)
    proc = run_cli("check", "-c", str(_config_with(tmp_path, stream_name="no spaces!")))
    assert proc.returncode == 2
    assert 'sinks.cloud.stream_name: "no spaces!" is not a valid Kinesis stream name' in (
        _one_line_error(proc)
    )


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("us-east-1", "us-east-1"),
        ("US East (N. Virginia)", "us-east-1"),
        ("eu (ireland)", "eu-west-1"),
        ("South America (São Paulo)", "sa-east-1"),
        ("Asia Pacific (Osaka-Local)", "ap-northeast-3"),
        ("China (Beijing)", "cn-north-1"),
        ("us-gov-west-1", "us-gov-west-1"),
        (" EU-CENTRAL-1 ", "eu-central-1"),
    ],
)
def test_region_codes_and_the_original_ui_names_are_accepted(given, code):
    cfg = KinesisConfig(type="kinesis", stream_name="s", region=given)
    assert cfg.region == code


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"access_key_id": "AKIAX"}, "access_key_id and secret_access_key must be given together"),
        ({"secret_access_key": SECRET}, "must be given together"),
        ({"session_token": "tok-123456"}, "session_token needs access_key_id"),
        (
            {"profile": "p", "access_key_id": "AKIAX", "secret_access_key": SECRET},
            "either profile or access_key_id",
        ),
        ({"max_batch_records": 501}, "max_batch_records: Input should be less than or equal"),
        ({"max_record_bytes": 11 * 1024 * 1024}, "max_record_bytes"),
        ({"endpoint_url": "localhost:5000"}, '"localhost:5000" is not an http:// or https:// URL'),
        ({"linger_ms": -1}, "linger_ms"),
    ],
)
def test_inconsistent_settings_name_the_key_and_never_echo_the_secret(tmp_path, fields, message):
    cfg = _config_with(tmp_path, **fields)
    with pytest.raises(ConfigError) as err:
        load_config(cfg, load_registry())
    assert err.value.exit_code == 2
    assert message in str(err.value)
    assert "sinks.cloud" in str(err.value)
    assert SECRET not in str(err.value)


# -- against the endpoint -------------------------------------------------------------------


def test_check_reports_a_missing_stream(tmp_path, moto):
    proc = run_cli("check", "-c", str(config(tmp_path / "c.yaml", "no-such-stream", moto.url)))
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "sink cloud: FAILED" in out
    assert "Kinesis stream 'no-such-stream' in us-east-1 not found" in out


def test_run_refuses_to_start_when_the_endpoint_is_unreachable(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    cfg = config(tmp_path / "c.yaml", "s", url, connect_timeout=1)
    proc = run_cli("run", "-c", str(cfg), input=b"")
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert f"cannot reach the Kinesis endpoint {url}" in line


@pytest.mark.slow
def test_check_reports_bad_credentials_and_access_denied_without_leaking_the_secret(
    tmp_path, moto, make_stream
):
    stream = make_stream(1)
    iam = moto.client("iam")
    iam.create_user(UserName="no-rights")
    key = iam.create_access_key(UserName="no-rights")["AccessKey"]
    try:
        with moto_auth(moto.url):
            bad = config(
                tmp_path / "bad.yaml",
                stream,
                moto.url,
                access_key_id="AKIAUNKNOWNKEY000000",
                secret_access_key=SECRET,
            )
            proc = run_cli("check", "-c", str(bad))
            out = (proc.stdout + proc.stderr).decode()
            assert proc.returncode == 1
            assert "AWS rejected the credentials" in out
            assert SECRET not in out

            denied = config(
                tmp_path / "denied.yaml",
                stream,
                moto.url,
                access_key_id=key["AccessKeyId"],
                secret_access_key=key["SecretAccessKey"],
            )
            proc = run_cli("check", "-c", str(denied))
            out = (proc.stdout + proc.stderr).decode()
            assert proc.returncode == 1
            assert f"access denied to Kinesis stream {stream!r}" in out
            assert key["SecretAccessKey"] not in out
    finally:
        iam.delete_access_key(UserName="no-rights", AccessKeyId=key["AccessKeyId"])
        iam.delete_user(UserName="no-rights")


@pytest.mark.slow
def test_a_profile_from_the_shared_files_is_used_and_a_missing_one_is_named(
    tmp_path, moto, make_stream
):
    stream = make_stream(1)
    creds = tmp_path / "credentials"
    creds.write_text("[spark]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = sekret1\n")
    env = cli_env(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(tmp_path / "none"))
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k)
    ok = config(tmp_path / "ok.yaml", stream, moto.url, profile="spark")
    proc = run_cli("check", "-c", str(ok), env=env)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()

    missing = config(tmp_path / "missing.yaml", stream, moto.url, profile="nope")
    proc = run_cli("check", "-c", str(missing), env=env)
    assert proc.returncode == 1
    assert "AWS profile 'nope' is not in the shared config or credentials file" in (
        proc.stdout.decode()
    )


def test_no_credentials_anywhere_gives_a_clear_message(tmp_path, moto):
    env = cli_env(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k)
    proc = run_cli("check", "-c", str(config(tmp_path / "c.yaml", "s", moto.url)), env=env)
    assert proc.returncode == 1
    assert "no AWS credentials found" in proc.stdout.decode()


# -- stream_arn -------------------------------------------------------------------------------

ARN = "arn:aws:kinesis:eu-west-1:123456789012:stream/plant-data"


def test_a_stream_arn_stands_for_the_stream_name_and_gives_the_region():
    cfg = KinesisConfig(type="kinesis", stream_arn=ARN)
    assert (cfg.stream_name, cfg.region) == ("plant-data", "eu-west-1")
    assert cfg.stream == {"StreamARN": ARN}
    same = KinesisConfig(type="kinesis", stream_arn=ARN, region="EU (Ireland)")
    assert same.region == "eu-west-1"
    assert KinesisConfig(type="kinesis", stream_name="s", region="eu-west-1").stream == {
        "StreamName": "s"
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"stream_arn": ARN},  # stream_name stays: both given
            "sinks.cloud: give either stream_name or stream_arn, not both",
        ),
        (
            {"stream_name": None, "stream_arn": ARN, "region": "us-east-1"},
            # the region taken from the ARN is not a value of the input: JSON all the same
            'sinks.cloud: region "us-east-1" differs from the region of stream_arn ("eu-west-1")',
        ),
        (
            {"stream_name": None, "stream_arn": "arn:aws:kinesis:eu-west-1:123:stream/x"},
            'sinks.cloud.stream_arn: "arn:aws:kinesis:eu-west-1:123:stream/x" is not a Kinesis '
            "stream ARN",
        ),
        (
            {"stream_name": None, "stream_arn": ARN.replace("stream/", "table/")},
            "is not a Kinesis stream ARN",
        ),
        (
            {"stream_name": None, "stream_arn": ARN.replace("eu-west-1", "mars-1")},
            "sinks.cloud.stream_arn: the region in",
        ),
        (
            {"stream_name": None, "stream_arn": ARN.replace("plant-data", "bad name!")},
            "is not a Kinesis stream ARN",
        ),
    ],
)
def test_stream_arn_mistakes_are_one_line_naming_the_key(tmp_path, fields, message):
    proc = run_cli("check", "-c", str(_config_with(tmp_path, **fields)))
    assert proc.returncode == 2
    assert message in _one_line_error(proc)


def test_a_run_by_stream_arn_delivers_every_record(tmp_path, moto, kinesis, make_stream):
    stream = make_stream(2)
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    cfg = _config_with(
        tmp_path, stream_name=None, region=None, stream_arn=arn, endpoint_url=moto.url
    )
    lines = records_ndjson(tmp_path / "in.ndjson", 50).read_bytes()
    proc = run_cli("run", "-c", str(cfg), input=lines)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "54 accepted, 54 delivered" in proc.stderr.decode()
    got = read_stream(kinesis, stream)
    assert sum(r["envelope"]["type"] == "record" for r in got) == 50


# -- role, proxy, CA, endpoints ----------------------------------------------------------------

PROXY_PASSWORD = "Pr0xyS3cret"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"role_arn": "arn:aws:iam::12345:role/x"},
            'sinks.cloud.role_arn: "arn:aws:iam::12345:role/x" is not an IAM role ARN',
        ),
        (
            {"role_arn": "arn:aws:iam::123456789012:user/x"},
            'sinks.cloud.role_arn: "arn:aws:iam::123456789012:user/x" is not an IAM role ARN',
        ),
        (
            {"role_arn": "arn:aws:iam::123456789012:role/x", "duration_seconds": 899},
            "sinks.cloud.duration_seconds: Input should be greater than or equal to 900",
        ),
        (
            {"role_arn": "arn:aws:iam::123456789012:role/x", "duration_seconds": 43201},
            "sinks.cloud.duration_seconds: Input should be less than or equal to 43200",
        ),
        (
            {"role_arn": "arn:aws:iam::123456789012:role/x", "external_id": "a b"},
            "sinks.cloud.external_id: must be 2-1224 characters",
        ),
        (
            {"role_arn": "arn:aws:iam::123456789012:role/x", "role_session_name": "x"},
            'sinks.cloud.role_session_name: "x" is not a role session name',
        ),
        (
            {"external_id": "plant-42", "duration_seconds": 900},
            "sinks.cloud: duration_seconds, external_id only apply with role_arn",
        ),
        (
            {"sts_endpoint_url": "sts.local"},
            'sinks.cloud.sts_endpoint_url: "sts.local" is not an http:// or https:// URL',
        ),
        (
            {"proxy": f"socks5://u:{PROXY_PASSWORD}@proxy:1080"},
            "sinks.cloud.proxy: is not an http:// or https:// proxy URL",
        ),
        (
            {"proxy": f"http://u:{PROXY_PASSWORD}@proxy:99999"},
            "sinks.cloud.proxy: is not an http:// or https:// proxy URL",
        ),
        (
            {"proxy": f"http://u:{PROXY_PASSWORD}@proxy:3128/path"},
            "sinks.cloud.proxy: a proxy URL has no path",
        ),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "sinks.cloud.ca_bundle: file "),
        ({"use_fips_endpoint": "maybe"}, "sinks.cloud.use_fips_endpoint: Input should be"),
    ],
)
def test_access_settings_are_checked_in_one_line_that_never_shows_a_proxy_password(
    tmp_path, fields, message
):
    with pytest.raises(ConfigError) as err:
        load_config(_config_with(tmp_path, **fields), load_registry())
    assert err.value.exit_code == 2
    line = str(err.value)
    assert message in line and "\n" not in line
    assert PROXY_PASSWORD not in line


def test_a_ca_bundle_must_hold_a_pem_certificate(tmp_path):
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    proc = run_cli("check", "-c", str(_config_with(tmp_path, ca_bundle=str(junk))))
    assert proc.returncode == 2
    assert f'sinks.cloud.ca_bundle: "{junk}" holds no PEM certificate' in _one_line_error(proc)


def test_access_settings_take_their_documented_values():
    cfg = KinesisConfig(
        type="kinesis",
        stream_name="s",
        region="us-east-1",
        role_arn="arn:aws:iam::123456789012:role/plant-writer",
        proxy=f"http://u:{PROXY_PASSWORD}@proxy.example:3128",
    )
    assert cfg.duration_seconds == 3600 and cfg.role_session_name is None
    assert cfg.proxy is not None and PROXY_PASSWORD not in repr(cfg)
    assert (cfg.use_fips_endpoint, cfg.use_dualstack_endpoint, cfg.ca_bundle) == (
        False,
        False,
        None,
    )


def test_a_record_larger_than_a_shard_takes_in_a_second_is_refused_in_one_line(tmp_path):
    cfg = _config_with(tmp_path, shard_limits={"bytes_per_second": 65536}, max_record_bytes=131072)
    proc = run_cli("run", "-c", str(cfg), input=b"")
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert "sinks.cloud" in line
    assert "max_record_bytes (131072) exceeds shard_limits.bytes_per_second (65536)" in line


def test_max_record_bytes_defaults_to_what_a_metered_shard_takes_in_a_second():
    base = dict(type="kinesis", stream_name="s", region="us-east-1")
    mib = 1024 * 1024
    small = {"bytes_per_second": 65536}
    assert KinesisConfig(**base).max_record_bytes == mib
    assert KinesisConfig(**base, shard_limits=small).max_record_bytes == 65536
    assert KinesisConfig(**base, shard_limits=small, rate_limit=False).max_record_bytes == mib
    assert KinesisConfig(**base, shard_limits={"bytes_per_second": 4 * mib}).max_record_bytes == mib
    # without the meter, nothing stops a record a shard takes only over several seconds
    assert (
        KinesisConfig(
            **base, shard_limits=small, rate_limit=False, max_record_bytes=mib
        ).max_record_bytes
        == mib
    )
