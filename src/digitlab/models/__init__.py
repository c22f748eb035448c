"""The model zoo. Importing this package registers every model family."""

# family modules register themselves on import
from digitlab.models import _families  # noqa: F401,E402
from digitlab.models.registry import (
    ModelInfo,
    TrainSettings,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
    train_settings,
)

__all__ = ["ModelInfo", "TrainSettings", "count_parameters", "create_model", "list_models", "model_info",
           "register_model", "train_settings"]
