"""The point-cloud verbs: ``zoo predict``, ``zoo eval``, ``zoo train`` and what ``zoo profile`` feeds an E-3DSNN.

    zoo predict svl-e3dsnn-tiny-shapes cloud.npy mesh.ply ... [--classes ...] [--out predictions]
    zoo eval svl-e3dsnn-tiny-shapes --data meta_data/ [--num-points N --batch B]
    zoo train svl-e3dsnn-tiny-shapes --data meta_data/ [--epochs --batch --num-points --out --resume]

``--data`` is OpenShape's ``meta_data`` folder (or the folder holding it): see :mod:`tasks.pointcloud.data`.
This module imports no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo import options
from zoo.errors import ZooError
from zoo.plugin import Profiling, Verb


def _model_options(parser: argparse.ArgumentParser, weights_help: str) -> None:
    parser.add_argument("--weights", default=None, metavar="PATH", help=weights_help)
    parser.add_argument("--mode", choices=("integer", "spike"), default="integer",
                        help="integer counts (default) or spike-driven events")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--num-points", type=int, default=None, metavar="N",
                        help="points sampled per cloud (default: the model card's, 10,000 for SVL)")


_RELEASED = "weights file: an SVL checkpoint as downloaded or the zoo's safetensors (default: the released weights)"


def _num_points(args) -> int:
    from zoo import registry

    if args.num_points is not None:
        if args.num_points <= 0:
            raise ZooError(f"--num-points must be positive, got {args.num_points}")
        return args.num_points
    size = tuple(registry.info(args.target).input_size or ())
    return int(size[1]) if len(size) == 3 else 10000


def _load(args, **load_options):
    import zoo
    from zoo import registry

    if args.weights is None and registry.info(args.target).weights is None:
        raise ZooError(f"{args.target} has no released weights; pass --weights PATH (e.g. an SVL checkpoint)")
    return zoo.load(args.target, pretrained=args.weights is None, weights=args.weights, mode=args.mode,
                    device=options.device(args.device), **load_options)


def _text_proj(args):
    """SVL checkpoints keep text_proj beside the backbone; the zoo's models carry their own."""
    if args.weights is None:
        return None
    from zoo import checkpoint

    raw = checkpoint.read(args.weights)
    if isinstance(raw, dict) and isinstance(raw.get("text_proj"), dict) and raw["text_proj"]:
        from .e3dsnn import text_proj_from_checkpoint

        return text_proj_from_checkpoint(raw)
    return None


# ----------------------------------------------------------------------------- eval


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="OpenShape's meta_data folder: modelnet40/, split/lvis.json, scanobjectnn/ (any of them)")
    parser.add_argument("--batch", type=int, default=16, metavar="N", help="batch size (default 16)")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N", help="evaluate only the first N of each set")
    _model_options(parser, _RELEASED)


def run_eval(args) -> None:
    from .data import load_test_sets
    from .evaluate import zero_shot

    if args.batch <= 0:
        raise ZooError(f"--batch must be positive, got {args.batch}")
    n = _num_points(args)
    sets = load_test_sets(args.data, n)
    model = _load(args)
    proj = _text_proj(args)
    results = [zero_shot(model, s, args.batch, proj, max_samples=args.max_samples, progress=not args.json) for s in sets]
    if args.json:
        print(json.dumps({"name": args.target, "data": str(args.data), "mode": args.mode, "num_points": n,
                          "results": [r.to_dict() for r in results]}, indent=2))
        return
    print(f"{args.target} zero-shot on {args.data} ({n} points per cloud, {args.mode} mode)")
    print(f"{'data set':<16}{'samples':>8}{'classes':>8}{'top-1':>8}{'top-3':>8}{'top-5':>8}{'class':>8}"
          f"{'rate':>8}{'mJ':>9}")
    for r in results:
        fr = "-" if r.firing_rate is None else f"{r.firing_rate:.4f}"
        mj = "-" if r.energy_mj is None else f"{r.energy_mj:.4f}"
        print(f"{r.dataset:<16}{r.samples:>8}{r.classes:>8}{r.top1 * 100:>8.2f}{r.top3 * 100:>8.2f}{r.top5 * 100:>8.2f}"
              f"{r.class_mean * 100:>8.2f}{fr:>8}{mj:>9}")
    print("(class = per-class mean top-1; rate = mean spike count per neuron; energy per sample, fp32 45 nm)")


# ----------------------------------------------------------------------------- train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="OpenShape's meta_data folder with split/train_all.json (test sets in it are evaluated)")
    options.add_training_options(parser, epochs="250, SVL's", batch="128")
    _model_options(parser, "initial weights (default: random initialisation, as SVL)")


def _recipe(args):
    from .train import TrainConfig

    return options.recipe(TrainConfig(num_points=_num_points(args)), args)


