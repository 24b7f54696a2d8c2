"""Stage 1's half of ``slopewatch train nightly``: reviewers' box corrections fine-tune the detector.

* Training photos: the dataset's train split (replay) plus every *done* photo (a reviewer
  confirmed it with nothing pending: its boxes are the complete truth). A partly reviewed photo
  never teaches "background": the objects nobody looked at may be missed ones.
* Frozen evaluation: a dataset split plus the done photos held out by content hash (the same
  ``held_out`` slice as stage 2, so a photo is held out for both stages or for neither).
* Fine-tune a copy of the current detector (short, constant low learning rate, no warm-up: a
  warm-up's high rate knocks trained weights back), score current and candidate on the frozen set
  in one run, promote past ``train.gate.decide_detector``.
The run reads the same DB snapshot as stage 2 and only ever writes a temp folder until promotion.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.attribution import STAGE1, Kind
from core.data import file_sha256
from core.errors import SlopewatchError
from core.types import Box


@dataclass(frozen=True)
class BoxPhoto:
    """A photo with complete type-labelled boxes (pixels), keyed by content hash."""

    key: str
    image_path: Path
    width: int
    height: int
    boxes: tuple[tuple[str, Box], ...]

    @classmethod
    def from_sample(cls, sample) -> "BoxPhoto":
        """A dataset sample (``core.data.Sample``): its ground-truth objects' types."""
        return cls(file_sha256(sample.image_path), sample.image_path, sample.width, sample.height,
                   tuple((o.type, o.box) for o in sample.objects))

    @classmethod
    def from_reviewed(cls, reviewed) -> "BoxPhoto":
        """A done photo of the store (``db.rows.ReviewedPhoto``): its live boxes as reviewers left them."""
        p = reviewed.photo
        return cls(p.sha256, Path(p.path), p.width, p.height, tuple((f.object_type, f.box) for f in reviewed.findings))

    def yolo_lines(self, taxonomy) -> list[str]:
        return [box.yolo_line(taxonomy.type_id(t), self.width, self.height) for t, box in self.boxes]


