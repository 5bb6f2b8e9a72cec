"""The dpsgd tests need the optional extra (torch, opacus); each module skips without it,
except where FEDSYNTH_REQUIRE_DPSGD=1 (CI installs the extra and sets it): there a missing
extra stops the run instead of passing silently."""

from __future__ import annotations

import importlib.util
import os

import pytest

MISSING = [m for m in ("torch", "opacus") if importlib.util.find_spec(m) is None]
if MISSING and os.environ.get("FEDSYNTH_REQUIRE_DPSGD") == "1":
    raise pytest.UsageError(f"the dpsgd extra is required here (FEDSYNTH_REQUIRE_DPSGD=1) but "
                            f"{MISSING} are not installed: pip install -e \".[dpsgd]\"")
