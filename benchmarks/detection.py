"""``zoo bench detection``: SpikeYOLO inference paths side by side, as ratios.

Paths, each timed in its own fresh process (so its peak memory is its own), on
the same weights and the same input (batch 1, 640x640 by default):

* ``reference``: the zoo model as built, eager fp32, NCHW, BN separate: the
  same computation as the official implementation (equal outputs, see
  tests/detection/test_spikeyolo.py);
* ``fp32-fast``: BN folded into the convolutions, channels_last, the I-LIF
  single-step path (``zoo.fuse.optimize_for_inference``);
* ``fp32-winograd``: BN folded, NCHW, and the dense 3x3 stride-1 convolutions
  (69 % of SpikeYOLO's multiply-accumulates) on Winograd F(4x4, 3x3)
  (``zoo.winograd``) wherever that was timed faster for the layer's shape;
* ``fp32-compiled``: the fast path compiled with ``torch.compile`` (inductor
  fuses the neurons, residual additions and BN-before-conv into C++ loops
  around oneDNN convolutions); its one-off compile time is reported apart;
* ``bf16-fast``: the fast path under bf16 autocast (counts 0..D are exact in
  bf16). Run only where the CPU has bf16 arithmetic (AVX512-BF16 or AMX);
  elsewhere one 3x3 convolution is timed in both precisions to show why not.

Then the demo model's mAP@50 on a generated held-out set, reference vs fast.
Times are medians of ``--repeats`` forwards after one warm-up; only ratios are
reported as results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from zoo.errors import ZooError
from zoo.plugin import Verb

from . import progress

PATHS = ("reference", "fp32-fast", "fp32-winograd", "fp32-compiled", "bf16-fast")


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def firing_statistics(model):
    """Random BN statistics that make a randomly initialised model's neurons fire as a trained model's do."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.4)
    return model


def _model(name: str, weights: str | None, seed: int = 0):
    import torch

    import zoo

    torch.manual_seed(seed)
    model = zoo.load(name, pretrained=False, weights=weights)
    return firing_statistics(model) if weights is None else model