def write_yolo(splits: dict[str, list[BoxPhoto]], out: Path, taxonomy) -> Path:
    """A type-labelled YOLO dataset for ultralytics (images linked, named by hash so two uploads
    called ``DJI_0001.jpg`` cannot overwrite each other; a photo listed twice is written twice);
    returns its ``data.yaml``."""
    import yaml

    for split, photos in splits.items():
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "labels").mkdir(parents=True, exist_ok=True)
        seen: dict[str, int] = {}
        for p in photos:
            # A photo listed k times (reviewed photos, oversampled) is written k times.
            seen[p.key] = seen.get(p.key, 0) + 1
            link = out / split / "images" / f"{p.key[:16]}-{seen[p.key]}{p.image_path.suffix.lower()}"
            if not link.exists():
                try:
                    os.symlink(p.image_path.resolve(), link)
                except OSError:
                    link.write_bytes(p.image_path.read_bytes())
            lines = p.yolo_lines(taxonomy)
            (out / split / "labels" / f"{link.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    spec = {"path": str(out.resolve()), **{s: f"{s}/images" for s in splits}, "names": dict(enumerate(taxonomy.type_names))}
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out / "data.yaml"


def support(photos: list[BoxPhoto], taxonomy) -> dict[str, int]:
    counts = {t: 0 for t in taxonomy.type_names}
    for p in photos:
        for t, _ in p.boxes:
            counts[t] += 1
    return counts


def ensure_current_detector(registry) -> str:
    """The current detector version; on first use the shipped detector becomes 'shipped-<hash>'."""
    from core.stage1.calibration import calibration_path
    from core.stage1.detector import shipped_detector_path

    if registry.current():
        return registry.current()
    shipped = shipped_detector_path()
    sha = file_sha256(shipped)
    version = "shipped-" + sha[:12]
    if version not in [v["version"] for v in registry.versions()]:
        with tempfile.TemporaryDirectory(dir=registry.root) as tmp:
            folder = Path(tmp)
            shutil.copyfile(shipped, folder / "detector.pt")
            if calibration_path(shipped).is_file():  # the shipped box calibration follows its weights
                shutil.copyfile(calibration_path(shipped), calibration_path(folder / "detector.pt"))
            registry.add(folder, version, {"sha256": sha})
    registry.promote(version, "bootstrap from the shipped detector", data_until=0.0)
    return version


def finetune(weights: Path, data_yaml: Path, out: Path, cfg) -> Path:
    """A short fine-tune of ``weights`` on ``data_yaml``'s train split; returns the last checkpoint."""
    from core.device import resolve_device
    from core.stage1.detector import ultralytics_module, ultralytics_to_stderr

    model = ultralytics_module().YOLO(str(weights), task="detect")
    imgsz = int((getattr(model, "overrides", {}) or {}).get("imgsz") or 320)
    with ultralytics_to_stderr():  # its epoch bars: the nightly prints its JSON on stdout
        model.train(data=str(data_yaml), epochs=cfg.detector_epochs, imgsz=imgsz, batch=cfg.detector_batch, device=resolve_device("auto"),
                    optimizer="AdamW", lr0=cfg.detector_lr, lrf=1.0, warmup_epochs=0, cos_lr=False,
                    flipud=0.0, fliplr=0.5, mosaic=cfg.detector_mosaic, close_mosaic=0, freeze=cfg.detector_freeze or None,
                    val=False, plots=False, amp=False, workers=cfg.detector_workers,
                    seed=0, deterministic=True, project=str(out), name="train", exist_ok=True, verbose=False)
    last = out / "train" / "weights" / "last.pt"
    if not last.is_file():
        raise SlopewatchError(f"detector fine-tune finished without a checkpoint: expected {last}")
    return last


def nightly_detector(cfg, taxonomy, live, snap, work: Path, started: float) -> dict:
    """One stage-1 cycle over the snapshot ``snap``; returns its record (also written to
    ``training_runs`` with stage ``detector`` unless nothing was new)."""
    from core.data import load_dataset
    from core.evaluation.detector import score_detection_set
    from core.model_registry import ModelRegistry
    from core.stage1.detector import Detector, DetectorConfig, current_detector
    from train.gate import DetectorGateConfig, decide_detector
    from train.holdout import LeakError, held_out

    t0 = time.time()
    registry = ModelRegistry(cfg.detector_registry, stage="detector")
    current = ensure_current_detector(registry)
    # The detector learns from done photos only, so a photo marked done (again) is what is new to
    # it; box corrections on photos nobody has finished wait for that.
    cutoff = registry.data_until(current)
    new = live.confirmations_since(cutoff)
    if new == 0:
        waiting = live.corrections_since(cutoff, kinds=STAGE1 | {Kind.LABEL})
        return {"decision": "nothing-new", "current": current,
                "message": f"no photo marked done since the current detector ({current}) was promoted"
                           + (f"; {waiting} box or label correction(s) wait on photos not marked done (Photo done)" if waiting else "")}
    done = [BoxPhoto.from_reviewed(p) for p in snap.done_photos()]
    replay_yaml = cfg.detector_train_yaml or cfg.train_yaml
    replay = list(map(BoxPhoto.from_sample, load_dataset(replay_yaml, taxonomy).samples("train"))) if replay_yaml else []
    replay_keys = {b.key for b in replay}
    frozen = [p for p in done if held_out(p.key, cfg.holdout_percent, trained=replay_keys)]
    train = [p for p in done if not held_out(p.key, cfg.holdout_percent, trained=replay_keys)]
    if not train:
        return {"decision": "nothing-complete", "current": current, "new_corrections": new,
                "message": f"{new} photo(s) marked done since {current}, all in the held-out evaluation slice: nothing to "
                           "train on yet (a detector learns only from done photos outside it)"}
    reviewed_keys = {p.key for p in train}
    # The same photo reviewed and in the dataset: the reviewers' boxes win.
    train += [b for b in replay if b.key not in reviewed_keys]
    frozen_yaml = cfg.detector_frozen_yaml or cfg.frozen_yaml
    if frozen_yaml:
        frozen += [BoxPhoto.from_sample(s) for s in load_dataset(frozen_yaml, taxonomy).samples(cfg.frozen_split)]
    leak = {p.key for p in train} & {p.key for p in frozen}
    if leak:
        raise LeakError(f"{len(leak)} frozen-evaluation photo(s) also in the detector's training data, e.g. {sorted(leak)[0]}; aborting")
    if not frozen:
        raise SlopewatchError("expected a frozen evaluation set for the detector, found none: "
                              "pass --frozen-yaml or raise --holdout-percent")
    data_hash = hashlib.sha256(json.dumps(sorted((p.key, p.yolo_lines(taxonomy)) for p in train)).encode()).hexdigest()[:16]

    # The reviewed photos are few beside the replay; repeating them gives reviewers' fixes weight.
    reviewed = [p for p in train if p.key in reviewed_keys]
    det_yaml = write_yolo({"train": train + reviewed * (cfg.detector_reviewed_repeat - 1), "val": frozen}, work / "detector-data", taxonomy)
    sup = support(frozen, taxonomy)
    weights, _ = current_detector(registry.root, current)  # checked against the hash recorded when it was added
    # Scored with torch: an ONNX export per candidate would only cost time here.
    current_detector = Detector(DetectorConfig(weights=weights, runtime="torch"), taxonomy)
    cur_metrics = score_detection_set(current_detector, det_yaml, "val", sup, work / "val-current")
    candidate_pt = finetune(weights, det_yaml, work / "detector-run", cfg)
    cand_metrics = score_detection_set(Detector(DetectorConfig(weights=candidate_pt, runtime="torch"), taxonomy), det_yaml, "val", sup,
                                       work / "val-candidate")
    promote, reasons = decide_detector(cand_metrics, cur_metrics, DetectorGateConfig(max_map50_95_drop=cfg.max_map50_95_drop,
                                                                                       max_ap50_drop=cfg.max_ap50_drop))
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + data_hash[:8]
    keys = ("map50", "map50_95", "precision", "recall", "per_class")
    result = {
        "decision": "promoted" if promote else "refused", "reasons": reasons, "new_corrections": new,
        "current": current, "candidate": version if promote else None,
        "correction_kinds": live.correction_kinds(cutoff)["total"],
        "counts": {"train_photos": len(train), "reviewed_train_photos": len(reviewed_keys), "train_boxes": sum(len(p.boxes) for p in train),
                   "frozen_photos": len(frozen), "frozen_boxes": sum(sup.values())},
        "current_metrics": {k: cur_metrics[k] for k in keys}, "candidate_metrics": {k: cand_metrics[k] for k in keys},
        "data_hash": data_hash,
    }
    if promote:
        folder = work / "detector-candidate"
        folder.mkdir()
        os.replace(candidate_pt, folder / "detector.pt")
        registry.add(folder, version, {**result["candidate_metrics"], "sha256": file_sha256(folder / "detector.pt")})
        registry.promote(version, "; ".join(reasons), data_until=started)
    result["duration_s"] = round(time.time() - t0, 1)
    # The stored record carries the kinds of the corrections made since the current model's cut-off.
    live.record_training_run(started, data_hash, {**result["counts"], "correction_kinds": result["correction_kinds"]},
                             result["candidate_metrics"], result["current_metrics"], result["decision"], version, result["duration_s"],
                             stage="detector", reasons=reasons)
    return result
