"""Evaluation: metrics, calibration, speed, and whole-model / whole-run evaluation."""

from digitlab.evaluate.calibration import expected_calibration_error, reliability_diagram
from digitlab.evaluate.evaluator import (
    EvalInputs,
    Evaluation,
    QualityMetrics,
    evaluate_logits,
    evaluate_model,
    evaluate_run,
    load_for_evaluation,
    score_logits,
)
from digitlab.evaluate.metrics import (
    accuracy,
    averages,
    classification_report,
    confusion_matrix,
    cross_entropy,
    format_classification_report,
    log_loss,
    log_softmax,
    per_class_table,
    precision_recall_f1,
    predictions,
    softmax,
    top_confusions,
    top_k_accuracy,
)
from digitlab.evaluate.speed import (
    SpeedProfile,
    checkpoint_bytes,
    latency,
    measure_speed,
    parameter_count,
    predict_seconds,
    speed_profile,
    throughput,
)
from digitlab.models.forward import predict_logits, predict_proba

__all__ = [
    "EvalInputs", "Evaluation", "QualityMetrics", "SpeedProfile", "measure_speed", "score_logits",
    "accuracy", "averages", "checkpoint_bytes", "classification_report",
    "confusion_matrix", "cross_entropy", "evaluate_logits", "evaluate_model", "evaluate_run",
    "expected_calibration_error", "format_classification_report", "latency", "load_for_evaluation",
    "log_loss", "log_softmax", "parameter_count", "per_class_table", "precision_recall_f1",
    "predict_logits", "predict_proba", "predict_seconds", "predictions", "reliability_diagram",
    "softmax", "speed_profile", "throughput", "top_confusions", "top_k_accuracy",
]
