"""The models a running app serves: loaded in the background so the page answers at once, and
swapped without a restart when the nightly job promotes a new version of either stage.

Between requests :meth:`ModelHost.pipeline` compares the model registries' ``CURRENT`` pointers
(small file reads) with the versions it loaded; on a change it loads the new model in a
background thread and keeps serving the old one until the new one is ready, then swaps.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Hashable

from core.errors import SlopewatchError
from core.pipeline import Pipeline

log = logging.getLogger("slopewatch.models")


class ModelsLoading(SlopewatchError):
    """The models are still loading (the app answers before they are ready)."""


class ModelHost:
    """Holds the current :class:`Pipeline`.

    Args:
        build: builds the pipeline for a version key (what ``current_version`` returned: e.g. the
            detector's and the classifier's registry versions; ``None``: no registry).
        current_version: reads the registries' current version key; ``None`` turns the swap off.
    """

    def __init__(self, build: Callable[[Hashable], Pipeline], current_version: Callable[[], Hashable] | None = None,
                 on_request: Callable[[], object] | None = None):
        """``on_request``: called cheaply at every request for the pipeline (keeps the evidence fresh)."""
        self._build, self._current_version, self._on_request = build, current_version, on_request
        self._pipeline: Pipeline | None = None
        self._version: Hashable = None
        self._loading: threading.Thread | None = None
        self._failed: Hashable = None  # a version whose load failed is not retried on every request
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

    def _load(self, version: Hashable) -> None:
        def work():
            try:
                pipeline = self._build(version)
            except Exception as exc:  # kept for the UI and the log; the old model keeps serving
                log.exception("loading models for version %s failed", version)
                self.error, self._failed = exc, version
            else:
                with self._lock:
                    self._pipeline, self._version, self.error = pipeline, version, None
                log.info("models ready (versions %s)", version)
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
    def version(self) -> Hashable:
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
        if self._on_request is not None:
            self._on_request()
        return self._pipeline


class LiveEvidence:
    """Keeps a served pipeline's evidence index current between model swaps: when reviewers have
    corrected anything since the last build (checked at most every ``every`` seconds, one small
    query), the index (shipped + reviewed objects) is rebuilt in a background thread and swapped
    in, so objects reviewed today are cited by the next photos, not only after a restart."""

    def __init__(self, store, evidencer, every: float = 300.0):
        import time

        self.store, self.evidencer, self.every = store, evidencer, every
        self.built_at = self._checked = time.time()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None

    def maybe_refresh(self) -> bool:
        """Start a rebuild when one is due; True when it started."""
        import time

        now = time.time()
        if now - self._checked < self.every or not self._busy.acquire(blocking=False):
            return False
        self._checked = now
        if not self.store.corrections_since(self.built_at):
            self._busy.release()
            return False

        def work():
            try:
                self.evidencer.index = evidence_index(self.store)
                self.built_at = now  # a correction made during the rebuild counts as new next time
            except Exception:  # the old index keeps serving; the next check retries
                log.exception("rebuilding the evidence index failed")
            finally:
                self._busy.release()

        self._thread = threading.Thread(target=work, name="slopewatch-evidence", daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def evidence_index(store=None):
    """The shipped neighbour index (the dataset's train split) plus every object a reviewer has
    labelled in ``store`` (a ``db.store.Store``), so rationales cite what reviewers decided too."""
    from core.stage2.evidence import index_from_photos, load_default_index
    from core.stage2.labeled import reviewed_photos

    index = load_default_index()
    if store is None:
        return index
    # A training photo reviewed here (a label-review pass) is cited as reviewed: its dataset labels
    # leave the index, or the same object would count twice among "the 5 most similar".
    index = index.without_photos({p.photo.sha256 for p in store.reviewed_photos()})
    # One photo decoded at a time: a store may hold thousands of reviewed photos.
    # Only what reviewers decided is cited as reviewed (a pending imported label is the dataset's word).
    return index.extend(index_from_photos(((p, f"review:{p.key[:12]}") for p in reviewed_photos(store, pending_labels=False)),
                                          store.taxonomy))


def registry_host(backend: str, store=None, qwen_model: str | None = None) -> ModelHost:
    """The host ``serve`` uses: the detector registry's current version (else the shipped detector)
    and, for a backend that follows a stage-2 registry (``ensemble`` and ``adapter``: the classifier
    registry; ``qwen2vl``: its own, the LoRA applied on ``qwen_model``), that registry's current
    version; any promotion swaps the pipeline. Rationales cite
    neighbours from :func:`evidence_index` of ``store``, read at each swap and kept current by
    :class:`LiveEvidence` in between."""
    from core.model_registry import ModelRegistry
    from core.stage1.detector import Detector, DetectorConfig
    from core.stage2 import registry
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.evidence import default_evidencer

    detectors: dict = {}  # by detector version: a stage-2 swap reuses the loaded detector
    live: dict[str, LiveEvidence] = {}  # the served pipeline's evidence, kept current between swaps
    detector_registry = ModelRegistry(stage="detector")
    # The trainable backends follow their registry's promotions; other backends never swap.
    follows = registry.spec(backend).follows
    classifier_registry = ModelRegistry(stage=follows) if follows else None

    def versions() -> tuple[str | None, str | None]:
        return detector_registry.current(), classifier_registry.current() if classifier_registry else None

    def build(current: tuple[str | None, str | None] | None) -> Pipeline:
        det_version = current[0] if current else None
        if det_version not in detectors:
            loaded = Detector(DetectorConfig(version=det_version))
            detectors.clear()
            detectors[det_version] = loaded
        detector = detectors[det_version]
        qwen_adapter = classifier_registry.current_path() if backend == "qwen2vl" else None
        model = registry.create(backend, registry.BackendOptions(detector.taxonomy, qwen_model=qwen_model, qwen_adapter=qwen_adapter))
        evidencer = default_evidencer(model, evidence_index(store))
        if store is not None:
            live["evidence"] = LiveEvidence(store, evidencer)
        return Pipeline(detector, ConditionClassifier(model, detector.taxonomy, evidencer))

    return ModelHost(build, versions, on_request=lambda: live["evidence"].maybe_refresh() if "evidence" in live else None)
