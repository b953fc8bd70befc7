"""``zoo predict`` and ``zoo eval`` for detection models.

    zoo predict spikeyolo-coco photo.jpg photos/ --out runs/ [--conf 0.25 --iou 0.7 --imgsz 640]
    zoo eval spikeyolo-coco --data coco/ [--imgsz 640 --batch 1 --max-images N --save-json dets.json]

Both take ``--weights PATH`` (else the released weights), ``--mode
integer|spike`` and ``--device``. The verbs' parsers are shared with other
tasks, so every option here defaults to ``None`` (resolved in the command) and
an option another task already added is not added again.
"""

from __future__ import annotations

import argparse
import json

from zoo.cli import task_command
from zoo.errors import ZooError

TASK = "detection"
DEFAULT_IMGSZ = 640


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """Add an option unless one of its flags (or, for a positional, its name) is already there."""
    if flags[0].startswith("-"):
        if any(f in parser._option_string_actions for f in flags):
            return
    elif any(a.dest == flags[0] for a in parser._actions):
        return
    parser.add_argument(*flags, **kwargs)


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--imgsz", type=int, default=None, metavar="N", help="inference size in pixels (default: the model's)")
    _add(parser, "--weights", default=None, metavar="PATH", help="weights file (default: the released weights)")
    _add(parser, "--mode", choices=("integer", "spike"), default=None, help="integer counts (default) or spike-driven")
    _add(parser, "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    # the model name is the verb's `target`; inputs follow it
    if not any(not a.option_strings and a.nargs in ("+", "*") for a in parser._actions):
        parser.add_argument("sources", nargs="+", metavar="SOURCE", help="image files or folders of images")
    parser.set_defaults(detection_sources_dest=next(
        a.dest for a in parser._actions if not a.option_strings and a.nargs in ("+", "*")))
    _add(parser, "--out", default=None, metavar="DIR", help="output folder (default: predictions)")
    _add(parser, "--conf", type=float, default=None, help="confidence threshold (detection default 0.25)")
    _add(parser, "--iou", type=float, default=None, help="NMS IoU threshold (detection default 0.7)")
    _add_common(parser)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--data", default=None, metavar="PATH", help="data set: a COCO folder or instances JSON, a data .yaml, VOC, Gen1 (detection)")
    _add(parser, "--batch", type=int, default=None, metavar="N", help="batch size (default 1)")
    _add(parser, "--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images")
    _add(parser, "--save-json", default=None, metavar="PATH", help="also write the detections as COCO results JSON")
    _add_common(parser)


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ZooError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZooError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return name


def _imgsz(args, name: str) -> int:
    if args.imgsz is not None:
        if args.imgsz <= 0:
            raise ZooError(f"--imgsz must be positive, got {args.imgsz}")
        return args.imgsz
    from zoo import registry

    size = tuple(registry.info(name).input_size or ())
    return int(size[-1]) if len(size) >= 2 else DEFAULT_IMGSZ


def _load_model(args):
    import zoo
    from zoo import registry

    device = _device(args.device)
    if args.weights is None and registry.info(args.target).weights is None:
        raise ZooError(f"{args.target} has no released weights; pass --weights PATH")
    return zoo.load(args.target, pretrained=args.weights is None, weights=args.weights,
                    mode=args.mode or "integer", device=device)


def _energy_line(profile) -> str:
    from zoo.table import fmt_count

    fr = profile.firing_rate
    return (f"energy (first image, {profile.preset}): firing rate {'-' if fr is None else f'{fr:.4f}'}, "
            f"{fmt_count(profile.macs)} MACs, {fmt_count(profile.acs)} ACs, {profile.energy_mj:.4f} mJ")


@task_command("predict", TASK, add_predict_arguments)
def run_predict(args) -> None:
    from .predict import predict

    sources = getattr(args, getattr(args, "detection_sources_dest", "sources"), None)
    imgsz = _imgsz(args, args.target)
    model = _load_model(args)
    res = predict(model, sources or [], args.out or "predictions",
                  conf=0.25 if args.conf is None else args.conf, iou=0.7 if args.iou is None else args.iou,
                  imgsz=imgsz)
    if getattr(args, "json", False):
        print(json.dumps({"name": args.target, "mode": args.mode or "integer", "imgsz": imgsz, **res.to_dict()}, indent=2))
        return
    for im in res.images:
        counts: dict[str, int] = {}
        for d in im["detections"]:
            counts[d["class_name"]] = counts.get(d["class_name"], 0) + 1
        found = ", ".join(f"{n} {c}" for c, n in counts.items()) or "nothing"
        print(f"{im['file']} ({im['width']}x{im['height']}): {found} -> {im['annotated']}")
    if res.profile is not None:
        print(_energy_line(res.profile))
    print(f"detections written to {res.json_path}")


@task_command("eval", TASK, add_eval_arguments)
def run_eval(args) -> None:
    from .evaluate import evaluate, to_coco_results
    from .postprocess import COCO80_TO_COCO91

    if not args.data:
        raise ZooError("zoo eval for detection needs --data PATH (e.g. a COCO folder: annotations/instances_val2017.json + val2017/)")
    try:
        from .data import load_dataset
    except ImportError as e:
        raise ZooError(f"loading detection data sets (tasks.detection.data.load_dataset) is not available ({e}); "
                       "evaluate from Python with tasks.detection.evaluate.evaluate") from None
    batch = 1 if args.batch is None else args.batch
    if batch <= 0:
        raise ZooError(f"--batch must be positive, got {batch}")
    imgsz = _imgsz(args, args.target)
    dataset = load_dataset(args.data)
    model = _load_model(args)
    res = evaluate(model, dataset, imgsz=imgsz, batch_size=batch, max_images=args.max_images,
                   progress=not getattr(args, "json", False))
    if args.save_json:
        ids = getattr(dataset, "category_ids", None)
        if ids is None and res.nc == len(COCO80_TO_COCO91):
            ids = COCO80_TO_COCO91
        try:
            with open(args.save_json, "w") as f:
                json.dump(to_coco_results(res.detections, ids), f)
        except OSError as e:
            raise ZooError(f"cannot write {args.save_json} ({e})") from None
    if getattr(args, "json", False):
        print(json.dumps({"name": args.target, "data": str(args.data), "mode": args.mode or "integer",
                          **res.to_dict()}, indent=2))
        return
    print(f"{args.target} on {args.data}: {res.images} images at {imgsz}, {args.mode or 'integer'} mode")
    print(f"mAP@50 {res.map50 * 100:.2f}  mAP@50:95 {res.map50_95 * 100:.2f}  (pycocotools, against {res.ground_truth})")
    if res.energy_mj is not None:
        fr = res.firing_rate
        print(f"energy (first image): firing rate {'-' if fr is None else f'{fr:.4f}'}, {res.energy_mj:.4f} mJ")
    if args.save_json:
        print(f"detections written to {args.save_json}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--data", default=None, metavar="PATH", help="data set folder with train and val splits (detection: COCO, YOLO, VOC, Gen1)")
    _add(parser, "--epochs", type=int, default=None, metavar="N", help="epochs (detection default 300)")
    _add(parser, "--batch", type=int, default=None, metavar="N", help="batch size per process (detection default 40)")
    _add(parser, "--out", default=None, metavar="DIR", help="run folder for last.pt / best.safetensors (default runs/train)")
    _add(parser, "--resume", default=None, metavar="PATH", help="continue from a last.pt checkpoint")
    _add(parser, "--time-limit", type=float, default=None, metavar="S", help="stop after the epoch that passes S seconds")
    _add(parser, "--workers", type=int, default=None, metavar="N", help="data loader processes (default 0)")
    _add(parser, "--set", nargs="*", default=None, metavar="KEY=VALUE", help="other recipe values, e.g. lr0=0.02 mosaic=0.5")
    _add_common(parser)


def _recipe(args):
    from dataclasses import fields

    from .train import TrainConfig

    cfg = TrainConfig()
    types = {f.name: f.type for f in fields(TrainConfig)}
    cfg.imgsz = _imgsz(args, args.target)
    for key, value in (("epochs", args.epochs), ("batch", args.batch), ("time_limit", args.time_limit),
                       ("workers", args.workers)):
        if value is not None:
            setattr(cfg, key, value)
    for item in args.set or []:
        key, _, value = item.partition("=")
        if key not in types or not value:
            raise ZooError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        setattr(cfg, key, float(value) if types[key] in ("float", float) else int(value))
    return cfg


@task_command("train", TASK, add_train_arguments)
def run_train(args) -> None:
    import zoo

    from .data import load_dataset
    from .evaluate import evaluate
    from .train import train

    if not args.data:
        raise ZooError("zoo train for detection needs --data PATH (a folder with train and val splits)")
    cfg = _recipe(args)
    train_set, val_set = load_dataset(args.data, split="train"), load_dataset(args.data, split="val")
    names = getattr(train_set, "names", None)
    options = {"nc": len(names)} if names else {}
    model = zoo.load(args.target, pretrained=False, weights=args.weights, device=_device(args.device), **options)

    def validate(ema_model):
        res = evaluate(ema_model, val_set, imgsz=cfg.imgsz, batch_size=min(cfg.batch, 16), energy=False)
        return {"map50": res.map50, "map50_95": res.map50_95}

    metrics = train(model, train_set, val_set, cfg=cfg, out=args.out or "runs/train", resume=args.resume,
                    device=_device(args.device), evaluate=validate)
    if metrics:
        print(json.dumps(metrics) if getattr(args, "json", False) else
              f"done: epoch {metrics['epoch']}, mAP@50 {metrics.get('map50', float('nan')) * 100:.2f}; "
              f"weights in {args.out or 'runs/train'}/best.safetensors")


COMMANDS = {"predict": (add_predict_arguments, run_predict), "eval": (add_eval_arguments, run_eval),
            "train": (add_train_arguments, run_train)}