def worker(path: str, name: str, weights: str | None, imgsz: int, repeats: int) -> dict:
    """Time one path in this process; returns ms per forward and peak RSS."""
    import resource

    import torch

    from zoo.fuse import optimize_for_inference

    model = _model(name, weights)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    compile_s = None
    if path == "fp32-winograd":
        model = optimize_for_inference(model, torch.rand(1, 3, 128, 128), winograd=True)
    elif path != "reference":
        model = optimize_for_inference(model, torch.rand(1, 3, 128, 128))
        x = x.contiguous(memory_format=torch.channels_last)
    if path == "fp32-compiled":
        model = torch.compile(model)
    bf16 = path == "bf16-fast"
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t = time.perf_counter()
        model(x)
        if path == "fp32-compiled":
            compile_s = time.perf_counter() - t
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    out = {"path": path, "ms": statistics.median(times) * 1e3, "compile_s": compile_s,
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if path == "fp32-winograd":
        from zoo.winograd import switches

        used = switches(model)
        out["winograd_layers"] = [sum(any(s.choice.values()) for s in used), len(used)]
    return out


def conv_precision_probe() -> dict:
    """One 3x3 conv (256 ch, 80x80, channels_last) in fp32 and in bf16: ms each."""
    import torch

    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.rand(1, 256, 80, 80).contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.no_grad():
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            c, xi = conv.to(dtype), x.to(dtype)
            c(xi)
            t = time.perf_counter()
            for _ in range(3):
                c(xi)
            out[label] = (time.perf_counter() - t) / 3 * 1e3
    return out


def demo_map(n_val: int = 200) -> dict:
    """mAP@50 of the bundled demo model on a freshly generated held-out set: reference vs fast path."""
    import tempfile

    import torch

    import zoo
    from tasks.detection.data import load_dataset
    from tasks.detection.evaluate import evaluate
    from tasks.detection.synthetic import write_coco
    from zoo.fuse import optimize_for_inference

    with tempfile.TemporaryDirectory() as tmp:
        write_coco(tmp, n_train=0, n_val=n_val, seed=12345)
        val = load_dataset(tmp, split="val")
        model = zoo.load("spikeyolo-tiny-shapes")
        fast = optimize_for_inference(model, torch.rand(1, 3, 128, 128))
        wino = optimize_for_inference(model, torch.rand(1, 3, 128, 128), winograd=True)
        from zoo.winograd import switches

        for switch in switches(wino):  # every eligible layer on Winograd: the largest possible change
            switch.autotune = False
        ref = evaluate(model, val, imgsz=128, energy=False)
        got = evaluate(fast, val, imgsz=128, energy=False)
        got_wino = evaluate(wino, val, imgsz=128, energy=False)
        spike = evaluate(zoo.load("spikeyolo-tiny-shapes", mode="spike"), val, imgsz=128, energy=False)
    return {"images": n_val, "reference_map50": ref.map50, "fast_map50": got.map50, "winograd_map50": got_wino.map50,
            "spike_map50": spike.map50}


def run(name: str = "spikeyolo-coco", weights: str | None = None, imgsz: int = 640, repeats: int = 5,
        with_map: bool = True) -> dict:
    results = {}
    bf16 = cpu_has_bf16()
    todo = [p for p in PATHS if p != "bf16-fast" or bf16]
    for i, path in enumerate(todo, 1):
        progress(f"[{i}/{len(todo)}] timing path {path} ({name}, {imgsz}x{imgsz}, {repeats} forwards, own process)")
        cmd = [sys.executable, "-c",
               "import json, sys; from benchmarks.detection import worker; "
               f"print(json.dumps(worker({path!r}, {name!r}, {weights!r}, {imgsz}, {repeats})))"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise ZooError(f"benchmark path {path} failed: {proc.stderr.strip().splitlines()[-1:]}")
        results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = results["reference"]["ms"]
    for r in results.values():
        r["speedup"] = ref / r["ms"]
    report = {"model": name, "imgsz": imgsz, "repeats": repeats, "cpu_bf16": bf16, "paths": results}
    if not bf16:
        report["bf16_probe_ms"] = conv_precision_probe()
    if with_map:
        progress("demo model mAP@50 on 200 generated held-out images: reference, fast, Winograd, spike-driven")
        report["demo_map"] = demo_map()
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="spikeyolo-coco", help="detection model (default spikeyolo-coco)")
    parser.add_argument("--weights", default=None, metavar="PATH", help="weights (default: random, with firing BN statistics)")
    parser.add_argument("--imgsz", type=int, default=640, metavar="N", help="input size (default 640)")
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed forwards per path (default 5)")
    parser.add_argument("--no-map", action="store_true", help="skip the demo model's mAP check")


def run_bench(args) -> None:
    report = run(args.model, args.weights, args.imgsz, args.repeats, with_map=not args.no_map)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    from zoo.table import text

    rows = [{"path": p, "speedup": f"{r['speedup']:.2f}x", "peak memory": f"{r['peak_mb']:.0f} MB",
             "compile": "-" if r.get("compile_s") is None else f"{r['compile_s']:.0f} s once",
             "note": (f"Winograd in {r['winograd_layers'][0]} of {r['winograd_layers'][1]} 3x3 layers"
                      if "winograd_layers" in r else "")}
            for p, r in report["paths"].items()]
    print(f"{report['model']}, batch 1, {report['imgsz']}x{report['imgsz']}, median of {report['repeats']} "
          "forwards, each path in its own process (speedup = reference time / path time)")
    print(text(rows, ["path", "speedup", "peak memory", "compile", "note"]))
    if "bf16_probe_ms" in report:
        p = report["bf16_probe_ms"]
        print(f"bf16-fast: not run, this CPU has no bf16 arithmetic (AVX512-BF16/AMX); one 3x3 conv takes "
              f"{p['bf16'] / p['fp32']:.1f}x as long in bf16 as in fp32 here")
    if "demo_map" in report:
        d = report["demo_map"]
        print(f"demo model mAP@50 on {d['images']} freshly generated held-out images: reference "
              f"{d['reference_map50'] * 100:.2f}, fp32-fast {d['fast_map50'] * 100:.2f} "
              f"(change {abs(d['fast_map50'] - d['reference_map50']) * 100:.2f} points), all-Winograd "
              f"{d['winograd_map50'] * 100:.2f} (change {abs(d['winograd_map50'] - d['reference_map50']) * 100:.2f} points), spike-driven "
              f"{d['spike_map50'] * 100:.2f}")


VERB = Verb("SpikeYOLO inference paths side by side (reference = the official computation), as speed ratios",
            add_arguments, run_bench, takes="task")
