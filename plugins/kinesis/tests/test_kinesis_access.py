"""Reaching a stream the way AWS users do: an assumed role (STS AssumeRole on moto, with
renewal), a stream ARN, an authenticating HTTP proxy, a private CA, FIPS and dual-stack
endpoints. The proxy and the TLS endpoint are real servers (``tests/support/netproxy.py``)
that record what they carried, so each setting is seen on the wire, not in a mock."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from kinesis_helpers import config, edit_sink, open_sink, records_ndjson, run_cli
from pydantic import ValidationError
from spark_sinks_kinesis import KinesisConfig, access

from spark_sinks import Envelope, logs
from tests.support.moto_server import MotoServer
from tests.support.netproxy import Exchange, ForwardProxy, TestCa, TlsFront
from tests.support.streams import read_stream

ROLE = "arn:aws:iam::123456789012:role/plant-writer"
PROXY_USER, PROXY_PASSWORD = "plant", "pr0xy/Pa:ss"


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path)


@pytest.fixture
def front(moto: MotoServer, ca: TestCa) -> Iterator[TlsFront]:
    """moto behind HTTPS with a certificate of the test CA."""
    with TlsFront(moto.url, ca.cert, ca.key) as f:
        yield f


@pytest.fixture
def web_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(auth=(PROXY_USER, PROXY_PASSWORD)) as p:
        yield p


def _assumed_keys(exchanges: list[Exchange]) -> list[str]:
    """Access key ids handed out by the AssumeRole answers, in order."""
    keys = []
    for e in exchanges:
        if e.operation == "AssumeRole":
            assert e.status == 200, e.answer
            text = e.answer.decode()
            keys.append(text.split("<AccessKeyId>")[1].split("</AccessKeyId>")[0])
    return keys


def _kinesis(exchanges: list[Exchange]) -> list[Exchange]:
    return [e for e in exchanges if e.headers.get("x-amz-target", "").startswith("Kinesis")]


def _no_secret(text: str) -> None:
    pair = f"{PROXY_USER}:{PROXY_PASSWORD}"
    for secret in (
        PROXY_PASSWORD,
        "pr0xy%2FPa%3Ass",
        pair,
        base64.b64encode(pair.encode()).decode(),
    ):
        assert secret not in text


def test_a_run_through_a_proxy_to_a_private_ca_endpoint_writes_with_the_assumed_role(
    tmp_path, moto, kinesis, make_stream, web_proxy, front, ca
):
    """``spark-sinks run``: every AWS call goes through the proxy (CONNECT tunnels to the
    HTTPS endpoint), TLS is verified against ``ca_bundle``, AssumeRole carries the role
    settings, and every Kinesis request is signed with the role's keys and names the
    stream by its ARN."""
    stream = make_stream(2)
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    cfg = config(
        tmp_path / "c.yaml",
        stream,
        front.url,
        role_arn=ROLE,
        external_id="plant-42",
        role_session_name="gateway-7",
        duration_seconds=900,
        sts_endpoint_url=front.url,
        proxy=web_proxy.url_with_auth,
        ca_bundle=str(ca.ca_pem),
    )
    edit_sink(cfg, stream_name=None, region=None, stream_arn=arn)
    data = records_ndjson(tmp_path / "in.ndjson", 200, machines=4)

    proc = run_cli("run", "-c", str(cfg), input=data.read_bytes())

    out = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, out[-3000:]
    assert "204 accepted, 204 delivered" in out
    _no_secret(out)
    assert len(read_stream(kinesis, stream)) == 205  # and the connection test
    # all of it went through the proxy, as tunnels to the HTTPS endpoint
    assert web_proxy.tunnels and set(web_proxy.tunnels) == {f"127.0.0.1:{front.port}"}
    assert web_proxy.exchanges == []  # nothing in clear through the proxy
    seen = front.exchanges
    (assume,) = [e for e in seen if e.operation == "AssumeRole"]
    form = assume.body.decode()
    for part in (
        "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fplant-writer",
        "ExternalId=plant-42",
        "RoleSessionName=gateway-7",
        "DurationSeconds=900",
    ):
        assert part in form
    assert assume.access_key == "testing"  # signed with the source credentials
    (role_key,) = _assumed_keys(seen)
    calls = _kinesis(seen)
    assert {e.operation for e in calls} == {"DescribeStreamSummary", "ListShards", "PutRecords"}
    assert {e.access_key for e in calls} == {role_key}
    assert all("x-amz-security-token" in e.headers for e in calls)
    assert all(f'"StreamARN": "{arn}"' in e.body.decode() or arn in e.body.decode() for e in calls)


def test_without_the_ca_bundle_the_private_endpoint_is_refused_in_one_line(
    tmp_path, moto, make_stream, front
):
    cfg = config(tmp_path / "c.yaml", make_stream(1), front.url)
    proc = run_cli("check", "-c", str(cfg))
    assert proc.returncode == 1
    out = proc.stdout.decode()
    (line,) = [ln for ln in out.splitlines() if "FAILED" in ln]
    assert "Traceback" not in proc.stderr.decode()
    assert f"the TLS certificate of {front.url} is not trusted" in line
    assert "CERTIFICATE_VERIFY_FAILED" in line and "ca_bundle" in line


def test_a_wrong_proxy_password_is_one_line_that_never_shows_the_password(
    tmp_path, moto, make_stream, web_proxy
):
    wrong = web_proxy.url_with_auth.replace("pr0xy", "wr0ng")
    cfg = config(tmp_path / "c.yaml", make_stream(1), moto.url, proxy=wrong)
    proc = run_cli("check", "-c", str(cfg))
    out = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 1
    assert "wr0ng" not in out and "Traceback" not in out
    line = next(ln for ln in out.splitlines() if "FAILED" in ln)
    # the proxy is named, its credentials masked
    assert f"the proxy http://***@127.0.0.1:{web_proxy.port} refused the credentials" in line


def _role_sink(moto: MotoServer, stream: str, proxy: ForwardProxy, **kw: Any) -> Any:
    return open_sink(
        moto.url,
        stream,
        role_arn=ROLE,
        duration_seconds=900,
        sts_endpoint_url=moto.url,
        proxy=proxy.url_with_auth,
        **kw,
    )


def _write(sink: Any, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        sink.stats.add("accepted")  # what the core counts before a write
        sink.write([Envelope("record", "gw", {"machine": "m1", "time": i}, "m1")])
        sink.flush(30)


def test_role_credentials_of_15_minutes_are_fetched_once_not_per_request(
    moto, make_stream, web_proxy
):
    """botocore's own renewal windows (15 and 10 minutes) would renew 15-minute
    credentials on every request; ``refresh_windows`` shrinks them."""
    sink = _role_sink(moto, make_stream(1), web_proxy)
    _write(sink, 10)
    sink.close()

    seen = web_proxy.exchanges  # plain http: the proxy forwards and sees everything
    assert len(_assumed_keys(seen)) == 1
    assert len([e for e in _kinesis(seen) if e.operation == "PutRecords"]) == 10
    assert sink.stats.delivered == 10


def test_role_credentials_are_renewed_when_they_near_expiry_and_used_at_once(
    moto, make_stream, web_proxy, monkeypatch
):
    """With renewal windows longer than the credentials' life, every request finds them
    due: botocore calls AssumeRole again and signs with the new keys."""
    monkeypatch.setattr(
        access, "refresh_windows", lambda _duration: access.RefreshWindows(2000.0, 1900.0)
    )
    sink = _role_sink(moto, make_stream(1), web_proxy)
    _write(sink, 5)
    sink.close()

    seen = web_proxy.exchanges
    keys = _assumed_keys(seen)
    assert len(keys) >= 5 and len(set(keys)) == len(keys)
    latest = None
    for e in seen:  # each Kinesis request carries the keys of the AssumeRole before it
        if e.operation == "AssumeRole":
            latest = _assumed_keys([e])[0]
        elif e in _kinesis([e]):
            assert e.access_key == latest
    assert sink.stats.delivered == 5


def test_a_refused_assume_role_is_one_line_naming_the_role(tmp_path, moto, make_stream):
    # STS is reached at an address where nothing listens: AssumeRole cannot be made
    cfg = config(
        tmp_path / "c.yaml",
        make_stream(1),
        moto.url,
        role_arn=ROLE,
        sts_endpoint_url="http://127.0.0.1:9",
        connect_timeout=1,
    )
    proc = run_cli("check", "-c", str(cfg))
    assert proc.returncode == 1
    out = proc.stdout.decode()
    (line,) = [ln for ln in out.splitlines() if "FAILED" in ln]
    assert f"cannot assume role {ROLE}" in line and "http://127.0.0.1:9" in line
    assert "Traceback" not in proc.stderr.decode()


@pytest.mark.parametrize(
    ("settings", "hosts"),
    [
        ({"use_fips_endpoint": True}, ["kinesis-fips.eu-west-1.amazonaws.com:443"]),
        ({"use_dualstack_endpoint": True}, ["kinesis.eu-west-1.api.aws:443"]),
        (
            {"use_fips_endpoint": True, "use_dualstack_endpoint": True, "role_arn": ROLE},
            ["sts-fips.eu-west-1.api.aws:443"],
        ),
    ],
    ids=["fips", "dualstack", "fips-dualstack-sts"],
)
def test_fips_and_dualstack_choose_the_endpoints_aws_publishes(
    tmp_path, web_proxy, settings, hosts
):
    """No endpoint_url: the proxy sees which AWS host the client asks for (and refuses,
    this machine being offline)."""
    cfg = config(
        tmp_path / "c.yaml", "s", "http://unused", proxy=web_proxy.url_with_auth, **settings
    )
    edit_sink(cfg, endpoint_url=None, region="eu-west-1")
    proc = run_cli("check", "-c", str(cfg))
    assert proc.returncode == 1
    assert web_proxy.tunnels[:1] == hosts
    _no_secret((proc.stdout + proc.stderr).decode())


_PASSWORDS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=4, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(password=_PASSWORDS, user=st.text(alphabet="abcxyz._-", min_size=1, max_size=12))
def test_a_proxy_password_is_redacted_in_every_form_it_can_take(password, user):
    quoted = urllib.parse.quote(password, safe="")
    url = f"http://{user}:{quoted}@proxy.plant.example:3128"
    pair = f"{user}:{password}"
    line = (
        f"a {password} b {quoted} c {pair} d {base64.b64encode(pair.encode()).decode()} "
        f"e {access.masked_proxy(url)}"
    )
    # the registry is global: start from nothing and leave it as it was, forms included (a
    # password's forms left behind redacted words of later tests' messages, such as 'bytes')
    saved, known = set(logs._secrets), logs._known
    logs._secrets.clear()
    logs._known = logs._Known((), ())
    try:
        for secret in access.proxy_secrets(url):
            logs.add_secret(secret)
        redacted = logs.redact(line)
    finally:
        logs._secrets.clear()
        logs._secrets.update(saved)
        logs._known = known
    for form in (password, quoted, base64.b64encode(pair.encode()).decode()):
        assert form not in redacted
    assert "http://***@proxy.plant.example:3128" in redacted


@settings(max_examples=100, deadline=None)
@given(password=_PASSWORDS, scheme=st.sampled_from(["socks5", "ftp", "http", "https"]))
def test_a_bad_proxy_url_is_refused_without_repeating_it(password, scheme):
    quoted = urllib.parse.quote(password, safe="")
    text = _refusal(f"{scheme}://u:{quoted}@proxy:3128/not-a-proxy-path")
    assert "proxy" in text
    # a password found in the message anyway ('erro' in 'error') proves nothing
    same = _refusal(f"{scheme}://u:pw@proxy:3128/not-a-proxy-path")
    assume(password not in same and quoted not in same)
    assert password not in text and quoted not in text


def _refusal(url: str) -> str:
    with pytest.raises(ValidationError) as err:
        KinesisConfig(type="kinesis", stream_name="s", region="us-east-1", proxy=url)
    return str(err.value)
