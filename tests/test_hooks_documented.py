"""Every hook is documented in docs/writing-plugins.md and exercised by a test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-plugins.md"
HOOKSPECS = ROOT / "spark_sinks" / "hookspecs.py"


def hookspecs() -> dict[str, list[str]]:
    """Hook name -> argument names, read from the ``@hookspec`` functions' source."""
    tree = ast.parse(HOOKSPECS.read_text())
    return {
        node.name: [a.arg for a in node.args.args]
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "hookspec" for d in node.decorator_list)
    }


HOOKS = hookspecs()


def test_hookspecs_are_found():
    assert "spark_sinks_register_sink_types" in HOOKS
    import spark_sinks.hookspecs as module

    assert set(HOOKS) == {n for n in vars(module) if n.startswith("spark_sinks_")}


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_hook_has_a_heading_with_its_signature_and_an_example(hook):
    guide = GUIDE.read_text()
    heading = f"### {hook}({', '.join(HOOKS[hook])})"
    assert heading in guide.splitlines(), f"docs/writing-plugins.md lacks the heading {heading!r}"
    section = guide.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert re.search(rf"```python\n.*@hookimpl\ndef {hook}\(", section, re.S), (
        f"the section on {hook} has no example implementing it"
    )


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_hook_is_exercised_by_a_test(hook):
    me = Path(__file__).resolve()
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.resolve() != me]
    using = [p.name for p in tests if hook in p.read_text()]
    assert using, f"no test under tests/ mentions {hook}"
