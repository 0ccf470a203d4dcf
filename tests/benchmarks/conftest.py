"""benchmarks/ is repository tooling, not part of the installed package: its modules import from that folder."""

import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
