"""The models a running app serves: loaded in the background so the page answers at once, and
swapped without a restart when the nightly job promotes a new stage-2 version.

Between requests :meth:`ModelHost.pipeline` compares the model registry's ``CURRENT`` pointer
(one small file read) with the version it loaded; on a change it loads the new model in a
background thread and keeps serving the old one until the new one is ready, then swaps.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from core.errors import SlopewatchError
from core.pipeline import Pipeline

log = logging.getLogger("slopewatch.models")


class ModelsLoading(SlopewatchError):
    """The models are still loading (the app answers before they are ready)."""


class ModelHost:
    """Holds the current :class:`Pipeline`.

    Args:
        build: builds the pipeline for a registry version (``None``: no promoted version yet).
        current_version: reads the registry's current version; ``None`` turns the swap off.
    """

    def __init__(self, build: Callable[[str | None], Pipeline], current_version: Callable[[], str | None] | None = None):
        self._build, self._current_version = build, current_version
        self._pipeline: Pipeline | None = None
        self._version: str | None = None
        self._loading: threading.Thread | None = None
        self._failed: str | None = None  # a version whose load failed is not retried on every request
        self._lock = threading.Lock()
        self.error: Exception | None = None

    @classmethod
    def ready(cls, pipeline: Pipeline) -> "ModelHost":
        """A host over an already built pipeline that never swaps (tests, scripts)."""
        host = cls(lambda version: pipeline)
        host._pipeline = pipeline
        return host

    def start(self) -> None:
        """Load in the background (returns at once)."""
        self._load(self._current_version() if self._current_version else None)

    def _load(self, version: str | None) -> None:
        def work():
            try:
                pipeline = self._build(version)
            except Exception as exc:  # kept for the UI and the log; the old model keeps serving
                log.exception("loading models for version %s failed", version)
                self.error, self._failed = exc, version
            else:
                with self._lock:
                    self._pipeline, self._version, self.error = pipeline, version, None
                log.info("models ready (stage-2 version %s)", version or "shipped")
            finally:
                with self._lock:
                    self._loading = None

        with self._lock:
            if self._loading is not None:
                return
            self._loading = threading.Thread(target=work, name="slopewatch-model-load", daemon=True)
            self._loading.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a load in flight ends; True when a pipeline is ready."""
        loading = self._loading
        if loading is not None:
            loading.join(timeout)
        return self._pipeline is not None

    @property
    def is_ready(self) -> bool:
        return self._pipeline is not None

    @property
    def version(self) -> str | None:
        return self._version

    def pipeline(self) -> Pipeline:
        """The pipeline to use for this request; starts a swap when the registry moved on."""
        if self._current_version is not None and self._pipeline is not None:
            latest = self._current_version()
            if latest != self._version and latest != self._failed:
                self._load(latest)
        if self._pipeline is None:
            if self.error is not None:
                raise ModelsLoading(f"the models failed to load: {self.error}")
            raise ModelsLoading("models loading — the page works, inspection starts as soon as they are ready")
        return self._pipeline
