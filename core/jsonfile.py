"""Small frozen dataclasses kept as JSON files (a calibration, an ensemble spec): written
atomically, read back with their tuple fields restored, a bad file reported as a WeightsError
that says what was expected."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence, TypeVar

from core.errors import WeightsError

T = TypeVar("T")


def save_record(record, path: Path) -> Path:
    """``record`` (a dataclass) as indented JSON at ``path``, written to a temporary file first so
    a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1))
    tmp.replace(path)
    return path


def load_record(cls: type[T], path: Path, tuples: Sequence[str], expected: str, hint: str = "") -> T:
    """The ``cls`` saved at ``path``; the ``tuples`` fields (JSON lists) become tuples again.
    ``hint`` (what makes such a file) ends the error message."""
    try:
        data = json.loads(Path(path).read_text())
        return cls(**{**data, **{name: tuple(data.get(name, ())) for name in tuples}})
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(f"expected {expected} at {path}: {exc}" + (f"; {hint}" if hint else "")) from None
