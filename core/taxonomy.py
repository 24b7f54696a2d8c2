"""The inspection taxonomy: object types, conditions and upstream class names.

It is defined once, in a small TOML file (``assets/taxonomy/drainage.toml`` by default), and
every other module asks it for labels. Another inspection domain loads its own file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from core.errors import TaxonomyError
from core.paths import default_taxonomy_file

# Condition keys of classes without a condition, and of objects without a class.
NO_CONDITION = "none"
UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class ObjectType:
    """A stage-1 object type (a detector class)."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class ConditionClass:
    """A stage-2 class: an upstream label name mapped to (object type, condition).

    ``condition`` is ``None`` for types that carry no condition (vegetation).
    """

    name: str
    type: str
    condition: str | None

    @property
    def condition_key(self) -> str:
        """The condition as a colour/grouping key: ``"none"`` for types without conditions."""
        return self.condition or NO_CONDITION


@dataclass(frozen=True)
class Taxonomy:
    """Object types and condition classes of one inspection domain, in label-id order."""

    name: str
    types: tuple[ObjectType, ...]
    conditions: tuple[str, ...]
    classes: tuple[ConditionClass, ...]
    _by_class: dict[str, ConditionClass] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        type_names = [t.name for t in self.types]
        if not type_names:
            raise TaxonomyError(f"taxonomy {self.name!r}: expected at least one type, found none")
        for label, names in (("type", type_names), ("class", [c.name for c in self.classes])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise TaxonomyError(f"taxonomy {self.name!r}: expected unique {label} names, found repeats {dupes}")
        for c in self.classes:
            if c.type not in type_names:
                raise TaxonomyError(
                    f"taxonomy {self.name!r}: class {c.name!r} names type {c.type!r}; expected one of {type_names}"
                )
            if c.condition is not None and c.condition not in self.conditions:
                raise TaxonomyError(
                    f"taxonomy {self.name!r}: class {c.name!r} has condition {c.condition!r}; "
                    f"expected one of {list(self.conditions)} or none"
                )
        pairs = [(c.type, c.condition) for c in self.classes]
        dupes = sorted({p for p in pairs if pairs.count(p) > 1}, key=str)
        if dupes:
            raise TaxonomyError(f"taxonomy {self.name!r}: expected one class per (type, condition), found repeats {dupes}")
        object.__setattr__(self, "_by_class", {c.name: c for c in self.classes})

    # --- lookups -------------------------------------------------------------------------
    @property
    def type_names(self) -> list[str]:
        return [t.name for t in self.types]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def type_id(self, type_name: str) -> int:
        try:
            return self.type_names.index(type_name)
        except ValueError:
            raise TaxonomyError(f"unknown object type {type_name!r}; expected one of {self.type_names}") from None

    def class_id(self, class_name: str) -> int:
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise TaxonomyError(f"unknown class {class_name!r}; expected one of {self.class_names}") from None

    def get_class(self, class_name: str) -> ConditionClass:
        try:
            return self._by_class[class_name]
        except KeyError:
            raise TaxonomyError(f"unknown class {class_name!r}; expected one of {self.class_names}") from None

    def condition_key(self, class_name: str | None) -> str:
        """A class's condition key (``"none"`` without a condition, ``"unlabelled"`` for no class)."""
        return self.get_class(class_name).condition_key if class_name else UNLABELLED

    def classes_for_type(self, type_name: str) -> list[ConditionClass]:
        """Candidate stage-2 classes of one object type, in label-id order."""
        self.type_id(type_name)
        return [c for c in self.classes if c.type == type_name]

    def needs_condition(self, type_name: str) -> bool:
        """Whether objects of this type need a stage-2 call (more than one candidate class)."""
        return len(self.classes_for_type(type_name)) > 1

    def class_for(self, type_name: str, condition: str | None) -> ConditionClass:
        for c in self.classes_for_type(type_name):
            if c.condition == condition:
                return c
        raise TaxonomyError(f"no class for type {type_name!r} with condition {condition!r}")

    def label_space(self, names: list[str]) -> str:
        """Which label space a dataset's class names are in: ``"types"`` or ``"classes"``.

        Raises:
            TaxonomyError: the names are neither all types nor all classes of this taxonomy.
        """
        if names and all(n in self.type_names for n in names):
            return "types"
        if names and all(n in self._by_class for n in names):
            return "classes"
        raise TaxonomyError(
            f"dataset names {names} are neither this taxonomy's types {self.type_names} "
            f"nor its classes {self.class_names}"
        )


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy TOML file (default: the shipped drainage taxonomy)."""
    return _load(Path(path) if path else default_taxonomy_file())


@lru_cache(maxsize=8)
def _load(path: Path) -> Taxonomy:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaxonomyError(f"taxonomy file not found: expected a TOML file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TaxonomyError(f"{path}: expected valid TOML, found a syntax error: {exc}") from None
    try:
        types = tuple(ObjectType(str(t["name"]), str(t.get("description", ""))) for t in raw["types"])
        classes = tuple(
            ConditionClass(str(c["name"]), str(c["type"]), c.get("condition")) for c in raw.get("classes", [])
        )
        if not classes:
            # A domain without conditions: one class per type, named after it.
            classes = tuple(ConditionClass(t.name, t.name, None) for t in types)
        return Taxonomy(
            name=str(raw.get("name", path.stem)),
            types=types,
            conditions=tuple(str(c) for c in raw.get("conditions", [])),
            classes=classes,
        )
    except (KeyError, TypeError) as exc:
        raise TaxonomyError(f"{path}: expected [[types]] tables with a 'name' key; missing {exc}") from None
