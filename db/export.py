"""Export reviewed photos as a dataset (YOLO or COCO) in the taxonomy's 9-class label space.

The YOLO export reads back through ``core.data.load_dataset`` and is what ``train`` consumes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.types import Box
from db.store import Store

FORMATS = ("yolo", "coco")


def reviewed_objects(store: Store) -> dict[int, dict]:
    """``{photo_id: {"photo": row, "objects": [state rows]}}`` for photos with a reviewed finding;
    deleted findings are left out, unreviewed ones keep the model's label."""
    rows = store.query(
        "SELECT p.id AS photo_id, p.sha256, p.path, p.width, p.height, s.* FROM finding_state s "
        "JOIN findings f ON f.id = s.finding_id JOIN photos p ON p.id = f.photo_id ORDER BY p.id, s.finding_id"
    )
    photos: dict[int, dict] = {}
    for r in rows:
        entry = photos.setdefault(r["photo_id"], {"photo": r, "objects": [], "reviewed": False})
        entry["reviewed"] |= r["status"] == "reviewed"
        if r["status"] != "deleted" and r["class_name"]:
            entry["objects"].append(r)
    return {k: v for k, v in photos.items() if v["reviewed"]}


def export(store: Store, out: Path, fmt: str = "yolo", split: str = "train") -> dict:
    """Write the dataset; returns counts."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, found {fmt!r}")
    tax = store.taxonomy
    photos = reviewed_objects(store)
    out = Path(out)
    img_dir = out / split / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    n_objects = 0
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(tax.class_names)]}
    for pid, entry in photos.items():
        p = entry["photo"]
        name = f"{p['sha256'][:16]}{Path(p['path']).suffix or '.png'}"
        shutil.copyfile(p["path"], img_dir / name)
        lines = []
        for o in entry["objects"]:
            box = Box(o["x1"], o["y1"], o["x2"], o["y2"])
            cx, cy, w, h = box.to_cxcywh_norm(p["width"], p["height"])
            lines.append(f"{tax.class_id(o['class_name'])} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            coco["annotations"].append({"id": o["finding_id"], "image_id": pid, "category_id": tax.class_id(o["class_name"]),
                                        "bbox": [box.x1, box.y1, box.width, box.height], "area": box.area, "iscrowd": 0})
        n_objects += len(lines)
        coco["images"].append({"id": pid, "file_name": f"{split}/images/{name}", "width": p["width"], "height": p["height"]})
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
