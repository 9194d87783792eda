"""Import the plugin from this directory; outside this repository, `pip install -e .`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
