"""A table of the model zoo: what ``digitlab models`` prints."""

from __future__ import annotations

from typing import Any

from digitlab.models._common import count_parameters_keras
from digitlab.models.registry import count_parameters, create_model, list_models, model_info


def model_catalog(pattern: str = "*") -> list[dict[str, Any]]:
    """One record per registered model whose name matches the glob ``pattern``.

    Keys: ``name``, ``family``, ``input_kind``, ``uses_gradient``, ``params``
    (trainable parameters; for the scikit-learn baselines the number of stored
    values when that is fixed before fitting, e.g. logreg's 7,850, else ``None``),
    ``params_keras`` (``params`` plus BatchNorm moving statistics, the number
    Keras' ``count_params()`` — and hence the notebooks — report; ``None`` where
    ``params`` is), ``reference``, ``recipe`` and ``description``.
    """
    rows = []
    for name in list_models(pattern):
        info = model_info(name)
        model = create_model(name)
        if info.uses_gradient:
            params: int | None = count_parameters(model)
            params_keras: int | None = count_parameters_keras(model)
        else:
            counter = getattr(model, "parameter_count", None)
            params = counter() if callable(counter) else None
            params_keras = params
        rows.append({
            "name": name, "family": info.family, "input_kind": info.input_kind,
            "uses_gradient": info.uses_gradient, "params": params, "params_keras": params_keras,
            "reference": info.reference, "recipe": info.recipe, "description": info.description,
        })
    return rows
