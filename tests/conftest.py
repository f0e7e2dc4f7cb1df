"""Shared fixtures: the committed fixture model and deterministic test signals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_MODEL = FIXTURES / "tiny.onnx"
REPO = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session) -> None:
    """With STEMBRIDGE_TEST_INSTALLED set (.ci/run), refuse to test anything but an installed, non-editable copy."""
    if not os.environ.get("STEMBRIDGE_TEST_INSTALLED"):
        return
    import stembridge.engine

    where = Path(stembridge.engine.__file__).resolve()
    if REPO in where.parents:
        raise pytest.UsageError(f"STEMBRIDGE_TEST_INSTALLED: stembridge.engine comes from the checkout ({where})")


@pytest.fixture
def tiny_model() -> Path:
    """The fixture model (regenerate with tests/fixtures/make_fixture_model.py)."""
    return TINY_MODEL


@pytest.fixture
def noise() -> np.ndarray:
    """Two seconds of seeded stereo noise, float32 (1, 2, 88200)."""
    return (np.random.default_rng(7).standard_normal((1, 2, 88200)) * 0.2).astype(np.float32)
