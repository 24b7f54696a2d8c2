"""Named exceptions. Every message says what was expected and what was found."""

from __future__ import annotations


class SlopewatchError(Exception):
    """Base class of every error slopewatch raises on purpose."""


class TaxonomyError(SlopewatchError):
    """A taxonomy file or a label does not fit the taxonomy."""


class DatasetError(SlopewatchError):
    """A dataset file is malformed. Carries the offending ``file:line`` when known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class DatasetErrors(SlopewatchError):
    """Several :class:`DatasetError` found in one pass; the reader collects them all first."""

    def __init__(self, errors: list[DatasetError]):
        self.errors = errors
        head = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} problem(s) in dataset:\n{head}{more}")


class WeightsError(SlopewatchError):
    """A model weights file is missing, unpinned or does not match its pinned hash."""


class ImageError(SlopewatchError):
    """An input file is not an image slopewatch can read safely."""
