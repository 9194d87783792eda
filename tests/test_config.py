"""Config errors: one readable line naming the path, exit code 2, no traceback."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, HttpUrl, create_model

from spark_sinks.config import load_config, validate_block
from spark_sinks.errors import ConfigError
from spark_sinks.plugins import load_registry
from spark_sinks.show import show
from tests.helpers import MACHINES, run_cli, write_config


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def error_of(tmp_path, registry, **overrides) -> str:
    path = write_config(tmp_path / "c.yaml", **overrides)
    with pytest.raises(ConfigError) as exc:
        load_config(path, registry)
    return str(exc.value)


def test_valid_config_loads_with_defaults(tmp_path, registry):
    cfg = load_config(write_config(tmp_path / "c.yaml"), registry)
    assert cfg.host == "gw-test"
    assert cfg.on_incomplete == "drop"
    assert cfg.sinks["out"].config.format == "json"
    assert cfg.sinks["out"].provided.plugin.distribution == "spark-sinks-stdout"


def test_unknown_key_in_a_sink_names_its_path(tmp_path, registry):
    msg = error_of(tmp_path, registry, sinks={"out": {"type": "stdout", "colour": "red"}})
    assert msg.endswith("sinks.out.colour: unknown key")


def test_wrong_type_names_its_path(tmp_path, registry):
    msg = error_of(tmp_path, registry, sinks={"out": {"type": "stdout", "enabled": "maybe"}})
    assert "sinks.out.enabled: Input should be a valid boolean" in msg


def test_unknown_sink_type_lists_the_known_ones(tmp_path, registry):
    msg = error_of(tmp_path, registry, sinks={"out": {"type": "carrier-pigeon"}})
    assert 'sinks.out.type: unknown sink type "carrier-pigeon" (known: ' in msg
    assert "stdout" in msg


def test_unknown_format_and_bad_reference_name_the_machine(tmp_path, registry):
    bad = {"m": {"variables": {"v": {"format": "float128"}}}}
    assert 'machines.m.variables.v.format: "float128" is not a Spark format' in error_of(
        tmp_path, registry, machines=bad
    )
    bad = {
        "m": {
            "variables": {
                "v": {
                    "format": "float",
                    "srcVariables": [{"srcMachine": "ghost", "srcVariable": "t"}],
                }
            }
        }
    }
    assert 'machines.m.variables.v.srcVariables[0].srcMachine: unknown machine "ghost"' in (
        error_of(tmp_path, registry, machines=bad)
    )


def test_missing_environment_variable_names_the_path(tmp_path, registry, monkeypatch):
    monkeypatch.delenv("SPARK_TEST_UNSET", raising=False)
    msg = error_of(tmp_path, registry, host="${SPARK_TEST_UNSET}")
    assert msg.endswith("host: environment variable SPARK_TEST_UNSET is not set")


def test_environment_variables_and_defaults_are_substituted(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("SPARK_TEST_HOST", "from-env")
    monkeypatch.delenv("SPARK_TEST_FMT", raising=False)
    cfg = load_config(
        write_config(
            tmp_path / "c.yaml",
            host="${SPARK_TEST_HOST}",
            sinks={"out": {"type": "stdout", "format": "${SPARK_TEST_FMT:-pretty}"}},
        ),
        registry,
    )
    assert cfg.host == "from-env"
    assert cfg.sinks["out"].config.format == "pretty"


def test_yaml_is_loaded_safely(tmp_path, registry):
    path = tmp_path / "c.yaml"
    path.write_text("host: !!python/object/apply:os.system ['true']\nmachines: {}\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path, registry)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "config file not found"),
        ("", "config file is empty"),
        ("machines: [unclosed\n", "line 2, column 1: invalid YAML"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("machines: {}\n", "machines: List should have at least 1 item"),
    ],
)
def test_cli_reports_bad_config_in_one_line_with_exit_2(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    result = run_cli("run", "-c", str(path))
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert expected in err or expected.replace("List", "Dictionary") in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert result.stdout == b""


def test_cli_check_validates_and_reports_sinks(tmp_path):
    path = write_config(
        tmp_path / "c.yaml",
        sinks={"out": {"type": "stdout"}, "off": {"type": "stdout", "enabled": False}},
    )
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert f"config: ok ({len(MACHINES)} machines, source ndjson)" in out
    assert "sink out: ok\n" in out
    assert "sink off: disabled" in out


# -- values in messages are JSON, also in the plugins' own messages (issue 11) ---------------

KINESIS = {"type": "kinesis", "stream_name": "s", "region": "us-east-1"}
MQTT = {"type": "mqtt", "host": "localhost", "topic": "spark/{machine}"}


@pytest.mark.parametrize(
    ("sink", "says"),
    [
        ({**KINESIS, "region": "mars-north-1"}, 'sinks.out.region: "mars-north-1" is not an AWS'),
        ({**MQTT, "topic": "spark/{line}"}, 'sinks.out.topic: topic template "spark/{line}" uses'),
        ({**MQTT, "format": "xml"}, 'sinks.out.format: Input should be "json" or "sparkplug_b"'),
        (
            {"type": "stdout", "buffer": {"type": "ram"}},
            'sinks.out.buffer.type: Input should be "memory" or "disk"',
        ),
    ],
)
def test_plugin_config_errors_show_values_as_json_end_to_end(tmp_path, sink, says):
    """Before: Python's repr ('mars-north-1'), from the plugins' validators and pydantic."""
    result = run_cli("check", "-c", str(write_config(tmp_path / "c.yaml", sinks={"out": sink})))
    err = result.stderr.decode()
    assert result.returncode == 2 and len(err.splitlines()) == 1, err
    assert says in err, err


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    value=st.text(
        st.characters(
            blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="$"
        ),
        min_size=1,
        max_size=40,
    )
)
def test_any_value_a_plugin_validator_echoes_is_written_as_json(tmp_path_factory, registry, value):
    path = write_config(
        tmp_path_factory.mktemp("json") / "c.yaml", sinks={"out": {**KINESIS, "region": value}}
    )
    try:
        load_config(path, registry)
    except ConfigError as exc:
        msg = str(exc)
    else:  # a name Kinesis knows (e.g. "US-EAST-1"): no message to look at
        assume(False)
    assert f"sinks.out.region: {show(value, 1000)} is not an AWS region" in msg, msg
    if repr(value) != show(value, 1000):
        assert repr(value) not in msg, msg


_REGIONS = {"us-east-1": "US East (N. Virginia)", "eu-west-1": "EU (Ireland)"}
_ARN = "arn:aws:kinesis:{}:123456789012:stream/s"
_PY_LITERAL = re.compile(r"'[^']*'")


def _spelt(draw: st.DrawFn, region: str) -> str:
    """``region`` as a config may spell it: its code or UI name, any case, padded."""
    name = draw(st.sampled_from([region, _REGIONS[region]]))
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    return draw(st.sampled_from(["", " ", "\t"])) + name + draw(st.sampled_from(["", "  "]))


@st.composite
def _computed_values(draw: st.DrawFn) -> tuple[dict[str, str], list[str]]:
    """A Kinesis block whose error names values its validators computed (a region code
    normalized from a UI name, the region read from an ARN, a stripped URL), not written
    as such in the input; and those values."""
    if draw(st.booleans()):
        region, other = draw(st.permutations(sorted(_REGIONS)))
        block = {"region": _spelt(draw, region), "stream_arn": _ARN.format(other)}
        return block, [region, other]
    url = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20))
    assume(url.strip() and url.strip() != url)
    return {"endpoint_url": url}, [url.strip()]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@example(
    case=(
        {"region": " EU (Ireland)", "stream_arn": _ARN.format("us-east-1")},
        ["eu-west-1", "us-east-1"],
    )
)
@example(case=({"endpoint_url": " ftp://x "}, ["ftp://x"]))
@given(case=_computed_values())
def test_a_value_a_validator_computed_is_written_as_json(tmp_path_factory, registry, case):
    """Before: ``region 'eu-west-1' differs from the region of stream_arn ('us-east-1')``:
    only values found in the input were rewritten as JSON."""
    block, values = case
    sink = {"type": "kinesis", "stream_name": "s", "region": "us-east-1", **block}
    if "stream_arn" in block:
        del sink["stream_name"]
    path = write_config(tmp_path_factory.mktemp("computed") / "c.yaml", sinks={"out": sink})
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry)
    msg = str(caught.value)
    for value in values:
        assert show(value, 1000) in msg, msg
    rest = msg.split(": ", 2)[-1]
    for value in values:
        rest = rest.replace(show(value, 1000), "")
    assert not _PY_LITERAL.search(rest), msg


class _Patterned(BaseModel):
    code: str
    url: HttpUrl | None = None


@settings(max_examples=60, deadline=None)
@example(pattern="it's [a-z]+")
# no whitespace: a message's whitespace is collapsed to single spaces (an NBSP shows as " ")
@given(
    pattern=st.text(
        st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=20
    )
)
def test_a_value_pydantic_computed_is_written_as_json(pattern):
    """Before: ``String should match pattern '^it's [a-z]+$'`` (pydantic quotes the
    pattern of its own check), ``URL scheme should be 'http' or 'https'``."""
    anchored = f"^{re.escape(pattern)}$"
    model = create_model("Patterned", code=(str, Field(pattern=anchored)), __base__=_Patterned)
    with pytest.raises(ConfigError) as caught:
        validate_block(model, {"code": pattern + "\x00", "url": "ftp://x"}, "sinks.x")
    msg = str(caught.value)
    assert f"sinks.x.code: String should match pattern {show(anchored, 1000)}" in msg, msg
    assert 'sinks.x.url: URL scheme should be "http" or "https"' in msg, msg
