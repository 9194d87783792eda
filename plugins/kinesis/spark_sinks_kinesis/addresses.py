"""Where a Kinesis stream is and how it is reached, as a config names them: region codes
and the original module's region names, stream and role ARNs, endpoint and proxy URLs;
and the botocore session that knows in which regions Kinesis is.

The config (``config.py``) validates its keys with these; the sink's client
(``access.py``) uses the same botocore session.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from typing import Any

from spark_sinks.show import show

UI_REGION_NAMES: dict[str, str] = {
    "us east (n. virginia)": "us-east-1",
    "us east (ohio)": "us-east-2",
    "us west (n. california)": "us-west-1",
    "us west (oregon)": "us-west-2",
    "asia pacific (tokyo)": "ap-northeast-1",
    "asia pacific (seoul)": "ap-northeast-2",
    "asia pacific (osaka-local)": "ap-northeast-3",
    "asia pacific (mumbai)": "ap-south-1",
    "asia pacific (singapore)": "ap-southeast-1",
    "asia pacific (sydney)": "ap-southeast-2",
    "canada (central)": "ca-central-1",
    "china (beijing)": "cn-north-1",
    "china (ningxia)": "cn-northwest-1",
    "eu (frankfurt)": "eu-central-1",
    "eu (ireland)": "eu-west-1",
    "eu (london)": "eu-west-2",
    "eu (paris)": "eu-west-3",
    "south america (são paulo)": "sa-east-1",
}
"""The region names the original module's UI offered, mapped to region codes."""

STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,128}")
_STREAM_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):kinesis:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"stream/(?P<name>[^/\s]+)"
)
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")


class StreamArn:
    """The parts of a Kinesis stream ARN, or ValueError naming what is wrong."""

    def __init__(self, text: str) -> None:
        m = _STREAM_ARN.fullmatch(text.strip())
        if m is None:
            raise ValueError(
                f"{show(text)} is not a Kinesis stream ARN "
                "(arn:aws:kinesis:<region>:<12-digit account>:stream/<name>)"
            )
        self.region = m["region"]
        self.name = m["name"]
        if not STREAM_NAME.fullmatch(self.name):
            raise ValueError(f"the stream name in {show(text)} is not a valid Kinesis stream name")
        if self.region not in kinesis_regions():
            raise ValueError(f"the region in {show(text)} is not one where Kinesis is available")


def check_url(v: str | None) -> str | None:
    if v is None:
        return None
    v = v.strip()
    if not _URL.fullmatch(v):
        raise ValueError(f"{show(v)} is not an http:// or https:// URL")
    return v


def proxy_parts(url: str) -> urllib.parse.SplitResult:
    """The parsed proxy URL, or ValueError that never repeats the URL (it may hold a
    password)."""
    parts = urllib.parse.urlsplit(url.strip())
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(
            "is not an http:// or https:// proxy URL (http://[user:password@]host:port)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a proxy URL has no path: http://[user:password@]host:port")
    return parts


@functools.cache
def shared_session() -> Any:
    """One botocore session for region checks and for the clients of sinks without a
    ``profile``: the endpoint data is then read once per process. Nothing per sink is set
    on it: credentials are given to each client. botocore rather than boto3, whose
    import also loads s3transfer (about 40 ms of every start) for nothing here."""
    import botocore.session

    return botocore.session.get_session()


@functools.cache
def kinesis_regions() -> frozenset[str]:
    """Every region botocore knows Kinesis in, across all partitions (aws, cn, gov, ...)."""
    session = shared_session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("kinesis", partition_name=partition))
    return frozenset(regions)


def normalize_region(value: str) -> str:
    """A region code for ``value`` (a code or one of the original's UI names), or ValueError."""
    text = " ".join(value.split()).lower()
    if not text:
        raise ValueError("must not be empty (e.g. us-east-1)")
    region = UI_REGION_NAMES.get(text, text)
    if region not in kinesis_regions():
        raise ValueError(f"{show(value)} is not an AWS region where Kinesis is available")
    return region
