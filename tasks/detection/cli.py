"""The detection verbs: ``zoo predict``, ``zoo eval``, ``zoo train`` and what ``zoo profile`` feeds a detector.

    zoo predict spikeyolo-coco photo.jpg photos/ --out runs/ [--conf 0.25 --iou 0.7 --imgsz 640]
    zoo eval spikeyolo-coco --data coco/ [--imgsz 640 --batch 1 --max-images N --save-json dets.json]
    zoo train spikeyolo-tiny-shapes --data shapes/ [--epochs --batch --out runs/train --resume]
    zoo export spikeyolo-tiny-shapes --format onnx [--mode integer|spike --input-size 1 3 128 128 --out FILE]

Each verb has its own parser (the zoo resolves the model's task first), so every option here is a
detection option. This module imports no torch: the work is imported inside each command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo import options
from zoo.errors import ZooError
from zoo.plugin import Profiling, Verb

DEFAULT_IMGSZ = 640
ARITH_CHOICES = ("reference", "auto", "fp32", "winograd", "bf16", "int8")  # zoo.arith.CHOICES (no torch import here)


def _add_model_options(parser: argparse.ArgumentParser, weights_help: str) -> None:
    parser.add_argument("--imgsz", type=int, default=None, metavar="N", help="inference size in pixels (default: the model's)")
    parser.add_argument("--weights", default=None, metavar="PATH", help=weights_help)
    parser.add_argument("--mode", choices=("integer", "spike"), default="integer", help="integer counts (default) or spike-driven events")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--arith", default="reference", choices=ARITH_CHOICES, metavar="ARITH",
                        help="CPU arithmetic of the convolutions: reference (default: the model as built), auto "
                             "(per layer, timed, within the lossy tolerance), or one of fp32, winograd, bf16, int8 "
                             "wherever it applies (BN folded first; see zoo.arith)")


_RELEASED = "weights file: an official checkpoint as downloaded or the zoo's safetensors (default: the released weights)"


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="image files or folders of images")
    parser.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default: predictions)")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    _add_model_options(parser, _RELEASED)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="data set: a COCO folder or instances JSON, a YOLO data .yaml, VOC, Gen1, EvDET200K")
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="batch size (default 1)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--save-json", default=None, metavar="PATH", help="also write the detections as COCO results JSON")
    _add_model_options(parser, _RELEASED)


def _imgsz(args, name: str) -> int:
    if args.imgsz is not None:
        if args.imgsz <= 0:
            raise ZooError(f"--imgsz must be positive, got {args.imgsz}")
        return args.imgsz
    from zoo import registry

    size = tuple(registry.info(name).input_size or ())
    return int(size[-1]) if len(size) >= 2 else DEFAULT_IMGSZ


def _load_model(args, imgsz: int | None = None):
    """The model the options ask for; with ``--arith`` other than reference, BN folded and each convolution on
    the arithmetic asked for (:func:`zoo.arith.apply`, on a ``imgsz`` example)."""
    import zoo
    from zoo import registry

    arith = getattr(args, "arith", "reference")
    if arith != "reference" and args.mode != "integer":
        raise ZooError(f"--arith {arith} runs the integer-mode convolutions on counts; drop --mode {args.mode}")
    device = options.device(args.device)
    if args.weights is None and registry.info(args.target).weights is None:
        raise ZooError(f"{args.target} has no released weights; pass --weights PATH")
    model = zoo.load(args.target, pretrained=args.weights is None, weights=args.weights,
                     mode=args.mode, device=device)
    if arith == "reference":
        return model
    import torch

    from zoo.arith import apply

    size = imgsz or _imgsz(args, args.target)
    return apply(model, arith, torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0), device=device))


def _arith_report(args, model) -> tuple[str, list]:
    from zoo.arith import report, summary

    return summary(model, args.arith), report(model)


def _energy_line(profile) -> str:
    from zoo.table import fmt_count

    fr = profile.firing_rate
    return (f"energy (first image, {profile.preset}): firing rate {'-' if fr is None else f'{fr:.4f}'}, "
            f"{fmt_count(profile.macs)} MACs, {fmt_count(profile.acs)} ACs, {profile.energy_mj:.4f} mJ")


def run_predict(args) -> None:
    from .predict import predict

    imgsz = _imgsz(args, args.target)
    model = _load_model(args, imgsz)
    res = predict(model, args.sources, args.out, conf=args.conf, iou=args.iou, imgsz=imgsz)
    line, layers = _arith_report(args, model)
    if args.json:
        print(json.dumps({"name": args.target, "mode": args.mode, "imgsz": imgsz, **res.to_dict(),
                          "arith": {"asked": args.arith, "layers": layers}}, indent=2))
        return
    for im in res.images:
        counts: dict[str, int] = {}
        for d in im["detections"]:
            counts[d["class_name"]] = counts.get(d["class_name"], 0) + 1
        found = ", ".join(f"{n} {c}" for c, n in counts.items()) or "nothing"
        print(f"{im['file']} ({im['width']}x{im['height']}): {found} -> {im['annotated']}")
    print("\n".join(res.report()))
    print(line)
    if res.profile is not None:
        print(_energy_line(res.profile))
    print(f"detections written to {res.json_path}")


def run_eval(args) -> None:
    from .classes import COCO80_TO_COCO91
    from .data import load_dataset
    from .evaluate import evaluate, to_coco_results

    batch = args.batch
    if batch <= 0:
        raise ZooError(f"--batch must be positive, got {batch}")
    imgsz = _imgsz(args, args.target)
    dataset = load_dataset(args.data)
    model = _load_model(args, imgsz)
    res = evaluate(model, dataset, imgsz=imgsz, batch_size=batch, max_images=args.max_images,
                   progress=not args.json)
    line, layers = _arith_report(args, model)
    if args.save_json:
        ids = getattr(dataset, "category_ids", None)
        if ids is None and res.nc == len(COCO80_TO_COCO91):
            ids = COCO80_TO_COCO91
        try:
            with open(args.save_json, "w") as f:
                json.dump(to_coco_results(res.detections, ids), f)
        except OSError as e:
            raise ZooError(f"cannot write {args.save_json} ({e})") from None
    if args.json:
        print(json.dumps({"name": args.target, "data": str(args.data), "mode": args.mode,
                          "arith": {"asked": args.arith, "layers": layers}, **res.to_dict(),
                          "boxes_dropped": getattr(dataset, "dropped", 0), "boxes_clipped": getattr(dataset, "clipped", 0)},
                         indent=2))
        return
    print(f"{args.target} on {args.data}: {res.images} images at {imgsz}, {args.mode} mode")
    if getattr(dataset, "box_summary", None) and dataset.box_summary():
        print(dataset.box_summary())
    print(f"mAP@50 {res.map50 * 100:.2f}  mAP@50:95 {res.map50_95 * 100:.2f}  (pycocotools, against {res.ground_truth})")
    print(line)
    if res.energy_mj is not None:
        fr = res.firing_rate
        print(f"energy (first image): firing rate {'-' if fr is None else f'{fr:.4f}'}, {res.energy_mj:.4f} mJ")
    if args.save_json:
        print(f"detections written to {args.save_json}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="data set folder with train and val splits (COCO, YOLO, VOC, Gen1)")
    options.add_training_options(parser, epochs="300, the official recipe", batch="40")
    _add_model_options(parser, "initial weights (default: random initialisation, as the official recipe)")


def _recipe(args):
    from .train import TrainConfig

    cfg = TrainConfig()
    cfg.imgsz = _imgsz(args, args.target)
    return options.recipe(cfg, args)


def run_train(args) -> None:
    import zoo

    from .data import load_dataset
    from .evaluate import evaluate
    from .train import train

    resume = options.resume_path(args.resume, args.out)
    cfg = _recipe(args)
    train_set, val_set = load_dataset(args.data, split="train"), load_dataset(args.data, split="val")
    names = getattr(train_set, "names", None)
    device = options.device(args.device)
    model = zoo.load(args.target, pretrained=False, weights=args.weights, device=device,
                     **({"nc": len(names)} if names else {}))

    def validate(ema_model):
        res = evaluate(ema_model, val_set, imgsz=cfg.imgsz, batch_size=min(cfg.batch, 16), energy=False)
        return {"map50": res.map50, "map50_95": res.map50_95}

    metrics = train(model, train_set, val_set, cfg=cfg, out=args.out, resume=resume, device=device, evaluate=validate)
    for data in (train_set, val_set):
        if data.box_summary():
            print(data.box_summary())
    if metrics:
        print(json.dumps(metrics) if args.json else
              f"done: epoch {metrics['epoch']}, mAP@50 {metrics.get('map50', float('nan')) * 100:.2f}; "
              f"weights in {args.out}/best.safetensors")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="file format (default onnx)")
    parser.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                        help="the fixed input shape of the graph, e.g. 1 3 640 640 (default: the card's)")
    parser.add_argument("--out", default=None, metavar="PATH", help="output file (default NAME.onnx)")
    parser.add_argument("--weights", default=None, metavar="PATH", help=_RELEASED)
    parser.add_argument("--mode", choices=("integer", "spike"), default="integer",
                        help="integer counts (default) or the spike-driven event form")
    parser.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (default 17)")


def run_export(args) -> None:
    from zoo import registry

    from .export import export_onnx, require_onnx

    require_onnx()  # before loading anything: say how to install it
    card = registry.info(args.target)
    shape = tuple(args.input_size) if args.input_size else tuple(card.input_size)
    if len(shape) not in (4, 5) or min(shape) <= 0:
        raise ZooError(f"--input-size: expected a positive shape B 3 H W (or B T 3 H W), got {list(shape)}")
    args.device = "cpu"
    model = _load_model(args)
    res = export_onnx(model, card, shape, args.out or f"{args.target}.onnx", opset=args.opset)
    if args.json:
        print(json.dumps({"name": args.target, **res.to_dict()}, indent=2))
        return
    print(f"{args.target} ({res.mode} mode, input {res.input_shape}, opset {res.opset}) -> {res.path}")
    line = (f"onnxruntime vs torch on a random test input: max difference {res.max_abs:.3g} "
            f"({res.max_rel:.3g} of the output range; tolerance {res.tolerance:g})")
    if res.mode == "spike":
        line += f"; vs integer mode {res.integer_max_abs:.3g} ({res.integer_max_rel:.3g})"
    print(line)
    if res.rounding_floor is not None:
        print(f"over {res.tolerance:g}: counts on a rounding boundary flip with last-bit changes; the torch model "
              f"itself moves by {res.rounding_floor:.3g} of the range with BN folded, so this is that effect, "
              "not an export error")
    print("output y [B, 4 + nc, anchors] (xywh in input pixels, class scores); NMS is not in the graph")


def example_input(model, card, size, generator):
    """``zoo profile``: a random image batch of ``size`` (default: the card's input size)."""
    import torch

    return (torch.rand(size, generator=generator),), {}


VERBS = {
    "predict": Verb("detect objects in images: annotated copies, predictions.json and the energy report",
                    add_predict_arguments, run_predict),
    "eval": Verb("COCO mAP@50 and mAP@50:95 (pycocotools) on a data set, with firing rate and energy",
                 add_eval_arguments, run_eval),
    "train": Verb("train with the official SpikeYOLO recipe (torchrun for data parallel)", add_train_arguments, run_train),
    "export": Verb("write an ONNX model (neurons as round/clip, decoded head, card metadata), checked with onnxruntime",
                   add_export_arguments, run_export),
}
PROFILING = Profiling(example_input)
