"""``tests/conftest.py: SLOW_VARIANTS`` names tests that exist: a renamed test would otherwise drop
out of the list silently and run in CI again (CI's 30-minute budget)."""

import subprocess
import sys
from pathlib import Path

from conftest import SLOW_VARIANTS

ROOT = Path(__file__).resolve().parent.parent


def test_every_slow_variant_is_collected():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist",
                          "-p", "no:cacheprovider", "tests"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    collected = set(out.stdout.split())
    missing = sorted(SLOW_VARIANTS - collected)
    assert not missing, f"SLOW_VARIANTS names tests that do not exist: {missing}"
