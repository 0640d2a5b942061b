"""Tests import the project's packages from the repository root, as the entry points do."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
