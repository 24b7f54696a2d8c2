"""Reading Roboflow/YOLO dataset exports into typed samples.

A dataset is a ``data.yaml`` with ``names`` and split folders (``<split>/images``,
``<split>/labels``). Label lines are boxes (``c cx cy w h``) or polygons
(``c x1 y1 x2 y2 ...``, reduced to their bounding box). Class names must be either the
taxonomy's object types or its condition classes; a condition-labelled dataset also serves
as a type-labelled detection dataset through the taxonomy.

All problems in a dataset are collected first and raised together as :class:`DatasetErrors`,
each with its ``file:line``, so a bad dataset never fails halfway through a job.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image

from core.errors import DatasetError, DatasetErrors
from core.taxonomy import Taxonomy, load_taxonomy
from core.types import Box, LabeledObject

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_KEYS = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}


@dataclass(frozen=True)
class Sample:
    """One image of a dataset with its ground-truth objects (pixel boxes)."""

    image_path: Path
    width: int
    height: int
    objects: tuple[LabeledObject, ...]

    @property
    def stem(self) -> str:
        return self.image_path.stem


@dataclass
class YoloDataset:
    """A parsed YOLO export. Use :func:`load_dataset` to build one."""

    yaml_path: Path
    names: list[str]
    label_space: str  # "types" or "classes"
    taxonomy: Taxonomy
    split_dirs: dict[str, Path]
    _cache: dict[str, list[Sample]] = field(default_factory=dict, repr=False)

    @property
    def splits(self) -> list[str]:
        return list(self.split_dirs)

    def samples(self, split: str) -> list[Sample]:
        """All samples of a split, sorted by file name. Raises DatasetErrors on any bad label."""
        if split not in self.split_dirs:
            raise DatasetError(f"expected split {split!r} in {self.splits}", str(self.yaml_path))
        if split not in self._cache:
            self._cache[split] = _read_split(self, self.split_dirs[split])
        return self._cache[split]

    def write_detection_dataset(self, out_dir: Path, splits: tuple[str, ...] = ("train", "valid")) -> Path:
        """Write this dataset as a type-labelled YOLO detection dataset for ultralytics.

        Images are symlinked (copied where links are impossible); labels are rewritten as
        normalised boxes over the taxonomy's types. Returns the new ``data.yaml``.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        entries = {}
        for split in splits:
            img_dir, lbl_dir = out_dir / split / "images", out_dir / split / "labels"
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            for s in self.samples(split):
                link = img_dir / s.image_path.name
                if not link.exists():
                    try:
                        os.symlink(s.image_path.resolve(), link)
                    except OSError:
                        link.write_bytes(s.image_path.read_bytes())
                lines = [o.box.yolo_line(self.taxonomy.type_id(o.type), s.width, s.height) for o in s.objects]
                (lbl_dir / f"{s.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            entries["val" if split == "valid" else split] = f"{split}/images"
        first = next(iter(entries.values()))
        # ultralytics insists on both keys even when only one split is scored.
        entries = {"train": first, "val": first, **entries}
        spec = {"path": str(out_dir.resolve()), **entries, "names": dict(enumerate(self.taxonomy.type_names))}
        yaml_path = out_dir / "data.yaml"
        yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return yaml_path


def load_dataset(data_yaml: str | Path, taxonomy: Taxonomy | None = None) -> YoloDataset:
    """Parse ``data.yaml`` and locate its splits.

    Raises:
        DatasetError: the YAML is unreadable, has no ``names``, names classes outside the
            taxonomy, or lists no existing split folder.
    """
    taxonomy = taxonomy or load_taxonomy()
    yaml_path = Path(data_yaml)
    try:
        spec = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError("expected a data.yaml file, found nothing", str(yaml_path)) from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"expected valid YAML: {exc}", str(yaml_path)) from None
    if not isinstance(spec, dict) or "names" not in spec:
        raise DatasetError("expected a mapping with a 'names' key", str(yaml_path))
    names = spec["names"]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    names = [str(n) for n in names]
    if "nc" in spec and int(spec["nc"]) != len(names):
        raise DatasetError(f"expected nc == len(names) == {len(names)}, found nc={spec['nc']}", str(yaml_path))
    try:
        label_space = taxonomy.label_space(names)
    except Exception as exc:
        raise DatasetError(str(exc), str(yaml_path)) from None

    root = yaml_path.parent
    if spec.get("path"):
        root = Path(spec["path"]) if Path(spec["path"]).is_absolute() else yaml_path.parent / spec["path"]
    split_dirs: dict[str, Path] = {}
    for key, split in SPLIT_KEYS.items():
        if key not in spec or split in split_dirs:
            continue
        img_dir = _resolve_split_dir(root, str(spec[key]))
        if img_dir is None:
            raise DatasetError(f"split {key!r}: expected an image folder at {root / str(spec[key])}, found none", str(yaml_path))
        if img_dir.resolve() in {d.resolve() for d in split_dirs.values()}:
            continue  # a folder read already (val: train/images, so ultralytics reads the file): nothing held out
        split_dirs[split] = img_dir
    if not split_dirs:
        raise DatasetError(f"expected at least one of {sorted(SPLIT_KEYS)} keys", str(yaml_path))
    return YoloDataset(yaml_path, names, label_space, taxonomy, split_dirs)


