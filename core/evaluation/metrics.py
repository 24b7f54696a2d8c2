"""Classification metrics computed from labels, never hard-coded."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-label P/R/F1/support and the confusion matrix.

    Balanced accuracy and macro-F1 average over the labels that occur in ``y_true``, so a
    label absent from the evaluation set neither helps nor hurts.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"expected equal lengths, found {len(y_true)} true and {len(y_pred)} predicted labels")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label set {list(labels)}")
    cm = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(y_true, y_pred):
        cm[index[t], index[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
    present = [label for label in labels if per_class[label]["support"] > 0]
    n = len(y_true)
    return {
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "balanced_accuracy": float(np.mean([per_class[label]["recall"] for label in present])) if present else 0.0,
        "macro_f1": float(np.mean([per_class[label]["f1"] for label in present])) if present else 0.0,
        "n": n,
        "per_class": per_class,
        "labels": list(labels),
        "confusion": cm.tolist(),
    }
