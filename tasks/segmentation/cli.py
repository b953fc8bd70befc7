"""The segmentation verbs: ``zoo predict``, ``zoo eval``, ``zoo train`` and what ``zoo profile`` feeds a Spike2Former.

    zoo predict spike2former-ade20k photo.jpg photos/ --out runs/ [--mode spike --weights PATH]
    zoo train spike2former-tiny-shapes --data shapes/ [--iters --batch --crop --out runs/train --resume]
    zoo eval spike2former-ade20k --data ADEChallengeData2016/ [--split val --max-images N]

Both run the official test pipeline of the model (:mod:`tasks.segmentation.pipeline`; ``--scale`` and
``--size-divisor`` change it). Each verb has its own parser; add a verb by adding an entry to ``VERBS``.
This module imports no torch: the work is imported inside each command.
"""

from __future__ import annotations

import argparse
import json

from zoo import options
from zoo.errors import ZooError
from zoo.plugin import Profiling, Verb

_WEIGHTS = "weights file: an official checkpoint as downloaded or the zoo's safetensors (default: the released weights)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, metavar="PATH", help=_WEIGHTS)
    parser.add_argument("--mode", choices=("integer", "spike"), default="integer",
                        help="integer counts (default) or spike-driven events")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                        help="keep-ratio test resize bounds (default: the model's, e.g. 2048 512 for ADE20K)")
    parser.add_argument("--size-divisor", type=int, default=None, metavar="N",
                        help="pad the input to a multiple of N (default: the model's; 32 for Cityscapes)")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="image files or folders of images")
    parser.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default: predictions)")
    parser.add_argument("--no-energy", action="store_true", help="do not profile the first image")
    add_model_arguments(parser)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="ADEChallengeData2016, Cityscapes (leftImg8bit + gtFine) or VOC2012 folder")
    parser.add_argument("--split", default="val", help="split to evaluate (default val)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--no-energy", action="store_true", help="do not profile the first image")
    add_model_arguments(parser)


def load_model(args):
    import zoo
    from zoo import registry

    if args.weights is None and registry.info(args.target).weights is None:
        raise ZooError(f"{args.target} has no released weights; pass --weights PATH")
    return zoo.load(args.target, pretrained=args.weights is None, weights=args.weights, mode=args.mode,
                    device=options.device(args.device))


def pipeline(args, model):
    from dataclasses import replace

    from .pipeline import TestPipeline, pipeline_for

    p = pipeline_for(model)
    if args.scale is not None:
        p = replace(p, scale=tuple(args.scale))
    if args.size_divisor is not None:
        p = replace(p, size_divisor=args.size_divisor or None)
    return TestPipeline(p.scale, p.size_divisor)  # validated


def _weights_label(args) -> str:
    """The weights an energy line used: the user's file, the zoo's bundled demo weights, or the released ones."""
    from zoo import hub, registry

    if args.weights:
        return args.weights
    return "bundled" if hub.entry(registry.info(args.target).weights).bundled else "released"


def paper_energy(name: str) -> str:
    """``", paper: 68.0 mJ (ADE20K val, T1 x D4)"`` for a card with an energy figure, else ``""``."""
    from zoo import registry

    found = [m for m in registry.info(name).metrics if m.metric == "energy (mJ)"]
    return "".join(f"; paper: {m.value:g} mJ ({m.dataset}{', ' + m.note if m.note else ''})" for m in found)


def energy_line(name: str, profile, weights: str, mode: str) -> str:
    from zoo.table import fmt_count

    fr = profile.firing_rate
    return (f"energy per image (first image, {mode} mode, weights: {weights}, {profile.preset}): firing rate "
            f"{'-' if fr is None else f'{fr:.4f}'}, {fmt_count(profile.macs)} MACs, {fmt_count(profile.acs)} ACs, "
            f"{profile.energy_mj:.4f} mJ{paper_energy(name)}")


def run_predict(args) -> None:
    from .predict import predict

    model = load_model(args)
    res = predict(model, args.sources, args.out, pipeline=pipeline(args, model), energy=not args.no_energy)
    if args.json:
        print(json.dumps({"name": args.target, "mode": args.mode, "weights": _weights_label(args), **res.to_dict()},
                         indent=2))
        return
    for im in res.images:
        top = ", ".join(f"{c['class_name']} {100 * c['fraction']:.1f}%" for c in im["classes"][:5])
        more = f" (+{len(im['classes']) - 5} more)" if len(im["classes"]) > 5 else ""
        print(f"{im['file']} ({im['width']}x{im['height']}): {top}{more} -> {im['overlay']}")
    print("\n".join(res.report()))
    if res.profile is not None:
        print(energy_line(args.target, res.profile, _weights_label(args), args.mode))
    print(f"labels, overlays and {res.json_path.name} written to {res.json_path.parent}")


