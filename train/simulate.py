"""``slopewatch train simulate-reviews``: the nightly loop on real data, with simulated reviewers.

``--stage classifier`` (here) simulates condition reviews; ``--stage detector`` box reviews
(``train.simulate_detector``). Valid photos are split in two halves by content hash. Reviewers see the current model's
findings on half A (ground-truth boxes, so stage 2 is judged alone) and correct every mistake
(accepting the rest); the nightly job then fine-tunes on those corrections (plus the dataset's
train split as replay) and is judged on half B, which it never sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from train.nightly import GATE_ON


@dataclass
class SimulateConfig:
    """Settings of ``slopewatch train simulate-reviews``.

    Attributes:
        data_yaml: condition-labelled dataset (its valid split is halved, its train split replayed).
        work: folder for the review DB, the half-B dataset and the model registry.
        epochs: nightly fine-tuning epochs.
        replay: also replay the dataset's train split during the nightly fine-tune (and, when the
            blend is served, refit the probe on it and the reviewed objects).
        max_recall_drop: largest per-class recall drop the nightly gate tolerates.
        max_ece_increase: largest rise in expected calibration error the nightly gate tolerates.
        stage: ``classifier`` (reviewers relabel conditions) or ``detector`` (reviewers fix boxes).
        review_half: the hash half of valid that reviewers see (A or B); the other one judges.
            Swapping it checks a recipe on photos that were not used to choose it.
        served: what reviewers are shown and the gate judges (classifier stage): ``ensemble``
            (the default backend) or ``adapter`` (alone); the nightly fine-tunes the adapter either way.
    """

    data_yaml: Path
    work: Path
    epochs: int = 2
    replay: bool = True
    max_recall_drop: float = 0.10
    max_ece_increase: float = 0.03
    stage: str = "classifier"
    review_half: str = "A"
    served: str = field(default="ensemble", metadata={"choices": GATE_ON})

    def __post_init__(self) -> None:
        self.data_yaml, self.work = Path(self.data_yaml), Path(self.work)
        if self.stage not in ("classifier", "detector"):
            raise ValueError(f"stage: expected classifier or detector, found {self.stage!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs: expected >= 1, found {self.epochs}")
        if self.served not in GATE_ON:
            raise ValueError(f"served: expected one of {GATE_ON}, found {self.served!r}")
        if self.review_half not in ("A", "B"):
            raise ValueError(f"review_half: expected A or B, found {self.review_half!r}")


def simulate(cfg: SimulateConfig) -> dict:
    from core.data import load_dataset
    from core.stage2 import registry as backends
    from core.stage2.backends.adapter import default_adapter_dir
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.labeled import ground_truth
    from db.checks import storable
    from db.store import Store
    from train.holdout import half, write_judge_set
    from train.nightly import NightlyConfig, nightly
    from train.simulate_detector import simulate_box_reviews

    cfg.work.mkdir(parents=True, exist_ok=True)
    if cfg.stage == "detector":
        return simulate_box_reviews(cfg)
    ds = load_dataset(cfg.data_yaml)
    tax = ds.taxonomy
    store = Store(cfg.work / "review.db", tax)
    store.ensure_user("simulated-reviewer")
    # The shipped adapter: the nightly below starts from it (its registry is new), whatever the data dir's registry serves.
    model = backends.create(cfg.served, backends.BackendOptions(tax, adapter_dir=default_adapter_dir()))
    model.config.rationale_tokens = 0  # reviewers judge labels here; rationales would only cost time
    classifier = ConditionClassifier(model, tax)
    judged = []
    corrected = accepted = degenerate = 0
    for sample, image, dets, classes, key in ground_truth(ds, "valid"):
        if half(key) != cfg.review_half:
            judged.append(sample)
            continue
        # A label under the store's minimum box (half B holds a sub-pixel one) is no object a
        # reviewer could see or the store keep: it is left out, and counted.
        keep = [i for i, d in enumerate(dets) if storable(d.box)]
        degenerate += len(dets) - len(keep)
        dets, classes = [dets[i] for i in keep], [classes[i] for i in keep]
        photo, _ = store.add_photo(key, str(sample.image_path), image.width, image.height, sample.image_path.name, "simulated-reviewer")
        t0 = time.perf_counter()
        findings = classifier.classify(image, dets, key)
        ids = store.add_run(photo.id, findings, "ground-truth-boxes", f"{model.name}:{model.version}", time.perf_counter() - t0)
        for fid, f, truth in zip(ids, findings, classes):
            if f.class_name == truth:
                store.correct(fid, 0, "simulated-reviewer", "accept")
                accepted += 1
            else:
                store.correct(fid, 0, "simulated-reviewer", "relabel", class_name=truth)
                corrected += 1
    frozen = write_judge_set(judged, cfg.work / "half-b", tax.class_names)
    started = time.time()
    result = nightly(NightlyConfig(db=cfg.work / "review.db", train_yaml=str(cfg.data_yaml) if cfg.replay else "",
                                   frozen_yaml=str(frozen), holdout_percent=0, registry=cfg.work / "registry", stages="classifier",
                                   epochs=cfg.epochs, max_recall_drop=cfg.max_recall_drop,
                                   max_ece_increase=cfg.max_ece_increase, gate_on=cfg.served))
    result["simulation"] = {"accepted": accepted, "corrected": corrected, "degenerate_labels": degenerate,
                            "nightly_wall_s": round(time.time() - started, 1)}
    return result
