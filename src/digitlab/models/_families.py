"""Imports every model family module so their ``@register_model`` calls run."""

import importlib
import pkgutil

import digitlab.models as _pkg

for _mod in pkgutil.iter_modules(_pkg.__path__):
    if not _mod.name.startswith("_") and _mod.name != "registry":
        importlib.import_module(f"digitlab.models.{_mod.name}")
