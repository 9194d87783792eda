"""The README's CLI section documents every command and option of ``spark-sinks``, and the
docs name no command or option it does not have."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from spark_sinks.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("plugins/*/README.md"))]


def cli_section() -> str:
    return README.read_text().split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


def option_cases() -> list[tuple[str, str]]:
    """(command, option string) for every option, the group's own under ''."""
    cases = [("", o) for p in options(cli) for o in p.opts]
    for name, command in sorted(cli.commands.items()):
        cases += [(name, o) for p in options(command) for o in p.opts]
    return sorted(set(cases))


def known_options() -> set[str]:
    help_names = cli.context_settings["help_option_names"]
    return {o for _, o in option_cases()} | set(help_names)


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_in_the_cli_section(command):
    assert re.search(rf"^spark-sinks {command}\b", cli_section(), re.M), (
        f"README.md's CLI section has no line 'spark-sinks {command} ...'"
    )


@pytest.mark.parametrize(("command", "option"), option_cases())
def test_every_option_is_in_the_cli_section(command, option):
    # `-c FILE`, `--json`, `--log-level DEBUG|...`: the option as a word of its own
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", cli_section()), (
        f"README.md's CLI section does not name {option} (of 'spark-sinks {command}')"
    )


def test_the_documented_choices_and_environment_are_the_codes():
    section = cli_section()
    for param in options(cli):
        if isinstance(param.type, click.Choice):
            assert f"{param.opts[0]} {'|'.join(param.type.choices)}" in section, param.opts
    envvars = {p.envvar for c in cli.commands.values() for p in options(c) if p.envvar}
    for envvar in envvars:
        assert f"`{envvar}`" in section, envvar


def code_in(text: str) -> list[str]:
    """The code of a Markdown text: fenced blocks and inline spans."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", text, re.S | re.M)
    rest = re.sub(r"^```[a-z]*\n.*?^```$", "", text, flags=re.S | re.M)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def invocations() -> list[tuple[str, str]]:
    """(file, command line) for every ``spark-sinks ...`` in the docs' code."""
    out = []
    for md in DOCS:
        for code in code_in(md.read_text()):
            for line in code.splitlines():
                line = re.sub(r"(^|\s)#.*", "", line)  # a shell comment is prose
                m = re.search(r"(?:^|[\s/])spark-sinks( [a-z-].*)$", line)
                if m:
                    out.append((str(md.relative_to(ROOT)), "spark-sinks" + m.group(1)))
    return out


def test_the_docs_run_no_command_or_option_that_does_not_exist():
    found = invocations()
    assert len(found) > 20, found  # the docs do show commands: this test reads them
    wrong = []
    for where, line in found:
        words = line.split()
        # `spark-sinks --version | --help` and `spark-sinks status -c FILE`
        if len(words) > 1 and not words[1].startswith("-") and words[1] not in cli.commands:
            wrong.append(f"{where}: {line!r}: no command {words[1]!r}")
        for option in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line):
            if option not in known_options():
                wrong.append(f"{where}: {line!r}: no option {option}")
    assert not wrong, "\n".join(wrong)


def test_the_cli_section_names_no_option_that_does_not_exist():
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*|-[a-z])\b", cli_section()))
    assert named - known_options() == set()
