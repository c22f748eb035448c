"""Probability-averaging ensembles, optionally with test-time augmentation (small shifts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from digitlab.data.augment import shift_images
from digitlab.data.batches import to_float
from digitlab.errors import ConfigError, RunExistsError
from digitlab.utils import resolve_device

MISTAKES_PNG = "mistakes.png"
"""The figure ``--plots DIR`` receives."""

#: Test-time shifts in pixels (dx, dy): the identity and the four one-pixel neighbours.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def predict_proba(model: torch.nn.Module, images_u8: torch.Tensor, tta: bool = False,
                  batch_size: int = 1000, unshifted: torch.Tensor | None = None) -> torch.Tensor:
    """Class probabilities, averaged over :data:`TTA_SHIFTS` when ``tta``.

    ``unshifted``: the model's probabilities on the original images, when the
    caller already has them (saves one of the five passes).
    """
    from digitlab.models.forward import predict_proba as batched_proba

    if not tta:
        return batched_proba(model, images_u8, batch_size)
    x = to_float(images_u8)
    total = torch.zeros(())
    for dx, dy in TTA_SHIFTS:
        if (dx, dy) == (0, 0) and unshifted is not None:
            total = total + unshifted
        else:
            total = total + batched_proba(model, shift_images(x, dx, dy), batch_size)
    return total / len(TTA_SHIFTS)


def members_wrong(member_predictions: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """``members × images`` boolean matrix: which member gets which image wrong."""
    return torch.stack([p != labels for p in member_predictions])


def error_overlap(member_predictions: list[torch.Tensor], ensemble_prediction: torch.Tensor,
                  labels: torch.Tensor) -> dict[str, int]:
    """How much the members' mistakes coincide: an ensemble can only fix what some member gets right.

    Counts test images that every member gets wrong (no average of these
    members can fix them), that at least one gets wrong, that most get wrong,
    and that the ensemble gets wrong.
    """
    wrong = members_wrong(member_predictions, labels)
    return {"all_members_wrong": int(wrong.all(0).sum()), "any_member_wrong": int(wrong.any(0).sum()),
            "majority_wrong": int((2 * wrong.sum(0) > len(member_predictions)).sum()),
            "ensemble_wrong": int((ensemble_prediction != labels).sum())}


def ensemble_mistakes(member_predictions: list[torch.Tensor], ensemble_probs: torch.Tensor,
                      labels: torch.Tensor, class_names: list[str] | None = None) -> list[dict[str, Any]]:
    """The images the ensemble gets wrong, each with how many members got it wrong too.

    One dict per mistake, in test-set order: ``index``, ``label``, ``prediction``,
    ``confidence`` (the ensemble's probability for its prediction) and
    ``members_wrong`` (out of ``len(member_predictions)``); with ``class_names`` also
    ``name`` (of the true class) and ``prediction_name``.
    """
    confidence, prediction = ensemble_probs.max(1)
    n_wrong = members_wrong(member_predictions, labels).sum(0)
    out: list[dict[str, Any]] = []
    for i in torch.nonzero(prediction != labels).flatten().tolist():
        m: dict[str, Any] = {"index": i, "label": int(labels[i]), "prediction": int(prediction[i]),
                             "confidence": float(confidence[i]), "members_wrong": int(n_wrong[i])}
        if class_names is not None:
            m["name"], m["prediction_name"] = class_names[m["label"]], class_names[m["prediction"]]
        out.append(m)
    return out


#: At most this many mistakes are drawn (15 rows of 8); the JSON lists them all.
MAX_PLOTTED_MISTAKES = 120


def mistakes_png(images_u8: torch.Tensor, mistakes: list[dict[str, Any]], n_members: int, title: str,
                 class_names: list[str] | None = None) -> bytes:
    """Grid of the ensemble's mistakes: ``true→pred (confidence)`` and how many members agreed.

    Draws the first :data:`MAX_PLOTTED_MISTAKES` and says so in the title when there are more.
    """
    from digitlab.analysis.plots import misclassified_grid_png

    if len(mistakes) > MAX_PLOTTED_MISTAKES:
        title += f"; the first {MAX_PLOTTED_MISTAKES} of {len(mistakes)} shown"
        mistakes = mistakes[:MAX_PLOTTED_MISTAKES]
    idx = torch.tensor([m["index"] for m in mistakes], dtype=torch.long)
    return misclassified_grid_png(
        images_u8[idx],
        [m["label"] for m in mistakes], [m["prediction"] for m in mistakes],
        [m["confidence"] for m in mistakes], class_names=class_names,
        notes=[f"{m['members_wrong']}/{n_members} wrong" for m in mistakes], title=title)


def member_datasets(metas: list[dict[str, Any]], sources: list[str]) -> str:
    """The one dataset all members were trained on; a one-line ConfigError when they differ."""
    from digitlab.checkpoint import dataset_of

    names = [dataset_of(m) for m in metas]
    if len(set(names)) > 1:
        listing = ", ".join(f"{src} ({name})" for src, name in zip(sources, names, strict=True))
        raise ConfigError(f"ensemble members were trained on different datasets: {listing}")
    return names[0]


def ensemble_runs(sources: list[str], dataset: str | None = None, data_dir: str | None = None,
                  split: str = "test", tta: bool = False, plots: str | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Average the members' class probabilities on ``split``; per-member and ensemble accuracy.

    ``sources``: run directories, checkpoints or ``"default"``. The data is the members'
    own dataset (they must agree) unless ``dataset`` overrides it. Also reports
    :func:`error_overlap` and :func:`ensemble_mistakes` of the plain (no TTA)
    predictions; ``plots`` names a new folder that receives ``mistakes.png``
    (:func:`mistakes_png`).
    """
    from digitlab.checkpoint import load_checkpoint, read_meta, resolve_dataset
    from digitlab.data import load_dataset
    from digitlab.utils import ensure_new_dir, exists_message, write_new_bytes_atomic

    if not sources:
        raise ConfigError("give at least one run to ensemble")
    if plots is not None and Path(plots).exists() and (not Path(plots).is_dir() or any(Path(plots).iterdir())):
        raise RunExistsError(exists_message(plots, "plots folder"))  # fail before minutes of inference
    metas = [read_meta(src) for src in sources]  # every member readable before any work
    member_datasets(metas, [str(s) for s in sources])
    ds = load_dataset(resolve_dataset(metas[0], dataset), data_dir, progress=False)
    images, labels = ds.split(split)
    members: list[dict[str, Any]] = []
    predictions: list[torch.Tensor] = []
    total: torch.Tensor | None = None
    total_tta: torch.Tensor | None = None
    for src in sources:
        model, meta = load_checkpoint(src, device=resolve_device(device))
        probs = predict_proba(model, images)
        predictions.append(probs.argmax(1))
        members.append({"source": str(src), "model": meta["model"], "model_kwargs": meta.get("model_kwargs", {}),
                        "accuracy": float((predictions[-1] == labels).float().mean())})
        total = probs if total is None else total + probs
        if tta:
            p_tta = predict_proba(model, images, tta=True, unshifted=probs)
            members[-1]["tta_accuracy"] = float((p_tta.argmax(1) == labels).float().mean())
            total_tta = p_tta if total_tta is None else total_tta + p_tta
    assert total is not None
    prediction = total.argmax(1)
    result: dict[str, Any] = {
        "dataset": ds.name, "class_names": list(ds.spec.class_names), "split": split, "n": int(labels.numel()),
        "members": members, "accuracy": float((prediction == labels).float().mean()),
        "member_accuracy_mean": sum(m["accuracy"] for m in members) / len(members),
        "errors": error_overlap(predictions, prediction, labels),
        "mistakes": ensemble_mistakes(predictions, total / len(members), labels, list(ds.spec.class_names))}
    result["tta_accuracy"] = (float((total_tta.argmax(1) == labels).float().mean())
                              if total_tta is not None else None)
    if plots is not None:
        title = (f"Ensemble of {len(members)}: {len(result['mistakes'])} mistakes on {result['n']:,} {ds.name} "
                 f"{split} images (true→predicted, confidence; members also wrong)")
        folder = ensure_new_dir(plots, "plots folder")
        target = folder / MISTAKES_PNG
        write_new_bytes_atomic(target, mistakes_png(images, result["mistakes"], len(members), title,
                                                    class_names=result["class_names"]))
        result["plots"] = str(folder)
        result["plot"] = str(target)
    return result