def run_train(args) -> None:
    import zoo

    from .data import OpenShapeTrain, meta_dir, load_test_sets
    from .e3dsnn import ZERO_SHOT_KEY
    from .evaluate import zero_shot
    from .train import train

    resume = options.resume_path(args.resume, args.out)
    cfg = _recipe(args)
    train_set = OpenShapeTrain(args.data, cfg.num_points, augment=bool(cfg.augment), rgb_drop=cfg.rgb_drop, seed=cfg.seed)
    try:
        tests = load_test_sets(args.data, cfg.num_points)
    except ZooError:
        tests = []
    device = options.device(args.device)
    model = zoo.load(args.target, pretrained=False, weights=args.weights, device=device)
    first = tests[0] if tests else None

    def validate(m):
        r = zero_shot(m, first, batch_size=min(cfg.batch, 32), energy=False)
        return {"top1": r.top1, "class_mean": r.class_mean}

    def extra(m):  # the first test set's category features ship with the weights (the default head)
        return {ZERO_SHOT_KEY: first.category_features.float()} if first is not None else {}

    metrics = train(model, train_set, cfg=cfg, out=args.out, resume=resume, device=device,
                    evaluate=validate if first is not None else None, extra_state=extra)
    if metrics:
        print(json.dumps(metrics) if args.json else
              f"done: epoch {metrics['epoch']}, loss {metrics['loss']:.4f}"
              + (f", {first.name} zero-shot top-1 {metrics['top1'] * 100:.2f}" if first is not None else "")
              + f"; weights in {args.out}/best.safetensors")


# ----------------------------------------------------------------------------- predict / profile


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="point clouds or meshes: .npy (OpenShape dict or [N, 3|6]), .txt/.xyz/.csv, .ply/.obj/.off/.stl")
    parser.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default: predictions)")
    parser.add_argument("--classes", default=None, metavar="SPEC",
                        help="categories: a features .npy (OpenShape's dict format), a comma-separated list of names "
                             "(encoded with the zoo's text encoder) or modelnet40 (default: the model's own)")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="categories to print per cloud (default 5)")
    parser.add_argument("--y-up", action="store_true", help="the files are y-up (OpenShape's convention): swap y and z")
    _model_options(parser, _RELEASED)


def _classes_option(spec):
    if spec is None:
        return {}
    if Path(spec).is_file() or spec.lower() == "modelnet40":
        return {"classes": spec}
    names = [c.strip() for c in spec.split(",") if c.strip()]
    if not names:
        raise ZooError("--classes: give a features file, modelnet40 or comma-separated names")
    return {"classes": names}


def run_predict(args) -> None:
    from .predict import predict

    model = _load(args, **_classes_option(args.classes))
    proj = _text_proj(args)
    if proj is not None and model.classes is not None:  # an SVL checkpoint: fold with its text_proj
        model.set_zero_shot_head(model.classes[1], proj, model.classes[0])
    res = predict(model, args.sources, args.out, _num_points(args), top=args.top, y_up=args.y_up)
    if args.json:
        print(json.dumps({"name": args.target, "mode": args.mode, **res}, indent=2))
        return
    for r in res["results"]:
        ranked = ", ".join(f"{t['category']} {t['cosine']:.3f}" for t in r["top"])
        print(f"{r['file']} ({r['points']} points{'' if r['colour'] else ', no colour: 0.4'}): {ranked} -> {r['image']}")
    e = res["energy_first"]
    if e:
        fr = "-" if e["firing_rate"] is None else f"{e['firing_rate']:.4f}"
        print(f"energy (first cloud, {e['preset']}): firing rate {fr}, {e['macs']:,} MACs, {e['acs']:,} ACs, "
              f"{e['energy_mj']:.4f} mJ")
    print(f"predictions written to {res['json']} (cosine similarity to each category's prompt features)")



def example_input(model, card, size, generator):
    """``zoo profile``: ``size`` = (B, N, 6) random points (xyz in [-1, 1], rgb in [0, 1])."""
    import torch

    points = torch.rand(size, generator=generator)
    points[..., :3] = points[..., :3] * 2 - 1
    return (points,), {}


VERBS = {
    "predict": Verb("classify point clouds or meshes zero-shot: top categories, an image of each cloud, energy",
                    add_predict_arguments, run_predict),
    "eval": Verb("zero-shot top-1/3/5 and per-class accuracy on ModelNet40 / Objaverse-LVIS / ScanObjectNN files, "
                 "with firing rate and energy", add_eval_arguments, run_eval),
    "train": Verb("SVL pretraining: align to text (and image) features (torchrun for data parallel)",
                  add_train_arguments, run_train),
}
PROFILING = Profiling(example_input, note="random points (a real cloud fires differently)")
