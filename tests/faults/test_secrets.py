"""Secrets never leak: not in text or JSON logs, `check` output, the status file or error
lines, in any form (raw, JSON-escaped, repr, bytes repr, URL-encoded once or twice, hex,
base64), also when a reload brings a new one; and their forms never blank ordinary text.
The endpoint here is hostile: it echoes the session token in its error message."""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
import re
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from spark_sinks import logs
from tests.faults.spoolkit import ENV as AWS
from tests.faults.spoolkit import kinesis_sink, lines, start, wait_until, write_config
from tests.helpers import run_cli

CORE1 = "Zq9FirstSecretCore"
CORE2 = "Wx7SecondSecretCore"
TOKEN1 = f"tok\"en\\{CORE1}'x"  # a quote, a backslash and an apostrophe around the core
TOKEN2 = f'{CORE2}"\\u00e9\\'


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        token = self.headers.get("X-Amz-Security-Token")
        body = json.dumps(
            {
                "__type": "AccessDeniedException",
                "message": f"The security token {token} included in the request is invalid",
            }
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        s = text.decode(errors="replace") if isinstance(text, bytes) else text
        assert CORE1 not in s and CORE2 not in s, s[-3000:]


def cloud(endpoint: str, token_var: str = "SPARK_TEST_TOKEN") -> dict[str, Any]:
    return kinesis_sink(
        "s",
        endpoint,
        access_key_id="AKIDEXAMPLE",
        secret_access_key="${SPARK_TEST_SECRET}",
        session_token="${" + token_var + "}",
    )


ENV = {"SPARK_TEST_SECRET": f"secret-{CORE1}", "SPARK_TEST_TOKEN": TOKEN1}


@pytest.mark.slow
def test_a_credential_with_surrounding_whitespace_is_a_config_error_naming_the_key(
    tmp_path: Path,
) -> None:
    cfg = write_config(tmp_path, {"cloud": cloud("http://127.0.0.1:9")})
    for bad in (f"{CORE1}\n", f"{CORE1}\x07x"):
        for cmd in ("run", "check"):
            result = run_cli(cmd, "-c", str(cfg), env={**ENV, "SPARK_TEST_TOKEN": bad})
            err = result.stderr.decode()
            assert result.returncode == 2, err
            assert "sinks.cloud.session_token" in err and "whitespace" in err, err
            assert_no_secret(result.stdout, err)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_check_and_logs_never_show_a_secret_the_endpoint_echoes(
    tmp_path: Path, echo: str, fmt: str
) -> None:
    cfg = write_config(tmp_path, {"cloud": cloud(echo)})
    result = run_cli("--log-format", fmt, "check", "-c", str(cfg), env=ENV)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1, out + err
    assert "security token *** included" in out, out  # the error is there, redacted
    assert_no_secret(out, err)
    result = run_cli("--log-format", fmt, "run", "-c", str(cfg), input=lines(3), env=ENV)
    assert result.returncode == 1
    assert "***" in result.stderr.decode()
    assert_no_secret(result.stdout, result.stderr)


def test_a_secret_brought_by_a_reload_is_redacted_in_logs_and_the_status_file(
    tmp_path: Path, echo: str
) -> None:
    """The second token is in the environment from the start, but only the reloaded
    config uses it: it must be registered by the reload."""
    sinks = {"out": {"type": "stdout"}, "cloud": cloud(echo)}
    cfg = write_config(tmp_path, sinks)
    status = tmp_path / "status.json"
    proc = start(cfg, "--log-format", "json", env={**os.environ, **AWS, **ENV, "T2": TOKEN2})
    assert proc.stdin is not None and proc.stderr is not None
    seen: list[bytes] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    proc.stdin.write(lines(5))
    proc.stdin.flush()
    wait_until(lambda: status.exists() and b"token ***" in status.read_bytes(), what="status")
    write_config(tmp_path, {**sinks, "cloud": cloud(echo, "T2")})
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(b"reload applied" in x for x in seen), what="the reload")
    time.sleep(0.5)  # a status file written after the reload
    proc.stdin.write(lines(5, start=5))
    proc.stdin.close()
    proc.wait(30)
    reader.join(10)
    err = b"".join(seen)
    assert err.count(b"security token ***") >= 2, err.decode()[-3000:]  # both tokens
    assert_no_secret(err, status.read_bytes())


