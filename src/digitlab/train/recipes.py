"""Shipped training recipes: the YAML configs under ``digitlab/configs/``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from digitlab.errors import ConfigError
from digitlab.train.config import TrainConfig


def recipe_dir() -> Path:
    return Path(str(resources.files("digitlab") / "configs"))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def load_config(name_or_path: str) -> TrainConfig:
    """A config from a YAML path, or a shipped recipe by name (``cnn-deep``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return TrainConfig.from_yaml(path)
    shipped = recipe_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return TrainConfig.from_yaml(shipped)
    raise ConfigError(f"no config file or shipped recipe named {name_or_path!r}; "
                      f"recipes: {', '.join(list_recipes())}")
