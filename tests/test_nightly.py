"""The nightly job on real sample photos with a tiny LM behind the adapter."""

import json

import pytest
from conftest import tiny_lm_factory

from core.data import file_sha256, load_dataset
from core.model_registry import ModelRegistry
from core.stage2.backends.adapter import AdapterConfig, AdapterVLM
from core.taxonomy import load_taxonomy
from core.types import Detection, Finding
from db.store import Store
from train.holdout import LeakError, held_out
from train.nightly import NightlyConfig, nightly

TAX = load_taxonomy()


@pytest.fixture(scope="module")
def lm_factory():
    return tiny_lm_factory()


@pytest.fixture
def world(tmp_path, samples_yaml, lm_factory):
    """A registry with a current (tiny) model and a DB where reviewers relabelled real photos."""
    reg = ModelRegistry(tmp_path / "registry")
    AdapterVLM(TAX, AdapterConfig(lora_r=4, lora_alpha=8, rationale_tokens=0), lm_and_tokenizer=lm_factory()).save(tmp_path / "v0")
    reg.add(tmp_path / "v0", "v0")
    reg.promote("v0")
    store = Store(tmp_path / "review.db")
    store.ensure_user("ana")
    for s in load_dataset(samples_yaml).samples("valid"):
        photo, _ = store.add_photo(file_sha256(s.image_path), str(s.image_path), s.width, s.height, s.image_path.name, "ana")
        findings = []
        for o in s.objects:
            first = TAX.classes_for_type(o.type)[0].name  # the "model" always says the first class
            findings.append(Finding(Detection(o.box, o.type, 0.9), first, {first: 1.0} if not TAX.needs_condition(o.type)
                                    else {c.name: (1.0 if c.name == first else 0.0) for c in TAX.classes_for_type(o.type)}, "r", "fake", "0"))
        ids = store.add_run(photo.id, findings, "det", "fake:0", 0.1)
        for fid, f, o in zip(ids, findings, s.objects):
            if o.class_name != f.class_name:  # a relabel to the class it already has is refused
                store.correct(fid, 0, "ana", "relabel", class_name=o.class_name)
            else:
                store.correct(fid, 0, "ana", "accept")
    return reg, tmp_path


def test_nightly_trains_and_records_the_run(world, lm_factory):
    reg, tmp = world
    cfg = NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=50, epochs=1)
    result = nightly(cfg, lm_factory)
    assert result["decision"] in ("promoted", "refused")
    assert result["counts"]["frozen_photos"] > 0 and result["counts"]["train_objects"] > 0
    assert 0 <= result["candidate_metrics"]["balanced_accuracy"] <= 1
    runs = Store(tmp / "review.db").query("SELECT * FROM training_runs")
    assert len(runs) == 1 and runs[0]["decision"] == result["decision"] and runs[0]["duration_s"] > 0
    assert json.loads(runs[0]["reasons_json"]) == result["reasons"]  # why, recorded with the run
    assert reg.current() == (result["candidate"] if result["decision"] == "promoted" else "v0")
    assert set(result["current_metrics"]["per_class"]) == set(TAX.class_names)


