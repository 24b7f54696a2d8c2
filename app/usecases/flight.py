"""Use case: ingest a whole flight. Every photo of the given files, folders and zip archives is
stored and inspected once, with a progress bar (photos/s, ETA); photos already stored (same
content hash) are skipped, so an interrupted run resumes; a bad file is listed at the end with
its reason and costs nothing else.

Zip members are read into memory one at a time and never extracted, so a member named
``../../x.jpg`` cannot write anywhere.
"""

from __future__ import annotations

import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from app.usecases.inspect import inspect_photo
from core.data import IMAGE_SUFFIXES
from core.errors import ImageError
from core.photos import MAX_UPLOAD_BYTES
from core.pipeline import Pipeline
from db.store import Store

SUFFIXES = (*IMAGE_SUFFIXES, ".heic", ".heif")


@dataclass
class FlightReport:
    """What one ingest did: photos inspected now, skipped (stored before), failed (name, reason)."""

    inspected: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # files beside the photos that are not photos (a drone's .SRT, a readme)
    objects: int = 0
    seconds: float = 0.0

    @property
    def photos_per_s(self) -> float:
        """Photos inspected per second of the ingest (models loaded before it starts). Skipped
        photos cost a hash each: counting them made a resumed run report 1,268 photos/s."""
        return self.inspected / self.seconds if self.seconds else 0.0


def photo_sources(paths: list[Path], read: bool = True, left_out: list[str] | None = None) -> Iterator[tuple[str, object]]:
    """``(name, path or bytes)`` for every photo under ``paths``: files, folders (recursive, sorted)
    and ``.zip`` archives (members with an image suffix). A path that does not exist is yielded
    as-is so that it is reported as a failure, not silently dropped. ``read=False`` lists without
    reading zip members (their source is then None): for counting. The other files of a folder or
    archive that holds photos are named in ``left_out``: skipped without a word, a flight's videos
    looked inspected."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(q for q in path.rglob("*") if q.is_file())
            photos = [q for q in files if q.suffix.lower() in SUFFIXES]
            for p in photos:
                yield str(p.relative_to(path.parent)), p
            if photos and left_out is not None:
                left_out += [str(q.relative_to(path.parent)) for q in files if q.suffix.lower() not in SUFFIXES]
            if not photos:  # an empty or wrong folder said nothing: the run ended with no word on it
                yield path.name, _no_photos(path.name, "folder", len(files))
        elif path.suffix.lower() == ".zip" and path.is_file():
            try:
                archive = zipfile.ZipFile(path)
            except zipfile.BadZipFile as exc:
                yield path.name, ImageError(f"{path.name}: expected a zip archive, found {exc}")
                continue
            with archive:
                members = [i for i in archive.infolist() if not i.is_dir()]
                photos = [i for i in members if Path(i.filename).suffix.lower() in SUFFIXES]
                if not photos:
                    yield path.name, _no_photos(path.name, "archive", len(members))
                elif left_out is not None:
                    left_out += [f"{path.name}:{i.filename}" for i in members if i not in photos]
                for info in sorted(photos, key=lambda i: i.filename):
                    name = f"{path.name}:{info.filename}"
                    if info.file_size > MAX_UPLOAD_BYTES:  # read into memory: a bomb must not get that far
                        yield name, ImageError(f"{name}: expected a photo of at most {MAX_UPLOAD_BYTES // 2**20} MB, "
                                               f"found {info.file_size / 2**20:.0f} MB unpacked")
                    elif not read:
                        yield name, None
                    else:
                        try:
                            data = archive.read(info)
                        except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError) as exc:
                            # A damaged, encrypted or oddly compressed member is one bad file, not a lost flight.
                            data = ImageError(f"{name}: expected a readable zip member, found {type(exc).__name__}: {exc}")
                        yield name, data
        else:
            yield path.name, path


def _no_photos(name: str, kind: str, n_files: int) -> ImageError:
    found = f"{n_files} file(s) without a photo suffix" if n_files else "it empty"
    return ImageError(f"{name}: expected photos ({', '.join(SUFFIXES)}) in the {kind}, found {found}")


def count_sources(paths: list[Path]) -> int:
    return sum(1 for _ in photo_sources(paths, read=False))


def ingest_flight(pipeline: Pipeline, store: Store, paths: list[Path], user: str, progress: Callable | None = None) -> FlightReport:
    """Inspect every photo under ``paths`` into ``store``; ``progress`` wraps the iterable (tqdm)."""
    report, started = FlightReport(), time.perf_counter()
    sources = photo_sources(paths, left_out=report.left_out)
    if progress is not None:
        sources = progress(sources, total=count_sources(paths), unit="photo", desc="inspect")
    for name, source in sources:
        # The stored name is the file's own name: the archive or folder it came in is not part of it.
        stored_name = Path(name.split(":")[-1]).name
        try:
            if isinstance(source, Exception):
                raise source
            done = inspect_photo(pipeline, store, source, user, stored_name)
        except ImageError as exc:
            # The reason starts with the file's name; the report names it already ("flight/x.jpg: x.jpg: …").
            report.failed.append((name, str(exc).removeprefix(f"{name}: ").removeprefix(f"{stored_name}: ")))
            continue
        if done.ran:
            report.inspected += 1
            report.objects += len(store.photo_findings(done.photo_id))
        else:
            report.skipped += 1
    report.seconds = time.perf_counter() - started
    return report
