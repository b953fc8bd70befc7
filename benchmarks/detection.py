"""``zoo bench detection``: SpikeYOLO inference paths side by side, as ratios.

Paths, each timed in its own fresh process (so its peak memory is its own), on
the same weights and the same input (batch 1, 640x640 by default):

* ``reference``: the zoo model as built, eager fp32, NCHW, BN separate: the
  same computation as the official implementation (equal outputs, see
  tests/detection/test_spikeyolo.py);
* ``fp32-fast``: BN folded into the convolutions, the memory format (channels_last
  or NCHW) that was timed faster at the benched size, the I-LIF single-step path
  (``zoo.fuse.optimize_for_inference``);
* ``fp32-winograd``: BN folded, NCHW, and the dense 3x3 stride-1 convolutions
  (69 % of SpikeYOLO's multiply-accumulates) on Winograd F(4x4, 3x3)
  (``zoo.winograd``) wherever that was timed faster for the layer's shape;
* ``fp32-compiled``: the fast path compiled with ``torch.compile`` (inductor
  fuses the neurons, residual additions and BN-before-conv into C++ loops
  around oneDNN convolutions); its one-off compile time is reported apart;
* ``bf16-fast``: the fast path under bf16 autocast (counts 0..D are exact in
  bf16). Run only where the CPU has bf16 arithmetic (AVX512-BF16 or AMX);
  elsewhere one 3x3 convolution is timed in both precisions to show why not.
* ``int8``: the fast path with every convolution whose input is counts on
  oneDNN's quantised convolution (uint8 counts, per-channel int8 weights, exact
  int32 sums, fp32 out; ``zoo.arith``), the rest (the stem) in fp32; on any x86
  CPU (VNNI / AMX-INT8 where present, AVX2 otherwise);
* ``auto``: the fast path with each convolution on the arithmetic timed fastest
  for its input shape among those the CPU and the layer allow: fp32 direct,
  Winograd, bf16 (exact on spike counts, rounding real inputs) and int8 (on
  spike counts), the lossy two only where their error on that input is within ``zoo.arith.DEFAULT_TOL`` (``zoo.arith.use_auto``);
  ``--arith NAME`` overrides it: NAME wherever it applies, untimed. The one-off
  tuning time is reported as its compile time, the per-layer choices and
  their reasons in the JSON (``--layers`` prints them);
* ``onnxruntime``: the graph ``zoo export`` writes (the reference network,
  neurons as round/clip, decoded head), run by onnxruntime's CPU provider with
  all its graph optimisations (it folds BN into the convolutions itself) and
  as many threads as torch uses; its one-off export time and its difference
  from the reference are reported. Skipped, with a line, where onnx or
  onnxruntime is not installed (``pip install -e '.[export]'``).

The CPU's capabilities (``torch.backends.cpu.get_cpu_capability()`` and the
``/proc/cpuinfo`` flags that matter: AVX2, AVX-512, BF16, VNNI, AMX) are
printed above the ratios (:mod:`zoo.arith`).

Then the demo model's mAP@50 on a generated held-out set (1,000 images: fewer let rounding flips move it by
more than the 0.2-point bound), reference vs each fast and low-precision path.
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

from . import firing_statistics, progress

PATHS = ("reference", "fp32-fast", "fp32-winograd", "fp32-compiled", "bf16-fast", "int8", "auto", "onnxruntime")


def has_onnxruntime() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def cpu_has_bf16() -> bool:
    """bf16 arithmetic in the CPU and allowed to oneDNN (:func:`zoo.arith.cpu_capabilities`)."""
    from zoo.arith import cpu_capabilities

    return bool(cpu_capabilities()["bf16"])


def _model(name: str, weights: str | None, seed: int = 0):
    import torch

    import zoo

    torch.manual_seed(seed)
    model = zoo.load(name, pretrained=False, weights=weights)
    return firing_statistics(model) if weights is None else model


def onnxruntime_worker(name: str, weights: str | None, imgsz: int, repeats: int) -> dict:
    """The ``onnxruntime`` path: export the reference model (``zoo export``'s graph), time onnxruntime on it."""
    import os
    import resource
    import tempfile

    import onnxruntime as ort
    import torch

    from tasks.detection.export import export_onnx

    model = _model(name, weights)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        t = time.perf_counter()
        res = export_onnx(model, model.card, (1, 3, imgsz, imgsz), path, strict=False)
        export_s = time.perf_counter() - t
        del model
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return {"path": "onnxruntime", "ms": statistics.median(times) * 1e3, "compile_s": export_s,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "onnx_max_rel": res.max_rel, "rounding_floor": res.rounding_floor, "onnxruntime_version": ort.__version__}


def worker(path: str, name: str, weights: str | None, imgsz: int, repeats: int, arith: str = "auto") -> dict:
    """Time one path in this process; returns ms per forward and peak RSS."""
    import resource

    import torch

    from zoo.fuse import optimize_for_inference

    if path == "onnxruntime":
        return onnxruntime_worker(name, weights, imgsz, repeats)
    model = _model(name, weights)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    compile_s = None
    if path == "fp32-winograd":
        model = optimize_for_inference(model, torch.rand(1, 3, 128, 128), winograd=True)
    elif path != "reference":
        model = optimize_for_inference(model, x)  # its memory format timed at the benched size
    if path == "fp32-compiled":
        model = torch.compile(model)
    if path in ("auto", "int8"):
        from zoo.arith import use_auto

        prefer = "int8" if path == "int8" else None if arith == "auto" else arith
        use_auto(model, prefer=prefer)
    bf16 = path == "bf16-fast"
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t = time.perf_counter()
        model(x)
        if path in ("fp32-compiled", "auto", "int8"):
            compile_s = time.perf_counter() - t
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    out = {"path": path, "ms": statistics.median(times) * 1e3, "compile_s": compile_s,
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if path in ("auto", "int8"):
        from zoo.arith import report

        out["layers"] = report(model)
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


class _Autocast:
    """``model`` under bf16 autocast (the ``bf16-fast`` path), its outputs back in fp32, for the evaluator."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.model(x)
        return tuple(o.float() if isinstance(o, torch.Tensor) else [t.float() for t in o] for o in out)


MAP_IMAGES = 1000  # rounding flips move a 200-image mAP@50 by up to 0.4 points either way; 1,000 by ~0.1


def demo_map(n_val: int = MAP_IMAGES, arith: str = "auto", bf16: bool = False) -> dict:
    """mAP@50 of the bundled demo model on a freshly generated held-out set: reference vs the fast paths
    (fp32-fast, all-Winograd, spike-driven, all-int8, auto with ``arith``, and with ``bf16`` the bf16-fast
    path: bf16 autocast)."""
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
        from zoo.arith import report, use_auto

        auto = optimize_for_inference(model, torch.rand(1, 3, 128, 128))
        use_auto(auto, prefer=None if arith == "auto" else arith)
        got_auto = evaluate(auto, val, imgsz=128, energy=False)
        used = sorted({r["arith"] for r in report(auto)})
        int8 = optimize_for_inference(model, torch.rand(1, 3, 128, 128))
        use_auto(int8, prefer="int8")
        got_int8 = evaluate(int8, val, imgsz=128, energy=False)
        got_bf16 = evaluate(_Autocast(fast), val, imgsz=128, energy=False) if bf16 else None
    return {"images": n_val, "reference_map50": ref.map50, "fast_map50": got.map50, "winograd_map50": got_wino.map50,
            "spike_map50": spike.map50, "auto_map50": got_auto.map50, "auto_arithmetics": used, "arith": arith,
            "int8_map50": got_int8.map50, "bf16_map50": None if got_bf16 is None else got_bf16.map50}


def run(name: str = "spikeyolo-coco", weights: str | None = None, imgsz: int = 640, repeats: int = 5,
        with_map: bool = True, paths=PATHS, arith: str = "auto", map_images: int = MAP_IMAGES) -> dict:
    from zoo.arith import cpu_capabilities

    results = {}
    bf16 = cpu_has_bf16()
    ort = has_onnxruntime()
    paths = ["reference", *(p for p in paths if p != "reference")]  # the ratios' denominator always runs
    from zoo.arith import CHOICES, int8_available

    if arith not in CHOICES or arith == "reference":
        raise ZooError(f"--arith: choose from {', '.join(c for c in CHOICES if c != 'reference')}, got {arith!r}")
    int8 = int8_available()
    todo = [p for p in PATHS if p in paths and (p != "bf16-fast" or bf16) and (p != "onnxruntime" or ort)
            and (p != "int8" or int8)]
    for i, path in enumerate(todo, 1):
        progress(f"[{i}/{len(todo)}] timing path {path} ({name}, {imgsz}x{imgsz}, {repeats} forwards, own process)")
        cmd = [sys.executable, "-c",
               "import json, sys; from benchmarks.detection import worker; "
               f"print(json.dumps(worker({path!r}, {name!r}, {weights!r}, {imgsz}, {repeats}, {arith!r})))"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise ZooError(f"benchmark path {path} failed: {proc.stderr.strip().splitlines()[-1:]}")
        results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = results["reference"]["ms"]
    for r in results.values():
        r["speedup"] = ref / r["ms"]
    report = {"model": name, "imgsz": imgsz, "repeats": repeats, "cpu": cpu_capabilities(), "cpu_bf16": bf16,
              "arith": arith, "paths": results}
    if not int8 and "int8" in paths:
        report["int8_skipped"] = "this torch has no oneDNN quantised convolution"
    if not ort and "onnxruntime" in paths:
        report["onnxruntime_skipped"] = "onnx / onnxruntime not installed: pip install -e '.[export]'"
    if not bf16 and "bf16-fast" in paths:
        report["bf16_probe_ms"] = conv_precision_probe()
    if with_map:
        progress(f"demo model mAP@50 on {map_images} generated held-out images: reference, fast, Winograd, "
                 f"spike-driven, auto, int8{', bf16' if bf16 else ''}")
        report["demo_map"] = demo_map(map_images, arith=arith, bf16=bf16)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="spikeyolo-coco", help="detection model (default spikeyolo-coco)")
    parser.add_argument("--weights", default=None, metavar="PATH", help="weights (default: random, with firing BN statistics)")
    parser.add_argument("--imgsz", type=int, default=640, metavar="N", help="input size (default 640)")
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed forwards per path (default 5)")
    parser.add_argument("--no-map", action="store_true", help="skip the demo model's mAP check")
    parser.add_argument("--map-images", type=int, default=MAP_IMAGES, metavar="N",
                        help=f"generated held-out images for the mAP check (default {MAP_IMAGES})")
    parser.add_argument("--layers", action="store_true", help="print the auto path's per-layer choices")
    parser.add_argument("--arith", default="auto", choices=("auto", "fp32", "winograd", "bf16", "int8"), metavar="ARITH",
                        help="the auto path: auto (default: per layer, timed, lossy ones within tolerance) or one "
                             "arithmetic wherever it applies (fp32, winograd, bf16, int8)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), metavar="PATH",
                        help=f"paths to time (default all: {' '.join(PATHS)}); reference always runs")


def run_bench(args) -> None:
    for flag in ("imgsz", "repeats", "map_images"):
        if getattr(args, flag) <= 0:
            raise ZooError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    report = run(args.model, args.weights, args.imgsz, args.repeats, with_map=not args.no_map, paths=args.paths,
                 arith=args.arith, map_images=args.map_images)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    from collections import Counter

    from zoo.arith import describe
    from zoo.table import text

    def note(r):
        if "winograd_layers" in r:
            return f"Winograd in {r['winograd_layers'][0]} of {r['winograd_layers'][1]} 3x3 layers"
        if "layers" in r:
            n = Counter(row["arith"] for row in r["layers"])
            k = Counter(row["int8_kernel"] for row in r["layers"] if row.get("int8_kernel"))
            kernels = f" (int8 kernels: {', '.join(f'{a} {k[a]}' for a in sorted(k))})" if k else ""
            return ("per conv and shape: " + ", ".join(f"{a} {n[a]}" for a in sorted(n)) + f" of {sum(n.values())}"
                    + kernels)
        if "onnx_max_rel" in r:
            floor = r.get("rounding_floor")
            return (f"onnxruntime {r['onnxruntime_version']}; compile = zoo export; output vs reference "
                    f"{r['onnx_max_rel']:.2g} of its range"
                    + ("" if floor is None else f" (reference with BN folded: {floor:.2g}, rounding-boundary flips)"))
        return ""

    rows = [{"path": p + (f" (--arith {report['arith']})" if p == "auto" and report["arith"] != "auto" else ""),
             "speedup": f"{r['speedup']:.2f}x", "peak memory": f"{r['peak_mb']:.0f} MB",
             "compile": "-" if r.get("compile_s") is None else f"{r['compile_s']:.0f} s once", "note": note(r)}
            for p, r in report["paths"].items()]
    print(describe(report["cpu"]))
    print(f"{report['model']}, batch 1, {report['imgsz']}x{report['imgsz']}, median of {report['repeats']} "
          "forwards, each path in its own process (speedup = reference time / path time)")
    print(text(rows, ["path", "speedup", "peak memory", "compile", "note"]))
    if "int8_skipped" in report:
        print(f"int8: not run ({report['int8_skipped']})")
    if args.layers and "auto" in report["paths"]:
        print("\nauto: the arithmetic of each convolution (per input shape) and why")
        print(text([{"layer": r["layer"], "input": "x".join(map(str, r["shape"])), "arith": r["arith"],
                     "ms": " ".join(f"{a} {t:.3g}" for a, t in r["ms"].items()) or "-", "why": r["why"]}
                    for r in report["paths"]["auto"]["layers"]], ["layer", "input", "arith", "ms", "why"]))
    if "onnxruntime_skipped" in report:
        print(f"onnxruntime: not run ({report['onnxruntime_skipped']})")
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
              f"{d['spike_map50'] * 100:.2f}, all-int8 {d['int8_map50'] * 100:.2f} "
              f"(change {abs(d['int8_map50'] - d['reference_map50']) * 100:.2f} points), auto"
              f"{'' if d['arith'] == 'auto' else ' --arith ' + d['arith']} ({'/'.join(d['auto_arithmetics'])}) "
              f"{d['auto_map50'] * 100:.2f} (change {abs(d['auto_map50'] - d['reference_map50']) * 100:.2f} points)"
              + ("" if d.get("bf16_map50") is None else f", bf16-fast {d['bf16_map50'] * 100:.2f} (change "
                 f"{abs(d['bf16_map50'] - d['reference_map50']) * 100:.2f} points)"))


VERB = Verb("SpikeYOLO inference paths side by side (reference = the official computation), as speed ratios",
            add_arguments, run_bench, takes="task")


def _max_rel(a, b) -> float:
    """Largest difference of the head outputs ``a`` from ``b``, relative to ``b``'s largest magnitude."""
    a, b = (t[0] if isinstance(t, (tuple, list)) else t for t in (a, b))
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def summary(size: str = "quick") -> dict:
    """The detection row of ``zoo bench`` (:mod:`zoo.bench`): the demo model ``spikeyolo-tiny-shapes`` on a
    freshly generated held-out shapes set (mAP@50, firing rate and energy of the first image), and its fp32
    paths timed side by side at its own input size (128x128, batch 1): reference, fp32-fast, fp32-winograd and
    auto restricted to the exact arithmetics (fp32 direct / Winograd). A path counts as exact when its outputs
    are within 1e-4 of the reference's range on the timed input. ``size="tiny"`` (the test's): 2 images, 64x64,
    no Winograd path."""
    import tempfile

    import torch

    import zoo
    from tasks.detection.data import load_dataset
    from tasks.detection.evaluate import evaluate
    from tasks.detection.synthetic import write_coco
    from zoo.arith import use_auto
    from zoo.fuse import optimize_for_inference

    from . import median_ms, summary_row

    n_val, repeats, imgsz = {"quick": (50, 5, 128), "tiny": (2, 1, 64)}[size]
    name = "spikeyolo-tiny-shapes"
    model = zoo.load(name)
    with tempfile.TemporaryDirectory() as tmp:
        progress(f"detection: {name} mAP@50 on {n_val} generated held-out images")
        write_coco(tmp, n_train=0, n_val=n_val, seed=12345)
        res = evaluate(model, load_dataset(tmp, split="val"), imgsz=128, energy=True)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    example = torch.rand(1, 3, imgsz, imgsz)
    paths = {"reference": (model, x),
             "fp32-fast": (optimize_for_inference(zoo.load(name), example), x)}
    if size != "tiny":
        paths["fp32-winograd"] = (optimize_for_inference(zoo.load(name), example, winograd=True), x)
    auto = optimize_for_inference(zoo.load(name), example)
    use_auto(auto, allow=("winograd",))
    paths["auto"] = (auto, x)
    progress(f"detection: timing {', '.join(paths)} ({imgsz}x{imgsz}, batch 1, median of {repeats})")
    times, exact = {}, []
    with torch.no_grad():
        ref = model(x)
        for p, (m, xi) in paths.items():
            times[p] = median_ms(lambda m=m, xi=xi: m(xi), repeats)
            if _max_rel(m(xi), ref) <= 1e-4:
                exact.append(p)
    return summary_row(name, "detection", "mAP@50", res.map50 * 100, f"{n_val} generated held-out shapes images",
                       res.firing_rate, res.energy_mj, "image", times, "reference", exact,
                       note=f"paths at {imgsz}x{imgsz}, batch 1")
