"""Export reviewed photos as a dataset (YOLO or COCO) in the taxonomy's 9-class label space.

By default only done photos (confirmed by a reviewer, nothing pending, no edit since) are
written: a dataset of "reviewed" labels must not contain the model's unchecked guesses. With
``include_unreviewed`` every other photo with findings is written too, with its current labels,
and ``manifest.json`` (and COCO's image entries) say which is which.

Photos keep their upload names and go to ``train`` or ``valid`` by a hash of their content, so
a photo stays in the same split from one export to the next. The YOLO export reads back through
``core.data.load_dataset`` and is what ``train`` consumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath

import yaml

from core.errors import SlopewatchError
from core.types import Box
from db.rows import PhotoRecord, ReviewedPhoto
from db.store import Store

FORMATS = ("yolo", "coco")
SPLITS = ("train", "valid")


class ExportError(SlopewatchError):
    """The review data cannot be written as a dataset as it stands (a bad box, a non-empty target)."""


def _check_percent(valid_percent) -> None:
    if isinstance(valid_percent, bool) or not isinstance(valid_percent, int) or not 0 <= valid_percent <= 100:
        raise ValueError(f"valid_percent: expected an integer in 0..100, found {valid_percent!r}")


def split_of(photo_sha256: str, valid_percent: int) -> str:
    """``valid`` for about ``valid_percent`` % of photos, chosen by content hash: stable across
    exports and machines, and independent of upload order (salted so it is not the file-name prefix)."""
    bucket = int(hashlib.sha256(f"split:{photo_sha256}".encode()).hexdigest()[:8], 16) % 100
    return "valid" if bucket < valid_percent else "train"


def _safe_name(photo: PhotoRecord) -> str:
    """The upload name without any directory part (a name like ``../../x.png`` or ``C:\\x.png`` must
    not write outside the export), with the stored file's suffix: the bytes written are the stored
    upright PNG, and a ``.jpg`` name on PNG bytes would mislead any reader that trusts the suffix."""
    stored = PurePath(photo.path)
    base = PureWindowsPath(photo.original_name or "").name  # splits on both "/" and "\\"
    base = "".join(c if c.isprintable() else "_" for c in base).strip()
    if not base.strip("."):  # "", "." or "..": no name to keep
        return stored.name
    stem = PurePath(base).stem
    # Room for the "-<sha256>" a clash adds, under the usual 255-byte limit on a file name.
    stem = stem.encode()[:150].decode(errors="ignore")
    suffix = PurePath(base).suffix
    return stem + (suffix if suffix.lower() == stored.suffix.lower() else stored.suffix)


def _unique_names(photos: list[PhotoRecord]) -> dict[int, str]:
    """A file name per photo id, unique within the export. Compared by case-folded stem: YOLO pairs
    ``a.png`` with ``a.txt``, and ``A.png``/``a.png`` are one file on a case-insensitive disk.
    On a clash the later upload gets ``-<first 8 of its sha256>`` (the full hash if even that clashes)."""
    taken: set[str] = set()
    names = {}
    for p in photos:
        name = _safe_name(p)
        stem, suffix = PurePath(name).stem, PurePath(name).suffix
        for candidate in (stem, f"{stem}-{p.sha256[:8]}", f"{stem}-{p.sha256}"):
            if candidate.casefold() not in taken:
                break
        taken.add(candidate.casefold())
        names[p.id] = candidate + suffix
    return names


@dataclass(frozen=True)
class _Label:
    finding_id: int
    class_id: int
    box: Box


def _labels(entry: ReviewedPhoto, class_id) -> list[_Label]:
    """The photo's live findings as labels, boxes clamped to the photo (and its stored file checked).

    Raises:
        ExportError: the stored photo is missing, a finding has no class, or a box has no area
            inside the photo.
    """
    p = entry.photo
    if not Path(p.path).is_file():
        raise ExportError(f"photo {p.id}: expected its stored file at {p.path}, found nothing")
    labels = []
    for f in entry.findings:
        if not f.class_name:
            raise ExportError(f"photo {p.id} finding {f.finding_id}: expected a class, found none")
        # A box drawn a pixel past the edge is the reviewer's intent; clamp it. One wholly outside,
        # or flat, is a data error: refused, because skipping it would silently drop an object.
        x1, x2 = (min(max(v, 0.0), p.width) for v in (f.x1, f.x2))
        y1, y2 = (min(max(v, 0.0), p.height) for v in (f.y1, f.y2))
        if x2 <= x1 or y2 <= y1:
            raise ExportError(
                f"photo {p.id} ({p.original_name or PurePath(p.path).name}) finding {f.finding_id}: expected a box with area "
                f"inside the {p.width}x{p.height} photo, found ({f.x1:g}, {f.y1:g}, {f.x2:g}, {f.y2:g}) "
                f"-> ({x1:g}, {y1:g}, {x2:g}, {y2:g}) after clamping")
        labels.append(_Label(f.finding_id, class_id(f.class_name), Box(x1, y1, x2, y2)))
    return labels


def export(store: Store, out: Path, fmt: str = "yolo", include_unreviewed: bool = False, valid_percent: int = 0) -> dict:
    """Write the dataset into ``out`` (new or empty).

    Args:
        store: the review store.
        out: output folder; refused when it already holds files (old ones would mix in).
        fmt: ``yolo`` (``<split>/images``, ``<split>/labels``, ``data.yaml``) or ``coco``
            (``<split>/images`` and ``annotations.json``). Both also write ``manifest.json``.
        include_unreviewed: also write every photo with findings that is not done, marked
            ``"reviewed": false`` in the manifest (and in COCO's image entries).
        valid_percent: 0..100: the share of photos put in ``valid`` by content hash (``split_of``).

    Returns:
        ``{"photos", "reviewed_photos", "unreviewed_photos", "left_out_not_done", "objects",
        "splits": {"train", "valid"}, "format", "out"}`` (``left_out_not_done``: stored photos not
        done yet, not written without ``include_unreviewed``).

    Raises:
        ExportError: a label that cannot be written, or a non-empty ``out``; nothing is written then.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, found {fmt!r}")
    _check_percent(valid_percent)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: expected a new or empty folder, found a file")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: expected a new or empty folder, found {sum(1 for _ in out.iterdir())} entries")
    tax = store.taxonomy
    entries = store.labelled_photos()
    chosen = [(entry, done) for entry, done in entries if done or include_unreviewed]
    names = _unique_names([entry.photo for entry, _ in chosen])
    # Every label is checked before the first file is written: a refused export leaves no half dataset.
    planned = [(entry, done, split_of(entry.photo.sha256, valid_percent), _labels(entry, tax.class_id)) for entry, done in chosen]

    out.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(tax.class_names)]}
    manifest = []
    splits = dict.fromkeys(SPLITS, 0)
    for entry, done, split, labels in planned:
        p, name = entry.photo, names[entry.photo.id]
        img_dir = out / split / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p.path, img_dir / name)
        if fmt == "yolo":
            lines = [lab.box.yolo_line(lab.class_id, p.width, p.height) for lab in labels]
            (out / split / "labels").mkdir(parents=True, exist_ok=True)
            (out / split / "labels" / f"{PurePath(name).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        file_name = f"{split}/images/{name}"
        coco["images"].append({"id": p.id, "file_name": file_name, "width": p.width, "height": p.height, "reviewed": done})
        coco["annotations"] += [{"id": lab.finding_id, "image_id": p.id, "category_id": lab.class_id,
                                 "bbox": [lab.box.x1, lab.box.y1, lab.box.width, lab.box.height], "area": lab.box.area,
                                 "iscrowd": 0} for lab in labels]
        manifest.append({"file_name": file_name, "split": split, "sha256": p.sha256, "original_name": p.original_name,
                         "reviewed": done, "n_objects": len(labels)})
        splits[split] += 1
    if fmt == "yolo":
        # Only the splits that hold photos: load_dataset refuses a split key without its folder.
        present = {("val" if s == "valid" else s): f"{s}/images" for s in SPLITS if splits[s]}  # "val": what ultralytics reads
        note = ""
        if "train" in present and "val" not in present:
            # ultralytics refuses a data.yaml without val ("'val:' key missing"), and the default
            # export holds nothing out: val lists the train photos, and says so. (slopewatch's own
            # reader reads a folder once, so its tools see no valid split here.)
            present["val"] = present["train"]
            note = ("# No photo is held out (--valid-percent 0): val lists the train photos so that ultralytics\n"
                    "# reads this file; a score on it is not a held-out score.\n")
        spec = yaml.safe_dump({**present, "nc": len(tax.class_names), "names": tax.class_names}, sort_keys=False)
        (out / "data.yaml").write_text(note + spec)
    else:
        (out / "annotations.json").write_text(json.dumps(coco, indent=2))
    (out / "manifest.json").write_text(json.dumps({"images": manifest}, indent=2))
    n_reviewed = sum(1 for _, done, _, _ in planned if done)
    return {"photos": len(planned), "reviewed_photos": n_reviewed, "unreviewed_photos": len(planned) - n_reviewed,
            "left_out_not_done": len(entries) - len(planned),
            "objects": sum(len(labels) for *_, labels in planned), "splits": splits, "format": fmt, "out": str(out)}


@dataclass(frozen=True)
class ExportConfig:
    """Settings of ``slopewatch export``.

    Attributes:
        out: output folder (new or empty).
        db: the review database (default: the one in the data dir).
        format: yolo or coco.
        include_unreviewed: also write photos not yet confirmed, with their current labels, marked
            reviewed=false in manifest.json.
        valid_percent: share of photos (0..100) put in the valid split, chosen by photo hash.
    """

    out: Path
    db: Path | None = None
    format: str = "yolo"
    include_unreviewed: bool = False
    valid_percent: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: expected one of {FORMATS}, found {self.format!r}")
        _check_percent(self.valid_percent)


def run_export(cfg: ExportConfig) -> dict:
    import sys

    counts = export(Store(cfg.db), cfg.out, cfg.format, cfg.include_unreviewed, cfg.valid_percent)
    if counts["left_out_not_done"]:
        print(f"{counts['left_out_not_done']} stored photo(s) are not done yet and were left out: finish them in Review "
              "(Photo done), or export them marked as unreviewed with --include-unreviewed.", file=sys.stderr)
    return counts
