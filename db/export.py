"""Export reviewed photos as a dataset (YOLO or COCO) in the taxonomy's 9-class label space.

The YOLO export reads back through ``core.data.load_dataset`` and is what ``train`` consumes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from db.store import Store

FORMATS = ("yolo", "coco")


def export(store: Store, out: Path, fmt: str = "yolo", split: str = "train") -> dict:
    """Write the dataset; returns counts."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, found {fmt!r}")
    tax = store.taxonomy
    photos = store.reviewed_photos()
    out = Path(out)
    img_dir = out / split / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    n_objects = 0
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(tax.class_names)]}
    for entry in photos:
        p = entry.photo
        name = f"{p.sha256[:16]}{Path(p.path).suffix or '.png'}"
        shutil.copyfile(p.path, img_dir / name)
        lines = []
        # A still-pending object of a reviewed photo is written with the model's label.
        for o in (f for f in entry.findings if f.class_name):
            box = o.box
            cx, cy, w, h = box.to_cxcywh_norm(p.width, p.height)
            lines.append(f"{tax.class_id(o.class_name)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            coco["annotations"].append({"id": o.finding_id, "image_id": p.id, "category_id": tax.class_id(o.class_name),
                                        "bbox": [box.x1, box.y1, box.width, box.height], "area": box.area, "iscrowd": 0})
        n_objects += len(lines)
        coco["images"].append({"id": p.id, "file_name": f"{split}/images/{name}", "width": p.width, "height": p.height})
        if fmt == "yolo":
            (out / split / "labels").mkdir(parents=True, exist_ok=True)
            (out / split / "labels" / f"{Path(name).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    if fmt == "yolo":
        (out / "data.yaml").write_text(yaml.safe_dump({split: f"{split}/images", "nc": len(tax.class_names), "names": tax.class_names}, sort_keys=False))
    else:
        (out / "annotations.json").write_text(json.dumps(coco, indent=2))
    return {"photos": len(photos), "objects": n_objects, "format": fmt, "out": str(out)}


@dataclass(frozen=True)
class ExportConfig:
    """Settings of ``slopewatch export``.

    Attributes:
        out: output folder.
        db: the review database (default: the one in the data dir).
        format: yolo or coco.
        split: split name to write the photos under.
    """

    out: Path
    db: Path | None = None
    format: str = "yolo"
    split: str = "train"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: expected one of {FORMATS}, found {self.format!r}")


def run_export(cfg: ExportConfig) -> dict:
    return export(Store(cfg.db), cfg.out, cfg.format, cfg.split)
