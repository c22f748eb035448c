"""The model zoo. Importing this package registers every model family."""

# family modules register themselves on import
from digitlab.models import _families  # noqa: F401,E402
from digitlab.models.registry import (
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = ["ModelInfo", "count_parameters", "create_model", "list_models", "model_info",
           "register_model"]
