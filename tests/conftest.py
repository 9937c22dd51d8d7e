"""Shared fixtures: the real data folder (skipped with a reason when absent) and tiny synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ../shared/data beside the checkout; CMRFM_SHARED_DATA overrides it.
_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("CMRFM_SHARED_DATA", _DEFAULT))


def _need(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it is present in CI)")
    return path


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    return _need("acdc/training")


@pytest.fixture(scope="session")
def emidec_root() -> Path:
    return _need("emidec")


@pytest.fixture(scope="session")
def sunnybrook_root() -> Path:
    return _need("sunnybrook")
