"""CLI commands beyond training: analyze, evaluate, bench, predict."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.cli import _write_json, add_config_args, build_config


def _cmd_analyze(ns: argparse.Namespace) -> int:
    from core.analysis import AnalyzeConfig, analyze, fmt
    from core.data import load_dataset
    from core.taxonomy import load_taxonomy

    cfg = build_config(AnalyzeConfig, ns)
    ds = load_dataset(cfg.data_yaml, load_taxonomy(cfg.taxonomy))
    result = analyze(ds, cfg)
    for split, d in result["splits"].items():
        print(f"{split}: {d['images']} images, {d['objects']} objects, imbalance {fmt(d['imbalance_ratio']['label'])}, "
              f"{len(d['suspicious'])} suspicious")
    print(f"wrote {cfg.out}/analysis.json, report.md and plots")
    return 0


def _cmd_evaluate_detector(ns: argparse.Namespace) -> int:
    from core.evaluate import DetectorEvalConfig, evaluate_detector

    cfg = build_config(DetectorEvalConfig, ns)
    _write_json(evaluate_detector(cfg), cfg.json)
    return 0


def _cmd_bench_detector(ns: argparse.Namespace) -> int:
    from core.bench import DetectorBenchConfig, PipelineBenchConfig
    from core.evaluate_pipeline import PipelineEvalConfig, bench_detector

    cfg = build_config(DetectorBenchConfig, ns)
    _write_json(bench_detector(cfg), cfg.json)
    return 0


def _cmd_predict(ns: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from core.detector import Detector, DetectorConfig
    from core.errors import ImageError
    from core.pipeline import Pipeline

    detector = Detector(DetectorConfig(weights=ns.weights, conf=ns.conf, device=ns.device))
    classifier = None
    if ns.backend != "none":
        from core.classifier import ConditionClassifier
        from core.evaluate_classifier import make_stage2_backend

        qwen = None
        if ns.qwen_model:
            from core.qwen2vl import Qwen2VLConfig

            qwen = Qwen2VLConfig(model=ns.qwen_model, precision=ns.qwen_precision, device=ns.device)
        backend = make_stage2_backend(ns.backend, detector.taxonomy, qwen=qwen)
        classifier = ConditionClassifier(backend, detector.taxonomy)
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


def _cmd_train_probe(ns: argparse.Namespace) -> int:
    from train.probe import ProbeTrainConfig, train_probe

    _write_json(train_probe(build_config(ProbeTrainConfig, ns)), None)
    return 0


def _cmd_evaluate_classifier(ns: argparse.Namespace) -> int:
    from core.evaluate_classifier import ClassifierEvalConfig, evaluate_classifier

    cfg = build_config(ClassifierEvalConfig, ns)
    result = evaluate_classifier(cfg)
    if cfg.json:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'backend':<16} {'accuracy':>9} {'balanced':>9} {'macro-F1':>9} {'unfaithful':>10} {'s/photo':>8}")
    for name, r in result["comparison"].items():
        print(f"{name:<16} {r['accuracy']:>9.3f} {r['balanced_accuracy']:>9.3f} {r['macro_f1']:>9.3f} "
              f"{r['unfaithful_rationale_rate']:>10.3f} {r['seconds_per_photo']:>8.3f}")
    return 0


def _cmd_evaluate_pipeline(ns: argparse.Namespace) -> int:
    from core.evaluate_pipeline import PipelineEvalConfig, evaluate_pipeline

    cfg = build_config(PipelineEvalConfig, ns)
    _write_json(evaluate_pipeline(cfg), cfg.json)
    return 0


def _cmd_bench_pipeline(ns: argparse.Namespace) -> int:
    from core.bench import PipelineBenchConfig, bench_pipeline

    cfg = build_config(PipelineBenchConfig, ns)
    _write_json(bench_pipeline(cfg), cfg.json)
    return 0


def _cmd_train_adapter(ns: argparse.Namespace) -> int:
    from train.adapter import AdapterTrainConfig, train_adapter

    summary = train_adapter(build_config(AdapterTrainConfig, ns))
    _write_json({k: v for k, v in summary.items() if k != "train_config"}, None)
    return 0


def _cmd_train_nightly(ns: argparse.Namespace) -> int:
    from train.nightly import NightlyConfig, nightly

    result = nightly(build_config(NightlyConfig, ns))
    print(result.get("message") or f"nightly: {result['decision']} ({'; '.join(result['reasons'])})")
    _write_json({k: v for k, v in result.items() if k != "config"}, None)
    return 0


def _cmd_model_list(ns: argparse.Namespace) -> int:
    from train.registry import ModelRegistry

    reg = ModelRegistry(ns.registry)
    versions = reg.versions()
    if not versions:
        print(f"no stage-2 model versions in {reg.root} (the shipped adapter is used until the first nightly run)")
    for v in versions:
        m = v["metrics"]
        score = f"balanced {m['balanced_accuracy']:.3f} accuracy {m['accuracy']:.3f}" if "balanced_accuracy" in m else "no metrics"
        print(f"{'*' if v['current'] else ' '} {v['version']:<32} {score}")
    return 0


def _cmd_model_rollback(ns: argparse.Namespace) -> int:
    from train.registry import ModelRegistry

    print(f"current model is now {ModelRegistry(ns.registry).rollback()}")
    return 0


def _cmd_train_detector(ns: argparse.Namespace) -> int:
    from train.detector import DetectorTrainConfig, train_detector

    _write_json(train_detector(build_config(DetectorTrainConfig, ns)), None)
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add every command to the top-level parser and its train/evaluate/bench groups."""
    from core.analysis import AnalyzeConfig
    from core.bench import DetectorBenchConfig, PipelineBenchConfig
    from core.evaluate_pipeline import PipelineEvalConfig
    from core.evaluate import DetectorEvalConfig
    from core.evaluate_classifier import ClassifierEvalConfig
    from train.detector import DetectorTrainConfig
    from train.adapter import AdapterTrainConfig
    from train.nightly import NightlyConfig
    from train.probe import ProbeTrainConfig

    train, evaluate, bench = groups["train"], groups["evaluate"], groups["bench"]
    p = sub.add_parser("analyze", help="analyse a YOLO dataset export (counts, boxes, relations, plots)")
    add_config_args(p, AnalyzeConfig, positional=("data_yaml",))
    p.set_defaults(func=_cmd_analyze)

    p = train.add_parser("detector", help="train the stage-1 YOLO detector on a YOLO export")
    add_config_args(p, DetectorTrainConfig, positional=("data_yaml",))
    p.set_defaults(func=_cmd_train_detector)

    p = evaluate.add_parser("detector", help="mAP of the stage-1 detector")
    add_config_args(p, DetectorEvalConfig, positional=("data_yaml",))
    p.set_defaults(func=_cmd_evaluate_detector)

    p = bench.add_parser("detector", help="stage-1 latency per photo and photos/s")
    add_config_args(p, DetectorBenchConfig)
    p.set_defaults(func=_cmd_bench_detector)

    p = evaluate.add_parser("pipeline", help="both stages end to end: detection, conditions, relations")
    add_config_args(p, PipelineEvalConfig, positional=("data_yaml",))
    p.set_defaults(func=_cmd_evaluate_pipeline)

    p = bench.add_parser("pipeline", help="seconds per photo/object, photos/s, peak RSS, shared vs naive")
    add_config_args(p, PipelineBenchConfig)
    p.set_defaults(func=_cmd_bench_pipeline)

    p = sub.add_parser("predict", help="run the pipeline on photos (stage 1 + spatial facts)")
    p.add_argument("photos", nargs="+", type=Path, help="photo files")
    p.add_argument("--json", type=Path, help="write per-photo results here")
    p.add_argument("--overlay", type=Path, help="write overlay PNGs into this folder")
    p.add_argument("--weights", type=Path, help="detector checkpoint (default: the shipped, hash-pinned one)")
    p.add_argument("--conf", type=float, default=0.25, help="minimum detection confidence (default: 0.25)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--backend", default="probe", help="stage-2 backend: probe, adapter, qwen2vl, or none for stage 1 only (default: probe)")
    p.add_argument("--qwen-model", help="Qwen2-VL hub id or folder (backend qwen2vl)")
    p.add_argument("--qwen-precision", default="auto", help="qwen2vl precision: auto, fp32, fp16, bf16, int8, int4")
    p.set_defaults(func=_cmd_predict)

    p = train.add_parser("probe", help="fit the frozen-feature probe (stage-2 baseline)")
    add_config_args(p, ProbeTrainConfig, positional=("data_yaml",))
    p.set_defaults(func=_cmd_train_probe)

    p = train.add_parser("adapter", help="train the adapter VLM (projector + LoRA) on condition labels")
    add_config_args(p, AdapterTrainConfig, positional=("data_yaml",))
    p.set_defaults(func=_cmd_train_adapter)

    p = train.add_parser("nightly", help="fine-tune stage 2 on new corrections; promote only past the gate")
    add_config_args(p, NightlyConfig)
    p.set_defaults(func=_cmd_train_nightly)

    model = sub.add_parser("model", help="stage-2 model versions").add_subparsers(dest="what", required=True)
    for name, func, text in (("list", _cmd_model_list, "list versions (* marks the current one)"),
                             ("rollback", _cmd_model_rollback, "make the previous version current")):
        p = model.add_parser(name, help=text)
        p.add_argument("--registry", type=Path, help="registry folder (default: in the data dir)")
        p.set_defaults(func=func)

    p = evaluate.add_parser("classifier", help="stage-2 metrics on ground-truth boxes, with a backend comparison")
    add_config_args(p, ClassifierEvalConfig, positional=("data_yaml",))
    p.set_defaults(func=_cmd_evaluate_classifier)