def test_the_promoted_model_is_the_trained_candidate(world, lm_factory, samples_yaml, monkeypatch):
    """What the registry serves after a promotion reloads as exactly the model the run trained,
    and not as the current (untrained) one. The gate is forced open here (it is tested on its
    own); compared on log-probabilities and on the trained tensors themselves."""
    import numpy as np
    import torch

    import train.adapter
    import train.gate
    from core.stage2.classifier import photo_context
    from core.stage2.labeled import labeled_photos

    reg, tmp = world
    trained = []

    def keep(cfg, model=None, **kwargs):
        trained.append(model)
        return real_train(cfg, model, **kwargs)

    real_train = train.adapter.train_adapter
    monkeypatch.setattr(train.adapter, "train_adapter", keep)
    monkeypatch.setattr(train.gate, "decide", lambda *a, **k: (True, ["forced open by the test"]))
    result = nightly(NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=50, epochs=1), lm_factory)
    assert result["decision"] == "promoted" and reg.current() == result["candidate"] and len(trained) == 1
    assert list(reg.current_path().glob("ensemble-calibration-*.json")), "the promoted version lacks the blend's calibration"
    assert Store(tmp / "review.db").query("SELECT counts_json FROM training_runs")[0]["counts_json"].count('"judged_as": "ensemble"') == 1

    candidate = trained[0]
    promoted = AdapterVLM.load(reg.current_path(), TAX, lm_and_tokenizer=lm_factory())
    before = AdapterVLM.load(tmp / "v0", TAX, lm_and_tokenizer=lm_factory())
    before.hints = promoted.hints  # the same prompts: only the weights differ
    cand_state, prom_state, v0_state = candidate.trainable_state(), promoted.trainable_state(), before.trainable_state()
    assert set(prom_state) == set(cand_state)
    assert all(torch.equal(prom_state[k], cand_state[k]) for k in cand_state), "the promoted weights are not the trained ones"
    assert sum(float(v.abs().sum()) for k, v in prom_state.items() if "lora_B" in k) > 0, "the promoted LoRA is still zero"
    assert any(not torch.equal(prom_state[k], v0_state[k]) for k in v0_state if k.startswith("projector."))

    photo = labeled_photos(load_dataset(samples_yaml), "valid")[0]
    ctx = photo_context(photo.image, list(photo.detections), photo.key)
    targets = [i for i, d in enumerate(photo.detections) if TAX.needs_condition(d.type)]

    def log_probs(model):
        probs = np.concatenate(model.score(ctx, targets))
        assert probs.min() > 1e-6, "saturated probabilities cannot tell models apart"
        return np.log(probs)

    served = log_probs(promoted)
    assert np.abs(served - log_probs(candidate)).max() < 1e-6
    # The nightly's small learning rates move the log-probabilities by 2.5e-3 here; a reload is exact.
    assert np.abs(served - log_probs(before)).max() > 5e-4, "the promoted model scores like the untrained one"


def test_nothing_new_since_the_last_promotion_is_a_no_op(world, lm_factory):
    reg, tmp = world
    reg.promote("v0", "re-promoted after every correction was made")
    result = nightly(NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier"), lm_factory)
    assert result["decision"] == "nothing-new" and "no corrections since" in result["message"]
    assert Store(tmp / "review.db").query("SELECT count(*) AS n FROM training_runs")[0]["n"] == 0


def test_frozen_photo_in_training_aborts(world, lm_factory, samples_yaml):
    reg, tmp = world
    cfg = NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=0, frozen_yaml=str(samples_yaml))
    with pytest.raises(LeakError, match="frozen-evaluation"):
        nightly(cfg, lm_factory)
    assert reg.current() == "v0"
    assert Store(tmp / "review.db").query("SELECT count(*) AS n FROM training_runs")[0]["n"] == 0


def test_holdout_is_stable():
    keys = [f"{i:064x}" for i in range(1000)]
    picked = [k for k in keys if held_out(k, 20)]
    assert 150 < len(picked) < 250 and picked == [k for k in keys if held_out(k, 20)]


def test_bootstrapped_shipped_model_has_seen_no_corrections(tmp_path):
    """Corrections made before the first nightly (the shipped model's bootstrap) are all new."""
    from train.nightly import ensure_current

    reg = ModelRegistry(tmp_path / "registry")
    version = ensure_current(reg, TAX)
    assert version.startswith("shipped-") and reg.promotions()[-1]["data_until"] == 0.0


@pytest.mark.parametrize("backend", ["adapter", "qwen2vl"])
def test_one_nightly_at_a_time_whatever_backend_it_trains(tmp_path, monkeypatch, backend):
    """Nightlies of both backends share the work-folder clean-up and the detector registry: a
    second one, of either backend, must not start while one runs."""
    import fcntl

    from core.errors import SlopewatchError
    from core.paths import data_dir

    monkeypatch.setenv("SLOPEWATCH_DATA_DIR", str(tmp_path / "data"))
    data_dir().mkdir(parents=True, exist_ok=True)
    with open(data_dir() / "nightly.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SlopewatchError, match="another nightly run holds"):
            nightly(NightlyConfig(db=tmp_path / "review.db", backend=backend, qwen_model="unused" if backend == "qwen2vl" else None))


def _served(name, folder, lm_factory):
    from core.stage2 import registry as backends

    return backends.create(name, backends.BackendOptions(TAX, adapter_dir=folder, base_lm=lm_factory(), adapter_precision="fp32"))


@pytest.mark.parametrize("gate_on", ["ensemble", "adapter"])
def test_the_gate_scores_the_current_model_as_reviewers_are_served_it(world, lm_factory, gate_on):
    """By default reviewers see the adapter blended with the probe, so that blend (with its
    calibration) is what the gate scores; a server running the adapter alone gates it alone."""
    from core.evaluation.classifier import score_photos
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.labeled import reviewed_photos

    reg, tmp = world
    result = nightly(NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=50,
                                   epochs=1, gate_on=gate_on), lm_factory)
    assert result["counts"]["judged_as"] == gate_on
    frozen = [p for p in reviewed_photos(Store(tmp / "review.db", TAX)) if held_out(p.key, 50)]
    expected = {name: score_photos(ConditionClassifier(_served(name, tmp / "v0", lm_factory), TAX), frozen) for name in ("ensemble", "adapter")}
    def figures(m):  # the calibration's ECE too: temperatures never change which class wins
        return [m["accuracy"], m["balanced_accuracy"], m["macro_f1"], m["calibration"]["ece"], m["calibration"]["brier"]]

    assert figures(expected["ensemble"]) != figures(expected["adapter"])  # else this test could not tell
    assert figures(result["current_metrics"]) == pytest.approx(figures(expected[gate_on]))


