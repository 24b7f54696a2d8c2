"""``slopewatch repair``: a one-off pass that brings rows stored before boxes and texts were
checked (``db.checks.check_box``, ``check_text``) inside the rules, as appended corrections."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from db.corrections import REPAIR_REVIEWER
from db.store import Store


@dataclass(frozen=True)
class RepairConfig:
    """Settings of ``slopewatch repair``.

    Attributes:
        db: the review database (default: the one in the data dir).
        dry_run: only count the findings that would change; write nothing.
    """

    db: Path | None = None
    dry_run: bool = False


def run_repair(cfg: RepairConfig) -> dict:
    store = Store(cfg.db)
    if cfg.dry_run:
        return {"db": store.path, "would_repair": store.needs_repair()}
    repairs = store.repair()
    return {"db": store.path, "repaired": len(repairs), "reviewer": REPAIR_REVIEWER,
            "clamped": sum(r.after is not None and r.after != r.before for r in repairs),
            "deleted": sum(r.after is None for r in repairs), "texts_cut": sum(bool(r.texts_cut) for r in repairs),
            "findings": [{"finding_id": r.finding_id, "photo_id": r.photo_id, "before": r.before, "after": r.after,
                          "texts_cut": list(r.texts_cut)} for r in repairs]}
