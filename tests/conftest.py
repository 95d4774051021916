"""Shared fixtures: paths to the real samples in ../shared/data (never copied into the project)."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
QUICKDRAW = SHARED_DATA / "quickdraw"
SKETCHY = SHARED_DATA / "sketchy"


@pytest.fixture(scope="session")
def quickdraw_dir() -> pathlib.Path:
    if not QUICKDRAW.is_dir():
        pytest.fail(f"real Quick, Draw! sample missing at {QUICKDRAW} (../shared must sit beside the project)")
    return QUICKDRAW


@pytest.fixture(scope="session")
def sketchy_dir() -> pathlib.Path:
    if not SKETCHY.is_dir():
        pytest.fail(f"real Sketchy sample missing at {SKETCHY} (../shared must sit beside the project)")
    return SKETCHY
