"""Names that become Prometheus label values and keys of the status file: plugin type
names (checked when a plugin registers them) and a source's counter names (checked each
time the core reads them). ``spark-sinks status`` refuses a status file with other names
as damaged, so nothing else may get there."""

from __future__ import annotations

import re

NAME = r"^[A-Za-z0-9_.-]{1,64}$"
RULE = "letters, digits, _ . or - (at most 64 characters)"


def valid_name(name: object) -> bool:
    return isinstance(name, str) and re.match(NAME, name) is not None
