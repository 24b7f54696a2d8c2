"""CLI commands beyond training: analyze, evaluate, bench, predict."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from app.cli_args import add_config_args, build_config, write_json


def _cmd_analyze(cfg) -> int:
    from core.data import load_dataset
    from core.evaluation.analysis import analyze
    from core.evaluation.report import fmt
    from core.taxonomy import load_taxonomy

    ds = load_dataset(cfg.data_yaml, load_taxonomy(cfg.taxonomy))
    result = analyze(ds, cfg)
    for split, d in result["splits"].items():
        print(f"{split}: {d['images']} images, {d['objects']} objects, imbalance {fmt(d['imbalance_ratio']['label'])}, "
              f"{len(d['suspicious'])} suspicious")
    print(f"wrote {cfg.out}/analysis.json, report.md and plots")
    return 0


def _cmd_inspect(ns: argparse.Namespace) -> int:
    """``slopewatch inspect``: a whole flight into the review database, resumable."""
    from tqdm.auto import tqdm

    from app.models import evidence_index
    from app.usecases.flight import ingest_flight
    from core.pipeline import Pipeline
    from core.stage1.detector import Detector, DetectorConfig
    from core.stage2 import registry
    from core.stage2.classifier import ConditionClassifier
    from core.stage2.evidence import default_evidencer
    from db.store import Store

    detector = Detector(DetectorConfig(device=ns.device))
    backend = registry.create(ns.backend, registry.BackendOptions(detector.taxonomy, device=ns.device))
    store = Store(ns.db, detector.taxonomy)
    evidencer = default_evidencer(backend, evidence_index(store))
    report = ingest_flight(Pipeline(detector, ConditionClassifier(backend, detector.taxonomy, evidencer)), store, ns.photos, ns.user,
                           lambda items, **kw: tqdm(items, **kw))
    write_json({"db": str(store.path), "inspected": report.inspected, "skipped_already_stored": report.skipped,
                "objects": report.objects, "failed": [{"photo": n, "error": e} for n, e in report.failed],
                "left_out_not_photos": report.left_out,
                "seconds_ingesting": round(report.seconds, 1), "photos_per_s": round(report.photos_per_s, 3)}, None)
    for name, why in report.failed:
        print(f"FAILED {name}: {why}", file=sys.stderr)
    for name in report.left_out:
        print(f"LEFT OUT {name}: not a photo", file=sys.stderr)
    return 1 if report.failed and not (report.inspected or report.skipped) else 0


def _cmd_predict(ns: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from core.errors import ImageError
    from core.pipeline import Pipeline
    from core.stage1.detector import Detector, DetectorConfig

    detector = Detector(DetectorConfig(weights=ns.weights, conf=ns.conf, device=ns.device))
    classifier = None
    if ns.backend != "none":
        from core.stage2 import registry
        from core.stage2.classifier import ConditionClassifier
        from core.stage2.evidence import default_evidencer

        options = registry.BackendOptions(detector.taxonomy, qwen_model=ns.qwen_model, qwen_precision=ns.qwen_precision,
                                          clip_model=ns.clip_model, device=ns.device)
        backend = registry.create(ns.backend, options)
        classifier = ConditionClassifier(backend, detector.taxonomy, default_evidencer(backend))
    pipeline = Pipeline(detector, classifier)
    results, failed = [], []
    if ns.overlay:
        ns.overlay.mkdir(parents=True, exist_ok=True)
    for photo in tqdm(ns.photos, desc="predict"):
        try:
            image, result = pipeline.run(photo)
        except ImageError as exc:  # one bad photo must not cost the others
            failed.append({"photo": str(photo), "error": str(exc)})
            continue
        results.append(result.to_json())
        if ns.overlay:
            pipeline.overlay(image, result).save(ns.overlay / f"{Path(photo).stem}.png")
    out = {"photos": results, "failed": failed}
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(out, indent=2) + "\n")
    for r in results:
        counts: dict[str, int] = {}
        for o in r["objects"]:
            label = o.get("class", o["type"])
            counts[label] = counts.get(label, 0) + 1
        print(f"{Path(r['photo']).name}: {len(r['objects'])} objects {counts}")
    for f in failed:
        print(f"FAILED {f['photo']}: {f['error']}")
    return 1 if failed and not results else 0


def _save_json(cfg, result: dict) -> None:
    if cfg.json:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(result, indent=2) + "\n")


def _print_table(rows: dict[str, dict], name_width: int, columns: list[tuple[str, str]]) -> None:
    """One line per backend; ``columns`` are (header, metric key), each at least 8 wide."""
    widths = [max(len(header), 8) for header, _ in columns]
    print(f"{'backend':<{name_width}} " + " ".join(f"{h:>{w}}" for (h, _), w in zip(columns, widths)))
    for name, r in rows.items():
        print(f"{name:<{name_width}} " + " ".join(f"{r[k]:>{w}.3f}" for (_, k), w in zip(columns, widths)))


def _print_comparison(cfg, result: dict) -> int:
    _save_json(cfg, result)
    _print_table(result["comparison"], 26, [("accuracy", "accuracy"), ("balanced", "balanced_accuracy"), ("macro-F1", "macro_f1"),
                                             ("unfaithful", "unfaithful_rationale_rate"), ("s/photo", "seconds_per_photo"),
                                             ("ECE raw", "ece_raw"), ("ECE", "ece")])
    cal = result["classifier"]["calibration"]
    band = cal.get("likely_right")
    if band and band["threshold"] is not None:
        print(f"likely right (calibrated confidence >= {band['threshold']:.3f}, chosen for {band['target']:.0%} on train folds): "
              f"accuracy {band['accuracy'] if band['accuracy'] is not None else float('nan'):.3f}, coverage {band['coverage']:.3f}")
    print("risk-coverage: " + ", ".join(f">={r['threshold']}: acc {r['accuracy'] if r['accuracy'] is not None else float('nan'):.3f} "
                                        f"cov {r['coverage']:.2f}" for r in cal["risk_coverage"]))
    quant = result["classifier"].get("quantization")
    if quant:
        print(f"{quant['mode']}: accuracy retention {quant['accuracy_retention']:.3f}, balanced retention "
              f"{quant['balanced_accuracy_retention']:.3f}, weights {quant['weights_mb_full'] or 0:.0f} -> {quant['weights_mb_quantized'] or 0:.0f} MB")
    return 0


def _print_mcq(cfg, result: dict) -> int:
    _save_json(cfg, result)
    _print_table(result["mcq"], 20, [("accuracy", "accuracy"), ("balanced", "balanced_accuracy"), ("macro-F1", "macro_f1"),
                                     ("top-2", "top2_accuracy"), ("unparseable", "unparseable_rate"), ("s/photo", "seconds_per_photo")])
    return 0


def _print_nightly(cfg, result: dict) -> int:
    stages = {"stage 2": {k: v for k, v in result.items() if k != "detector"}, "detector": result.get("detector")}
    for name, r in stages.items():
        if r:
            print(f"nightly {name}: " + (r.get("message") or f"{r['decision']} ({'; '.join(r['reasons'])})"))
    write_json({k: v for k, v in result.items() if k != "config"}, None)
    return 0


def _cmd_model_list(ns: argparse.Namespace) -> int:
    from core.model_registry import ModelRegistry

    reg = ModelRegistry(ns.registry, stage=ns.stage)
    versions = reg.versions()
    if not versions:
        shipped = {"classifier": "the shipped adapter", "qwen2vl": "the base Qwen2-VL", "detector": "the shipped detector"}[ns.stage]
        print(f"no {ns.stage} model versions in {reg.root} ({shipped} is used until the first nightly run)")
    for v in versions:
        m = v["metrics"]
        if "balanced_accuracy" in m:
            score = f"balanced {m['balanced_accuracy']:.3f} accuracy {m['accuracy']:.3f}"
        elif "map50" in m:
            score = f"mAP50 {m['map50']:.3f} mAP50-95 {m['map50_95']:.3f}"
        else:
            score = "no metrics"
        until = reg.data_until(v["version"])
        cutoff = time.strftime("%Y-%m-%d %H:%M", time.localtime(until)) if until else "none"
        print(f"{'*' if v['current'] else ' '} {v['version']:<32} {score}  corrections up to {cutoff}")
    return 0


def _cmd_model_rollback(ns: argparse.Namespace) -> int:
    from core.model_registry import ModelRegistry

    print(f"current {ns.stage} model is now {ModelRegistry(ns.registry, stage=ns.stage).rollback()}")
    return 0


# (group, name, help, config class, runner, positional fields, printer); a printer of None
# prints the runner's JSON (and writes it to the config's ``json`` path when it has one).
COMMANDS = [
    (None, "analyze", "analyse a YOLO dataset export (counts, boxes, relations, plots)",
     "core.evaluation.analysis:AnalyzeConfig", None, ("data_yaml",), _cmd_analyze),
    ("train", "detector", "train the stage-1 YOLO detector on a YOLO export",
     "train.detector:DetectorTrainConfig", "train.detector:train_detector", ("data_yaml",), None),
    ("train", "probe", "fit the frozen-feature probe (stage-2 baseline)",
     "train.probe:ProbeTrainConfig", "train.probe:train_probe", ("data_yaml",), None),
    ("train", "adapter", "train the adapter VLM (projector + LoRA) on condition labels",
     "train.adapter:AdapterTrainConfig", "train.adapter:train_adapter", ("data_yaml",), None),
    ("train", "calibration", "fit the adapter's calibration on out-of-fold scores of the train split",
     "train.calibrate:CalibrateConfig", "train.calibrate:calibrate", ("data_yaml",), None),
    ("train", "ensemble", "choose the adapter + probe blend by cross-validation on the train split's out-of-fold scores",
     "train.ensemble:EnsembleTrainConfig", "train.ensemble:train_ensemble", ("data_yaml",), None),
    ("train", "box-calibration", "fit the detector's box calibration on one hash half of valid, report it on the other",
     "train.box_calibration:BoxCalibrationConfig", "train.box_calibration:calibrate_detector", ("data_yaml",), None),
    ("train", "evidence", "index the labelled objects of a training split: the similar examples rationales cite",
     "train.evidence:EvidenceConfig", "train.evidence:build_evidence", ("data_yaml",), None),
    ("train", "nightly", "fine-tune both stages on new corrections; promote each only past its gate",
     "train.nightly:NightlyConfig", "train.nightly:nightly", (), _print_nightly),
    ("train", "simulate-reviews", "reviewers correct half of valid, nightly is judged on the other half",
     "train.simulate:SimulateConfig", "train.simulate:simulate", ("data_yaml",), None),
    ("evaluate", "detector", "mAP of the stage-1 detector",
     "core.evaluation.detector:DetectorEvalConfig", "core.evaluation.detector:evaluate_detector", ("data_yaml",), None),
    ("evaluate", "classifier", "stage-2 metrics on ground-truth boxes, with a backend comparison",
     "core.evaluation.classifier:ClassifierEvalConfig", "core.evaluation.classifier:evaluate_classifier", ("data_yaml",), _print_comparison),
    ("evaluate", "pipeline", "both stages end to end: detection, conditions, relations",
     "core.evaluation.pipeline:PipelineEvalConfig", "core.evaluation.pipeline:evaluate_pipeline", ("data_yaml",), None),
    ("evaluate", "mcq", "each labelled object as a multiple-choice question, across backends",
     "core.evaluation.mcq:McqEvalConfig", "core.evaluation.mcq:evaluate_mcq", ("data_yaml",), _print_mcq),
    (None, "embed", "embed new photos, objects and finding texts in the review DB (for map and search)",
     "app.usecases.library:EmbedConfig", "app.usecases.library:run_embed", (), None),
    (None, "map", "the library's object embeddings as a 2-D map (PNG)",
     "app.usecases.library:MapConfig", "app.usecases.library:make_map", (), None),
    ("bench", "detector", "stage-1 latency per photo and photos/s",
     "core.evaluation.bench:DetectorBenchConfig", "core.evaluation.bench:bench_detector", (), None),
    ("bench", "pipeline", "seconds per photo/object, photos/s, peak RSS, shared vs naive",
     "core.evaluation.bench:PipelineBenchConfig", "core.evaluation.bench:bench_pipeline", (), None),
    ("bench", "review", "a scripted reviewer in the Review workspace: server ms per action, inputs per photo",
     "app.bench_review:ReviewBenchConfig", "app.bench_review:bench_review", (), None),
    (None, "serve", "start the web app (inspect, review, queue, dashboard, export)",
     "app.web:ServeConfig", "app.web:serve_forever", (), None),
    (None, "export", "write reviewed photos as a YOLO or COCO dataset (9-class labels)",
     "db.export:ExportConfig", "db.export:run_export", ("out",), None),
    (None, "import-labels", "store a dataset's train labels as pending findings, for a label-review pass in the Review tab",
     "app.usecases.labels:ImportLabelsConfig", "app.usecases.labels:run_import_labels", ("data_yaml",), None),
    (None, "repair", "one-off: clamp stored boxes to their photos (delete those with nothing inside), cut over-long texts",
     "db.repair:RepairConfig", "db.repair:run_repair", (), None),
    ("user", "add", "add or replace a reviewer in an auth file (salted scrypt hash; password from a prompt or stdin)",
     "app.auth:UserAddConfig", "app.auth:run_user_add", ("name",), None),
]


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _generic(config_ref: str, runner_ref: str | None, printer):
    def run(ns: argparse.Namespace) -> int:
        cfg = build_config(_load(config_ref), ns)
        if runner_ref is None:
            return printer(cfg)
        result = _load(runner_ref)(cfg)
        if printer is not None:
            return printer(cfg, result)
        write_json({k: v for k, v in result.items() if k not in ("config", "train_config")}, getattr(cfg, "json", None))
        return 0

    return run


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add every command to the top-level parser and its train/evaluate/bench groups."""
    from core.stage2 import registry

    groups = {**groups, "user": sub.add_parser("user", help="reviewer logins").add_subparsers(dest="what", required=True)}
    for group, name, text, config_ref, runner_ref, positional, printer in COMMANDS:
        p = (groups[group] if group else sub).add_parser(name, help=text)
        add_config_args(p, _load(config_ref), positional=positional)
        p.set_defaults(func=_generic(config_ref, runner_ref, printer))

    p = sub.add_parser("inspect", help="store and inspect a whole flight (files, folders, zips) in the review DB; resumable")
    p.add_argument("photos", nargs="+", type=Path, help="photo files, folders (searched recursively) or .zip archives")
    p.add_argument("--db", type=Path, help="review database (default: in the data dir)")
    p.add_argument("--backend", default=registry.DEFAULT, choices=registry.names(live_only=True),
                   help=f"stage-2 backend (default: {registry.DEFAULT}): {registry.describe(live_only=True)}")
    p.add_argument("--user", default="field", help="who uploaded the photos (default: field)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("predict", help="run both stages on photos; JSON per photo and overlay PNGs")
    p.add_argument("photos", nargs="+", type=Path, help="photo files")
    p.add_argument("--json", type=Path, help="write per-photo results here")
    p.add_argument("--overlay", type=Path, help="write overlay PNGs into this folder")
    p.add_argument("--weights", type=Path, help="detector checkpoint (default: the promoted nightly version, else the shipped one; both hash-checked)")
    p.add_argument("--conf", type=float, default=0.25, help="minimum detection confidence (default: 0.25)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--backend", default=registry.DEFAULT, choices=[*registry.names(live_only=True), "none"],
                   help=f"stage-2 backend, or none for stage 1 only (default: {registry.DEFAULT}): {registry.describe(live_only=True)}")
    p.add_argument("--qwen-model", help="Qwen2-VL hub id or folder (backend qwen2vl)")
    p.add_argument("--qwen-precision", default="auto", help="qwen2vl precision: auto, fp32, fp16, bf16, int8, int4")
    p.add_argument("--clip-model", type=Path, help="CLIP checkpoint folder (backend clip; default: $SLOPEWATCH_CLIP_MODEL)")
    p.set_defaults(func=_cmd_predict)

    model = sub.add_parser("model", help="model versions of either stage (list, rollback)").add_subparsers(dest="what", required=True)
    for name, func, text in (("list", _cmd_model_list, "list versions (* marks the current one)"),
                             ("rollback", _cmd_model_rollback, "make the previous version current")):
        p = model.add_parser(name, help=text)
        p.add_argument("--stage", default="classifier", choices=("classifier", "qwen2vl", "detector"),
                       help="classifier (stage 2's adapter, default), qwen2vl (stage 2's Qwen2-VL LoRA) or detector (stage 1)")
        p.add_argument("--registry", type=Path, help="registry folder (default: the stage's folder in the data dir)")
        p.set_defaults(func=func)