def test_a_candidate_carries_a_blend_calibration_refitted_for_it_which_the_served_ensemble_reads(world, lm_factory, monkeypatch):
    import core.stage2.calibration
    from core.evaluation.classifier import scored_objects
    from core.stage2.backends.ensemble import default_ensemble_dir, version_calibration_path, with_probe
    from core.stage2.calibration import Calibration, fit_calibration
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.labeled import reviewed_photos
    from train.candidates import calibrate_candidate

    reg, tmp = world
    folder = tmp / "v0"
    photos = list(reviewed_photos(Store(tmp / "review.db", TAX)))  # 6 photos, 35 objects with a choice: enough to refit
    blend = with_probe(_served("adapter", folder, lm_factory), TAX)
    path = version_calibration_path(folder, blend)
    shipped = Calibration.load(default_ensemble_dir() / "calibration.json")
    _, note = calibrate_candidate(blend, photos, shipped, path, TAX)
    own = Calibration.load(path)
    assert note.startswith("calibration refitted on 35") and own.temperatures != shipped.temperatures and own.n
    # The tiny model's slice chooses no likely-right band of its own and cannot refute the current one: it is kept, and said so.
    assert fit_calibration(scored_objects(ConditionClassifier(blend, TAX), photos), "check").likely_right is None
    assert own.likely_right == shipped.likely_right and "threshold 0.895 kept" in note and "kept from the current" in own.fitted_on

    assert _served("ensemble", folder, lm_factory).calibration == own
    path.unlink()
    assert _served("ensemble", folder, lm_factory).calibration == shipped  # a version without one: the shipped blend's

    # A slice whose objects refute the current band drops it rather than carry it.
    monkeypatch.setattr(core.stage2.calibration, "band_contradicted", lambda *a, **k: "30 objects at >= 0.895 were right 80.0% (< 95%)")
    _, note = calibrate_candidate(blend, photos, shipped, path, TAX)
    assert Calibration.load(path).likely_right is None and "no likely-right band: on the slice 30 objects" in note


def test_a_blend_calibration_belongs_to_its_blend(world, lm_factory, tmp_path):
    """A version's blend calibration is for the probe, rule and weight it was fitted with: after a
    new `train ensemble` or `train probe` the version falls back to the shipped blend calibration."""
    from dataclasses import replace

    from core.stage2.backends.ensemble import Ensemble, version_calibration_path, with_probe

    reg, tmp = world
    blend = with_probe(_served("adapter", tmp / "v0", lm_factory), TAX)
    reweighted = Ensemble(blend.adapter, blend.probe, replace(blend.spec, weight=0.5))
    other_probe = Ensemble(blend.adapter, blend.adapter, blend.spec)  # any other component: another version
    assert len({version_calibration_path(tmp, e) for e in (blend, reweighted, other_probe)}) == 3


def test_ece_is_gated_when_the_calibration_slice_is_too_small_and_the_current_temperatures_are_kept(world, lm_factory, monkeypatch):
    """Kept temperatures are what the candidate would be served with: its ECE is still judged."""
    import train.gate

    reg, tmp = world
    seen = []
    real_decide = train.gate.decide
    monkeypatch.setattr(train.gate, "decide", lambda cand, cur, cfg: seen.append(cfg) or real_decide(cand, cur, cfg))
    result = nightly(NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=50, epochs=1,
                                   max_ece_increase=0.02), lm_factory)
    assert result["counts"]["calibration_photos"] == 0  # 3 photos left after the frozen half: too few to refit on
    assert [c.max_ece_increase for c in seen] == [0.02]
    assert any(r.startswith("ECE ") for r in result["reasons"])