def run_eval(args) -> None:
    from .data import load_dataset
    from .evaluate import evaluate

    if args.max_images is not None and args.max_images <= 0:
        raise ZooError(f"--max-images must be positive, got {args.max_images}")
    dataset = load_dataset(args.data, split=args.split)
    model = load_model(args)
    res = evaluate(model, dataset, pipeline=pipeline(args, model), max_images=args.max_images,
                   energy=not args.no_energy, progress=not args.json)
    if args.json:
        print(json.dumps({"name": args.target, "data": str(args.data), "split": args.split, "mode": args.mode,
                          "weights": _weights_label(args), **res.to_dict()}, indent=2))
        return
    print(f"{args.target} on {dataset.name} {args.split} ({args.data}): {res.images} images, {res.num_classes} "
          f"classes, {args.mode} mode")
    print(f"mIoU {res.miou * 100:.2f}  mAcc {res.macc * 100:.2f}  aAcc {res.aacc * 100:.2f}  "
          "(mmseg IoUMetric, ignore index 255)")
    if res.energy_mj is not None:
        fr = res.firing_rate
        print(f"energy per image (first image, weights: {_weights_label(args)}): firing rate "
              f"{'-' if fr is None else f'{fr:.4f}'}, {res.energy_mj:.4f} mJ{paper_energy(args.target)}")


def example_input(model, card, size, generator):
    """``zoo profile``: an image batch of ``size``, normalised as the official pipeline (ImageNet mean / std)."""
    import torch

    return (torch.randn(size, generator=generator),), {}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="data set folder with train and val splits (ADE20K, Cityscapes, VOC2012 layouts)")
    parser.add_argument("--iters", type=int, default=None, metavar="N", help="iterations (default 160000, the official recipe)")
    parser.add_argument("--batch", type=int, default=None, metavar="N", help="batch size per process (default 6)")
    parser.add_argument("--crop", type=int, default=None, metavar="N", help="training crop in pixels (default 512)")
    parser.add_argument("--out", default="runs/train", metavar="DIR",
                        help="run folder: last.pt (resumable) and best.safetensors (default runs/train)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="continue a run: its last.pt, or its run folder (no value: the --out folder's last.pt)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="validate, save and stop at the first iteration past S seconds")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="data loader processes (default 0)")
    parser.add_argument("--set", nargs="*", default=None, metavar="KEY=VALUE",
                        help="other recipe values, e.g. lr=2e-3 warmup_iters=100 val_interval=500")
    parser.add_argument("--weights", default=None, metavar="PATH", help="initial weights (default: random initialisation)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _train_recipe(args):
    from .train import TrainConfig

    for key in ("iters", "batch", "crop"):
        value = getattr(args, key)
        if value is not None and value <= 0:
            raise ZooError(f"--{key} must be positive, got {value}")
    cfg = TrainConfig()
    for key in ("iters", "crop"):  # this task counts iterations, not epochs
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    args.epochs = None
    return options.recipe(cfg, args)


def run_train(args) -> None:
    import zoo

    from .data import load_dataset
    from .train import train

    resume = options.resume_path(args.resume, args.out)
    cfg = _train_recipe(args)
    device = options.device(args.device)
    train_set, val_set = load_dataset(args.data, split="train"), load_dataset(args.data, split="val")
    model = zoo.load(args.target, pretrained=False, weights=args.weights, device=device)
    metrics = train(model, train_set, val_set, cfg=cfg, out=args.out, resume=resume, device=device,
                    from_scratch=args.weights is None)
    if metrics:
        print(json.dumps(metrics) if args.json else
              f"done: iteration {metrics['iter']}, mIoU {metrics.get('mIoU', float('nan')) * 100:.2f}; "
              f"weights in {args.out}/best.safetensors")


VERBS: dict = {
    "predict": Verb("segment images: label PNGs, colour overlays with a legend, class areas (JSON) and energy",
                    add_predict_arguments, run_predict),
    "eval": Verb("mIoU, mAcc and aAcc (mmseg IoUMetric) on ADE20K, Cityscapes or VOC 2012, with firing rate and energy",
                 add_eval_arguments, run_eval),
    "train": Verb("train with the official Spike2Former recipe (torchrun for data parallel)", add_train_arguments, run_train),
}
PROFILING = Profiling(example_input, note="a random normalised image (a real photo fires differently); energy counts "
                                          "the first conv as MACs, every layer and product fed by spikes as ACs")
