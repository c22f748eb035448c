"""Shared fixtures: the real MNIST dataset, and an isolated digitlab cache for the whole run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Point ``DIGITLAB_CACHE_DIR`` at a temp folder so tests never read or write the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITLAB_CACHE_DIR", str(tmp_path_factory.mktemp("digitlab-cache")))
        data_dir = os.environ.get("DIGITLAB_DATA_DIR")
        if data_dir:  # absolute, so tests that change the working directory still find the data
            mp.setenv("DIGITLAB_DATA_DIR", str(Path(data_dir).expanduser().resolve()))
        yield


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder with the four MNIST IDX files, from ``$DIGITLAB_DATA_DIR`` (required, never skipped)."""
    value = os.environ.get("DIGITLAB_DATA_DIR")
    if not value:
        pytest.fail("DIGITLAB_DATA_DIR is not set: point it at the folder with the four MNIST IDX files "
                    "(e.g. DIGITLAB_DATA_DIR=../shared/data/mnist)", pytrace=False)
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.fail(f"DIGITLAB_DATA_DIR={value} is not a directory", pytrace=False)
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path):
    """The full MNIST dataset (60k train / 10k test uint8 tensors), loaded once per test session."""
    from digitlab.data import load_dataset

    # download=False: a test run must fail loudly on missing data, never fetch it
    return load_dataset("mnist", data_dir=mnist_dir, download=False, progress=False)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, mnist):
    """A run directory with a small inline-trained CNN, shared by the inference, serve and export tests."""
    from inference_support import trained_run

    return trained_run(tmp_path_factory, mnist)


@pytest.fixture(scope="module")
def predictor(run_dir: Path):
    """``load_predictor`` on :func:`run_dir` (one per test module, so no module sees another's changes)."""
    from digitlab.inference import load_predictor

    return load_predictor(run_dir)


@pytest.fixture(scope="session")
def fashion():
    """The Fashion-MNIST dataset (Debian's dataset-fashion-mnist, or $DIGITLAB_DATA_DIR/fashion-mnist).

    Skipped, with the reason, only when its files are not installed; never downloaded by a test.
    """
    from digitlab.data import load_dataset
    from digitlab.errors import DataError

    try:
        return load_dataset("fashion-mnist", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): {exc}")