def _resolve_split_dir(root: Path, rel: str) -> Path | None:
    candidate = root / rel
    if candidate.is_dir():
        return candidate
    # Roboflow exports write "../train/images" although the folders sit beside data.yaml.
    parts = Path(rel).parts
    while parts and parts[0] == "..":
        parts = parts[1:]
    candidate = root.joinpath(*parts) if parts else root
    return candidate if candidate.is_dir() else None


def _labels_dir(img_dir: Path) -> Path:
    return img_dir.parent / "labels" if img_dir.name == "images" else img_dir


def _read_split(ds: YoloDataset, img_dir: Path) -> list[Sample]:
    errors: list[DatasetError] = []
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    lbl_dir = _labels_dir(img_dir)
    label_files = {p.stem: p for p in sorted(lbl_dir.glob("*.txt"))} if lbl_dir.is_dir() else {}
    for stem in sorted(set(label_files) - set(images)):
        errors.append(DatasetError(f"label file has no image (expected {stem}.jpg/.png in {img_dir})", str(label_files[stem])))

    samples = []
    for stem, img_path in images.items():
        try:
            with Image.open(img_path) as im:
                width, height = im.size
        except Exception as exc:  # noqa: BLE001 - any unreadable image becomes a located error
            errors.append(DatasetError(f"expected a readable image, found {type(exc).__name__}: {exc}", str(img_path)))
            continue
        objects = []
        if stem in label_files:
            objects = _parse_label_file(ds, label_files[stem], width, height, errors)
        samples.append(Sample(img_path, width, height, tuple(objects)))
    if errors:
        raise DatasetErrors(errors)
    return samples


def parse_label_line(line: str, n_classes: int) -> tuple[int, tuple[float, float, float, float]]:
    """Parse one YOLO label line into ``(class_id, (cx, cy, w, h))`` normalised.

    Polygons are reduced to their bounding box. Raises ValueError with a reason on bad input.
    """
    parts = line.split()
    if len(parts) < 5 or (len(parts) != 5 and len(parts) % 2 == 0):
        raise ValueError(f"expected 'c cx cy w h' or 'c x1 y1 x2 y2 ...' (odd count >= 7), found {len(parts)} fields")
    try:
        cls_id = int(parts[0])
        values = [float(v) for v in parts[1:]]
    except ValueError:
        raise ValueError(f"expected an integer class and numbers, found {line.strip()!r}") from None
    if not 0 <= cls_id < n_classes:
        raise ValueError(f"class id {cls_id} out of range: expected 0..{n_classes - 1}")
    if any(not (-0.01 <= v <= 1.01) for v in values):
        raise ValueError(f"expected normalised coordinates in [0, 1], found {line.strip()!r}")
    if len(values) == 4:
        cx, cy, w, h = values
        if w < 0 or h < 0:
            raise ValueError(f"expected non-negative width/height, found w={w} h={h}")
        return cls_id, (cx, cy, w, h)
    xs, ys = values[0::2], values[1::2]
    x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
    return cls_id, ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


def _parse_label_file(ds: YoloDataset, path: Path, width: int, height: int, errors: list[DatasetError]) -> list[LabeledObject]:
    objects = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            cls_id, (cx, cy, w, h) = parse_label_line(line, len(ds.names))
        except ValueError as exc:
            errors.append(DatasetError(str(exc), str(path), lineno))
            continue
        name = ds.names[cls_id]
        box = Box.from_cxcywh_norm(cx, cy, w, h, width, height)
        if ds.label_space == "types":
            objects.append(LabeledObject(box, name))
        else:
            objects.append(LabeledObject(box, ds.taxonomy.get_class(name).type, name))
    return objects


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
