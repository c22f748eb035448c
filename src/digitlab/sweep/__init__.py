"""Hyperparameter sweeps on Optuna (the optional ``digitlab[sweep]`` extra).

:mod:`digitlab.sweep.space` parses and validates search spaces (YAML; shipped ones in
``digitlab/sweep/spaces/``); :mod:`digitlab.sweep.run` runs the study. Importing this package
imports neither Optuna nor torch (the CLI lists the shipped spaces in every ``--help``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPACES_DIR = Path(__file__).resolve().parent / "spaces"
"""Folder of the shipped spaces (``digitlab/sweep/spaces/*.yaml``)."""


def list_spaces() -> list[str]:
    """Names of the shipped search spaces."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def __getattr__(name: str) -> Any:
    # the space model needs TrainConfig (and so torch): import it only when asked for
    if name in {"Param", "PrunerSpec", "SearchSpace", "load_space"}:
        from digitlab.sweep import space

        return getattr(space, name)
    raise AttributeError(name)


__all__ = ["SPACES_DIR", "Param", "PrunerSpec", "SearchSpace", "list_spaces", "load_space"]
