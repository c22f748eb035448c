"""Probability-averaging ensembles, optionally with test-time augmentation (small shifts)."""

from __future__ import annotations

import torch

from digitlab.data.batches import to_float

#: Test-time shifts in pixels (dx, dy): the identity and the four one-pixel neighbours.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shift_images(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate a float batch by whole pixels, filling with zeros (background)."""
    if dx == 0 and dy == 0:
        return x
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def predict_proba(model: torch.nn.Module, images_u8: torch.Tensor, tta: bool = False,
                  batch_size: int = 1000, unshifted: torch.Tensor | None = None) -> torch.Tensor:
    """Class probabilities, averaged over :data:`TTA_SHIFTS` when ``tta``.

    ``unshifted``: the model's probabilities on the original images, when the
    caller already has them (saves one of the five passes).
    """
    from digitlab.evaluate.inference import predict_proba as batched_proba

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
                      labels: torch.Tensor) -> list[dict]:
    """The images the ensemble gets wrong, each with how many members got it wrong too.

    One dict per mistake, in test-set order: ``index``, ``label``, ``prediction``,
    ``confidence`` (the ensemble's probability for its prediction) and
    ``members_wrong`` (out of ``len(member_predictions)``).
    """
    confidence, prediction = ensemble_probs.max(1)
    n_wrong = members_wrong(member_predictions, labels).sum(0)
    return [{"index": i, "label": int(labels[i]), "prediction": int(prediction[i]),
             "confidence": float(confidence[i]), "members_wrong": int(n_wrong[i])}
            for i in torch.nonzero(prediction != labels).flatten().tolist()]


#: At most this many mistakes are drawn (15 rows of 8); the JSON lists them all.
MAX_PLOTTED_MISTAKES = 120


def mistakes_png(images_u8: torch.Tensor, mistakes: list[dict], n_members: int, title: str) -> bytes:
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
        [m["confidence"] for m in mistakes],
        notes=[f"{m['members_wrong']}/{n_members} wrong" for m in mistakes], title=title)


def ensemble_runs(sources: list[str], dataset: str = "mnist", data_dir: str | None = None,
                  split: str = "test", tta: bool = False, plot: str | None = None) -> dict:
    """Average the members' class probabilities on ``split``; per-member and ensemble accuracy.

    Also reports :func:`error_overlap` and :func:`ensemble_mistakes` of the plain
    (no TTA) predictions; ``plot`` writes :func:`mistakes_png` to that new PNG file.
    """
    from digitlab.data import load_dataset
    from digitlab.train.checkpoint import load_checkpoint
    from digitlab.utils import refuse_existing, write_new_bytes_atomic

    if plot is not None:
        refuse_existing(plot)  # fail before minutes of inference, not after
    ds = load_dataset(dataset, data_dir, progress=False)
    images, labels = ds.split(split)
    members, predictions, total, total_tta = [], [], None, None
    for src in sources:
        model, meta = load_checkpoint(src)
        probs = predict_proba(model, images)
        predictions.append(probs.argmax(1))
        members.append({"source": str(src), "model": meta["model"], "model_kwargs": meta.get("model_kwargs", {}),
                        "accuracy": float((predictions[-1] == labels).float().mean())})
        total = probs if total is None else total + probs
        if tta:
            p_tta = predict_proba(model, images, tta=True, unshifted=probs)
            members[-1]["tta_accuracy"] = float((p_tta.argmax(1) == labels).float().mean())
            total_tta = p_tta if total_tta is None else total_tta + p_tta
    prediction = total.argmax(1)
    result = {"split": split, "n": int(labels.numel()), "members": members,
              "accuracy": float((prediction == labels).float().mean()),
              "member_accuracy_mean": sum(m["accuracy"] for m in members) / len(members),
              "errors": error_overlap(predictions, prediction, labels),
              "mistakes": ensemble_mistakes(predictions, total / len(members), labels)}
    result["tta_accuracy"] = (float((total_tta.argmax(1) == labels).float().mean())
                              if total_tta is not None else None)
    if plot is not None:
        title = (f"Ensemble of {len(members)}: {len(result['mistakes'])} mistakes on {result['n']:,} {split} images "
                 "(true→predicted, confidence; members also wrong)")
        write_new_bytes_atomic(plot, mistakes_png(images, result["mistakes"], len(members), title))
        result["plot"] = str(plot)
    return result
