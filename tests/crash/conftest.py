"""End-to-end crash tests: tests/crash/ on sys.path for its helper module (crash_support)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
