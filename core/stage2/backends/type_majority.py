"""Baseline backend: always the most frequent training class of the detection's type."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from core.errors import DatasetError
from core.stage2.classifier import PhotoContext
from core.stage2.registry import BackendOptions
from core.taxonomy import Taxonomy


class TypeMajority:
    """Scores 1 for the type's most frequent class in ``class_counts``, ~0 for the others."""

    name = "type-majority"

    def __init__(self, taxonomy: Taxonomy, class_counts: dict[str, int]):
        self.taxonomy = taxonomy
        self.counts = class_counts
        self.version = hashlib.sha256(repr(sorted(class_counts.items())).encode()).hexdigest()[:12]

    def score(self, ctx: PhotoContext, targets: Sequence[int]) -> list[np.ndarray]:
        out = []
        for i in targets:
            cands = self.taxonomy.classes_for_type(ctx.detections[i].type)
            counts = np.array([self.counts.get(c.name, 0) for c in cands], dtype=float)
            p = np.full(len(cands), 1e-6)
            p[int(np.argmax(counts))] = 1.0
            out.append(p)
        return out


def from_options(options: BackendOptions) -> TypeMajority:
    """Counts the classes of ``options.dataset``'s train split."""
    ds = options.dataset
    if ds is None or "train" not in ds.splits:
        raise DatasetError("type-majority needs a train split to count classes", str(getattr(ds, "yaml_path", "")))
    counts: dict[str, int] = {}
    for s in ds.samples("train"):
        for o in s.objects:
            counts[o.class_name] = counts.get(o.class_name, 0) + 1
    return TypeMajority(options.taxonomy, counts)
