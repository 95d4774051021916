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


TRAIN_CATEGORIES = "apple,bicycle,cat,fish,house,star,tree,umbrella"


@pytest.fixture(scope="session")
def quickdraw_28px(tmp_path_factory, quickdraw_dir) -> pathlib.Path:
    """TFRecords of 8 real categories of the simplified sample at 28 px: about 150 train and 38 test
    drawings (the sample has 25 per category); built once per test session for the training tests."""
    from configuration_sketch import QuickDrawBuildConfig, RasterConfig
    from data_prep import quickdraw_build

    out = tmp_path_factory.mktemp("quickdraw_28px")
    config = QuickDrawBuildConfig(source=str(quickdraw_dir / "simplified"), format="simplified",
                                  categories=TRAIN_CATEGORIES, train_per_class=20, test_per_class=5,
                                  out=str(out), shards=2, workers=1)
    quickdraw_build.build(config, RasterConfig(image_size=28), progress=False)
    return out