def test_every_form_of_a_secret_is_redacted() -> None:
    secret = f'a"b\\c\n{CORE1}é'
    logs.add_secret(secret)
    texts = [
        secret,
        json.dumps(secret),
        json.dumps(secret, ensure_ascii=False),
        repr(secret),
        repr(secret.encode()),
        f"Invalid header value {secret.encode()!r}",
        json.dumps({"message": f"Invalid header value {secret.encode()!r}"}),
        json.dumps(repr(secret)),
    ]
    for text in texts:
        assert CORE1 not in logs.redact(text), text


@contextmanager
def only_secret(secret: str) -> Iterator[None]:
    """Register ``secret`` alone; the registry is global: leave it as it was."""
    saved = set(logs._secrets), logs._known
    logs._secrets.clear()
    logs._known = logs._Known((), ())
    try:
        logs.add_secret(secret)
        yield
    finally:
        logs._secrets.clear()
        logs._secrets.update(saved[0])
        logs._known = saved[1]


_SECRETS = st.text(min_size=4, max_size=40)
_LONG_SECRETS = st.text(min_size=7, max_size=40)
"""7 bytes or more: each of their base64 pieces is 8 characters or more (see logs.py)."""
_NEIGHBOURS = st.binary(max_size=12)


def _decodable(text: str, raw: bytes) -> bool:
    """Whether ``raw`` can be read back from any stretch of base64 left in ``text``
    (either alphabet, at every alignment), between spaces and redaction marks."""
    for piece in text.replace("-", "+").replace("_", "/").replace("***", " ").split():
        for offset in range(4):
            chunk = piece[offset:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                decoded = base64.b64decode(chunk, validate=False)
            except (binascii.Error, ValueError):
                continue
            if raw in decoded:
                return True
    return False


@settings(max_examples=300, deadline=None)
@given(
    secret=_LONG_SECRETS,
    before=_NEIGHBOURS,
    after=_NEIGHBOURS,
    urlsafe=st.booleans(),
)
def test_a_secret_inside_base64_text_cannot_be_decoded_after_redaction(
    secret: str, before: bytes, after: bytes, urlsafe: bool
) -> None:
    """E.g. ``user:secret`` in a Basic ``Authorization`` header: whatever bytes stand
    before and after it, what redaction leaves never decodes to the secret."""
    raw = secret.encode("utf-8", "surrogatepass")
    blob = before + raw + after
    assume(blob.find(raw, blob.find(raw) + 1) == -1)  # the neighbours hold no second copy
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    text = f"Authorization: Basic {encode(blob).decode()} (rejected)"
    with only_secret(secret):
        redacted = logs.redact(text)
    assert not _decodable(redacted, raw), redacted


_QUOTES: dict[str, Callable[[str], str]] = {
    "quote": urllib.parse.quote,
    "quote-all": lambda v: urllib.parse.quote(v, safe=""),
    "quote_plus": urllib.parse.quote_plus,
}


@given(secret=st.text(max_size=3))
def test_a_secret_shorter_than_4_characters_is_left_alone_in_every_form(secret: str) -> None:
    with only_secret(secret):
        assert logs._known == ((), ())


def _hex(v: str) -> str:
    return v.encode("utf-8", "surrogatepass").hex()


def _quote_all(v: str) -> str:
    return urllib.parse.quote(v, safe="")


_ORDINARY = (
    "[Errno 111] Connection refused; connection refused, retrying in 2.5 s",
    "3 accepted, 3 delivered, 0 dead-lettered, 0 dropped, 0 failed, 0 pending",
    "sinks.cloud.session_token: has surrounding whitespace (the value is not shown)",
    '{"type": "record", "host": "gw-7", "data": {"count": 12345678, "temp": 71.25}}',
    '{"accepted": 1700000000123, "delivered": 4294967296, "pending": 0, "ok": true}',
    "PutRecords to localhost:4566 (https://kinesis.eu-west-1.amazonaws.com/) took 31 ms",
)
"""Log lines whose words, numbers and keys no secret's encoded form should blank."""

_TYPED_SECRETS = st.text(
    st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    min_size=4,
    max_size=40,
).filter(lambda s: s == s.strip())
"""Secrets a config accepts: no control characters, no surrounding whitespace."""


def _as_text(secret: str) -> set[str]:
    """The secret as text: where an ordinary line holds one of these, it holds the
    secret, and blanking it is right."""
    escaped = {json.dumps(secret)[1:-1], repr(secret)[1:-1]}
    quoted = {q(secret) for q in _QUOTES.values()}
    return {secret, *escaped, *quoted}


@settings(max_examples=300, deadline=None)
@example(secret=")zwb")  # base64 at offset 2 holds "pendi": blanked "0 pending"
@example(secret="*$zp")  # base64 at offset 1 holds "oken": blanked "session_token"
@example(secret="\\jXh")  # base64 at offset 2 holds "calho": blanked "localhost"
@example(secret="0000")
@example(secret="1234567")
@given(secret=_TYPED_SECRETS)
def test_a_secret_s_encoded_forms_never_blank_ordinary_text(secret: str) -> None:
    """A base64 piece of 4 characters (from a secret of 4 to 6 bytes) is as likely an
    ordinary word as a secret: only forms of 8 characters or more are replaced."""
    with only_secret(secret):
        for text in _ORDINARY:
            if not any(form in text for form in _as_text(secret)):
                assert logs.redact(text) == text, secret


def _percent_case(encoded: str, case: str, rnd: random.Random) -> str:
    """The hex digits of every ``%XX`` (and ``%25XX``) in upper, lower or mixed case:
    encoders differ (Python and JavaScript write ``%2F``, many others ``%2f``)."""

    def recase(m: re.Match[str]) -> str:
        if case == "upper":
            return m.group().upper()
        if case == "lower":
            return m.group().lower()
        return "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in m.group())

    return re.sub(r"%(?:25)?[0-9A-Fa-f]{2}", recase, encoded)


_URL_ENCODERS: dict[str, Callable[[str], str]] = {
    "query": _quote_all,  # encodeURIComponent-like: everything but letters, digits, _.-~
    "path": urllib.parse.quote,  # '/' left as is
    "form": urllib.parse.quote_plus,  # '+' for a space
}
_ESCAPERS: dict[str, Callable[[str], str]] = {
    "raw": lambda v: v,
    "json": lambda v: json.dumps(v)[1:-1],
    "json-utf8": lambda v: json.dumps(v, ensure_ascii=False)[1:-1],
    "repr": lambda v: repr(v)[1:-1],
    "bytes-repr": lambda v: repr(v.encode())[2:-1],
    "hex": _hex,
    "HEX": lambda v: _hex(v).upper(),
}
_BASE64: dict[str, Callable[[bytes], bytes]] = {
    "base64": base64.b64encode,
    "base64url": base64.urlsafe_b64encode,
}


_URL_CHAINS = [*_URL_ENCODERS, *(f"{a}+{b}" for a in _URL_ENCODERS for b in _URL_ENCODERS)]
"""Percent-encoded once, or twice by any two encoders (a URL inside a URL)."""


def _encode(secret: str, how: str, case: str, seed: int) -> str:
    if how in _ESCAPERS:
        return _ESCAPERS[how](secret)
    if how in _BASE64:
        return _BASE64[how](secret.encode()).decode()
    encoded = secret
    for name in how.split("+"):
        encoded = _URL_ENCODERS[name](encoded)
    return _percent_case(encoded, case, random.Random(seed))


@settings(max_examples=500, deadline=None)
@example(secret=f"{CORE1}/é x", how="query", case="lower", seed=0)
@example(secret=f"{CORE1}/é x", how="form+query", case="mixed", seed=0)
@example(secret="a+b c/d", how="form+form", case="lower", seed=0)
@example(secret="000%", how="query", case="upper", seed=0)  # not "***25"
@example(secret=f"{CORE1} é/+", how="query+query", case="upper", seed=0)
@example(secret=CORE1, how="hex", case="upper", seed=0)
@given(
    secret=_SECRETS,
    how=st.sampled_from([*_ESCAPERS, *_BASE64, *_URL_CHAINS]),
    case=st.sampled_from(["upper", "lower", "mixed"]),
    seed=st.integers(0, 2**16),
)
def test_any_standard_encoding_of_a_secret_is_redacted_whole(
    secret: str, how: str, case: str, seed: int
) -> None:
    """Raw, JSON, repr, bytes repr, hex, base64 (both alphabets) and URL-encoded once or
    twice by any encoder with its hex digits in upper, lower or mixed case: what is left of
    the line is the line around it. Before: ``%2f`` (lower case, as many encoders write it)
    and mixed case were left in the clear."""
    encoded = _encode(secret, how, case, seed)
    before, after = "GET /x?token=", " failed: 403 (rejected)"
    with only_secret(secret):
        assume(logs.redact(before + after) == before + after)  # the frame holds no form
        redacted = logs.redact(before + encoded + after)
    if how in _BASE64:  # the documented limit: pieces of it may stay, never all of it
        raw = secret.encode()
        assert len(raw) < 7 or not _decodable(redacted, raw), redacted
    else:
        assert redacted == f"{before}***{after}", (encoded, redacted)
