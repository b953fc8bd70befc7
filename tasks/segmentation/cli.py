"""The segmentation verbs and what ``zoo profile`` feeds a Spike2Former (a normalised random image).

    zoo train spike2former-tiny-shapes --data shapes/ [--iters --batch --crop --out runs/train --resume]

This module imports no torch.
"""

from __future__ import annotations

import argparse
import json

from zoo.errors import ZooError
from zoo.plugin import Profiling, Verb


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
    from dataclasses import fields

    from .train import TrainConfig

    cfg = TrainConfig()
    types = {f.name: f.type for f in fields(TrainConfig)}
    for key, value in (("iters", args.iters), ("batch", args.batch), ("crop", args.crop),
                       ("time_limit", args.time_limit), ("workers", args.workers)):
        if value is not None:
            if key != "time_limit" and value <= 0 and not (key == "workers" and value == 0):
                raise ZooError(f"--{key.replace('_', '-')} must be positive, got {value}")
            setattr(cfg, key, value)
    for item in args.set or []:
        key, _, value = item.partition("=")
        if key not in types or not value:
            raise ZooError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        try:
            setattr(cfg, key, float(value) if types[key] in ("float", float) else int(value))
        except ValueError:
            raise ZooError(f"--set {item!r}: {key} takes a number") from None
    return cfg


def run_train(args) -> None:
    import torch

    import zoo
    from zoo.trainer import resume_path

    from .data import load_dataset
    from .train import train

    resume = resume_path(args.resume, args.out)
    cfg = _train_recipe(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_set, val_set = load_dataset(args.data, split="train"), load_dataset(args.data, split="val")
    model = zoo.load(args.target, pretrained=False, weights=args.weights, device=device)
    metrics = train(model, train_set, val_set, cfg=cfg, out=args.out, resume=resume, device=device)
    if metrics:
        print(json.dumps(metrics) if args.json else
              f"done: iteration {metrics['iter']}, mIoU {metrics.get('mIoU', float('nan')) * 100:.2f}; "
              f"weights in {args.out}/best.safetensors")


VERBS: dict = {
    "train": Verb("train with the official Spike2Former recipe (torchrun for data parallel)", add_train_arguments, run_train),
}
PROFILING = Profiling(example_input, note="a random normalised image (a real photo fires differently)")
