"""``slopewatch train evidence``: build the neighbour index rationales cite (``core.stage2.evidence``).

The index holds one split of a condition-labelled dataset, by default ``train``: evaluation on
``valid`` then never finds a valid photo among an object's neighbours (the build refuses a split
named like an evaluation split unless told otherwise). The encoder is frozen, so the index does
not depend on the stage-2 model and survives every nightly promotion; the app adds the objects
reviewers confirmed when it loads its models.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from core.stage2.evidence import default_index_path, index_from_photos

EVALUATION_SPLITS = ("valid", "val", "test")


@dataclass
class EvidenceConfig:
    """Settings of ``slopewatch train evidence``.

    Attributes:
        data_yaml: a YOLO export labelled with condition classes.
        split: the split whose objects become the index (never the one you report on).
        out: where to write the index (default: the shipped one in assets/models/evidence).
        allow_evaluation_split: build from valid/test anyway (their figures then stop being honest).
    """

    data_yaml: Path
    split: str = "train"
    out: Path | None = None
    allow_evaluation_split: bool = False

    def __post_init__(self) -> None:
        if self.split in EVALUATION_SPLITS and not self.allow_evaluation_split:
            raise ValueError(f"split: expected a training split, found {self.split!r} (an evaluation split; "
                             "pass --allow-evaluation-split true to build from it anyway)")


def build_evidence(cfg: EvidenceConfig) -> dict:
    """Encode every labelled object of the split and save the index; returns its counts."""
    from tqdm.auto import tqdm

    from core.data import load_dataset
    from core.stage2.labeled import LabeledPhoto, ground_truth

    ds = load_dataset(cfg.data_yaml)
    named = ((LabeledPhoto(image, tuple(dets), tuple(classes), key), f"{cfg.split}/{sample.stem}")
             for sample, image, dets, classes, key in ground_truth(ds, cfg.split))
    index = index_from_photos(named, ds.taxonomy, progress=lambda items, desc: tqdm(items, desc=desc, total=len(ds.samples(cfg.split))))
    path = index.save(cfg.out or default_index_path())
    return {"index": str(path), "objects": len(index), "photos": len(set(index.photos)), "split": cfg.split,
            "per_class": dict(sorted(Counter(index.classes).items())), "bytes": path.stat().st_size}