@pytest.fixture
def mirrored_train_yaml(tmp_path, samples_yaml):
    """A train split that is not the reviewed photos: the samples mirrored left to right (other
    content hashes, labels mirrored with them)."""
    from PIL import Image, ImageOps

    root = tmp_path / "mirrored"
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True)
    for image in sorted((samples_yaml.parent / "valid" / "images").glob("*.jpg")):
        ImageOps.mirror(Image.open(image)).save(root / "train" / "images" / image.name, quality=95)
        lines = (samples_yaml.parent / "valid" / "labels" / f"{image.stem}.txt").read_text().split("\n")
        mirrored = [" ".join([c, f"{1 - float(x):.6f}", *rest]) for c, x, *rest in (ln.split() for ln in lines if ln.strip())]
        (root / "train" / "labels" / f"{image.stem}.txt").write_text("\n".join(mirrored) + "\n")
    text = (samples_yaml.parent / "data.yaml").read_text().replace("valid: valid/images", "train: train/images")
    (root / "data.yaml").write_text(text)
    return root / "data.yaml"


def _served_probe_version(folder, lm_factory) -> str:
    probe = _served("ensemble", folder, lm_factory).inner.probe  # Calibrated(Ensemble(adapter, probe))
    return getattr(probe, "inner", probe).version  # the probe, calibrated when it has a calibration file


def test_the_nightly_refits_the_probe_on_the_same_training_data_and_the_served_blend_uses_it(world, lm_factory, mirrored_train_yaml,
                                                                                          monkeypatch):
    """Reviewers are served the blend, so their labels teach both its parts: with the train split
    replayed, the candidate carries a probe refitted on the night's training photos (train split
    and reviewed), and once promoted the served ensemble blends that probe, not the shipped one."""
    import train.gate
    from core.stage2.backends.probe import Probe, calibration_path, default_probe_path, version_probe_path

    reg, tmp = world
    shipped = Probe.load(default_probe_path(), TAX).version
    assert _served_probe_version(reg.current_path(), lm_factory) == shipped
    monkeypatch.setattr(train.gate, "decide", lambda *a, **k: (True, ["forced open by the test"]))
    result = nightly(NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=50, epochs=1,
                                   train_yaml=str(mirrored_train_yaml)), lm_factory)
    assert result["decision"] == "promoted"
    # Every labelled training object, reviewed ones included, taught the probe.
    assert f"probe refitted on {result['counts']['train_objects']} objects" in " ".join(result["reasons"])
    probe_file = version_probe_path(reg.current_path())
    assert probe_file.is_file() and calibration_path(probe_file).is_file()
    refit = Probe.load(probe_file, TAX).version
    assert refit != shipped and _served_probe_version(reg.current_path(), lm_factory) == refit
    # A server running the probe alone learns from the same reviews.
    assert _served("probe", reg.current_path(), lm_factory).inner.version == refit


def test_without_the_train_split_the_probe_is_carried_over_not_refitted(world, lm_factory, monkeypatch):
    """A probe fitted on a few reviewed objects alone would be worse than the one it replaces; and
    a promotion must not drop the probe an earlier night refitted (serving falls back to the shipped one)."""
    import numpy as np

    import train.gate
    from core.stage2.backends.probe import Probe, default_probe_path, version_probe_path

    reg, tmp = world
    earlier = Probe.load(default_probe_path(), TAX)
    earlier = Probe({k: v + 0.01 if k.endswith("/intercept") else v for k, v in earlier.params.items()}, TAX)
    earlier.save(version_probe_path(reg.current_path()))  # v0 as if an earlier night had refitted its probe
    assert _served_probe_version(reg.current_path(), lm_factory) == earlier.version
    monkeypatch.setattr(train.gate, "decide", lambda *a, **k: (True, ["forced open by the test"]))
    result = nightly(NightlyConfig(db=tmp / "review.db", registry=tmp / "registry", stages="classifier", holdout_percent=50, epochs=1),
                     lm_factory)
    assert result["decision"] == "promoted" and reg.current() != "v0"
    assert "probe carried over from the current model" in " ".join(result["reasons"])
    assert _served_probe_version(reg.current_path(), lm_factory) == earlier.version
    assert np.array_equal(Probe.load(version_probe_path(reg.current_path()), TAX).params["rock_toe/intercept"],
                          earlier.params["rock_toe/intercept"])
