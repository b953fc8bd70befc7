"""``zoo bench segmentation``: Spike2Former inference paths side by side, as ratios.

Paths, each timed in its own fresh process (so its peak memory is its own), on the same random weights (BN
statistics and layer scales drawn so that the neurons fire and every branch shows) and the same normalised
input, batch 1, ``--threads`` CPU threads (default 2):

* ``reference``: the zoo model as built: the computation of the official code (bit-exact with it on a reduced
  model, tests/segmentation/test_spike2former.py): T copies of every layer, the masks of all decoder layers,
  the decoder attention as ``(q k^T) v``, DCNv3's pure-PyTorch ``grid_sample`` core;
* ``fast``: :func:`tasks.segmentation.fast.optimize` (one time step, the last layer's masks, ``q (k^T v)``).
* ``auto``: ``fast``, then BN folded and the memory format timed (:func:`zoo.fuse.optimize_for_inference`),
  then every convolution on the arithmetic timed fastest for its input shape (:func:`zoo.arith.use_auto`: fp32,
  Winograd, bf16, and on spike counts -- NI-LIF's ``count / D`` -- int8; the lossy two within ``zoo.arith.DEFAULT_TOL``);
  the arithmetic chosen per convolution is reported (``--json``). Lossy where it takes bf16 / int8: the pixels'
  argmax agreement with the reference is reported beside the logits' difference.

Reported: the speed-up (reference time / path time; medians of ``--repeats`` forwards after ``--warmup``), the
same on process CPU time, peak resident memory of each process, the 1-minute load average before and after each
path, and the largest difference of the fast logits from the reference ones (relative to the largest reference
logit). ``--rounds N`` times the paths in turn N times (fresh processes each round), so that load from other jobs
falls on all of them.

``--official PATH`` (a user's own BICLab/Spike2Former checkout; ``--official-python`` an interpreter with its
pins) also times the official model in its own process, first in each round, on the zoo's weights
(benchmarks/segmentation_official.py: import stand-ins for mmcv's compiled ops, no official code in the zoo), and
prints official time / path time and the logits' difference from the official ones.

Measured (2026-12-02, the project's shared 2-core AMD EPYC VM, avx2/fma, no avx512, torch 2.14.1, with other jobs
running: load average 3-10; spike2former-ade20k, 512x512, batch 1, official snapshot f743860, config
SDTv2_maskformer_DCNpixelDecoder_ade20k.py): reference and fast logits are bitwise equal to the official ones.
With 1 thread (two runs, one forward per path each after a warm-up; CPU time): official 8.2 / 7.8 s, reference
30.3 / 30.9 s, fast 5.6 / 5.0 s, so official / fast = 1.46 / 1.57 and official / reference = 0.27 / 0.25 (wall:
official 12.5 / 11.8 s, reference 60.6 / 46.5 s, fast 11.4 / 7.5 s; official / fast 1.09 / 1.56); peak memory
official 2.9 GB, reference 5.8 GB, fast 1.5 GB. That snapshot's config builds the backbone
with T=1 while the zoo's card (the released ADE20K_SDTv2_iter102500 config) has T=4, and the reference path computes
all 4 steps: the ~4x is T (the logits do not depend on T), not a slower computation. With that config's backbone set to the
released T=4 (a scratch copy; same run conditions, 1 thread, load 1.1-2.1, one forward after a warm-up): official
34.99 s (CPU 34.10 s), reference 33.59 s, fast 5.19 s: **official / fast = 6.75x** (CPU time 6.75x), official /
reference 1.04; logits of both bitwise equal to the official ones; peak official 6059 MB, reference 5776 MB, fast
1526 MB. With 2
threads the wall times swung 3-6x with the load (official 22-70 s, reference 22-142 s, fast 3.2-49 s in two runs of
two rounds) and gave no stable ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zoo.errors import ZooError
from zoo.plugin import Verb

from . import progress

PATHS = ("reference", "fast", "auto")


def firing_weights(model, seed: int = 0):
    """Random BN statistics and visible layer scales, so a randomly initialised Spike2Former fires throughout."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.6 * torch.rand(n, generator=g) - 0.2)
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.fill_(0.5)
    return model


def worker(path: str, name: str, imgsz: int, repeats: int, warmup: int, threads: int, out: str) -> dict:
    """Time one path in this process; saves the logits to ``out``; returns ms per forward and peak RSS."""
    import resource

    import torch

    import zoo
    from tasks.segmentation.fast import optimize

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = firing_weights(zoo.load(name, pretrained=False))
    x = torch.randn(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    if path in ("fast", "auto"):
        optimize(model)
    if path == "auto":
        from zoo.arith import use_auto
        from zoo.fuse import optimize_for_inference

        model = optimize_for_inference(model, x)
        use_auto(model)
    times, cpu = [], []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            y = model(x)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    torch.save(y, out)
    got = {"path": path, "ms": statistics.median(times) * 1e3, "times_s": times, "cpu_s": cpu,
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if path == "auto":
        from collections import Counter

        from zoo.arith import report

        got["arith"] = dict(Counter(r["arith"] for r in report(model)))
    return got


def _official_args(official: str, official_config: str | None):
    """The checkout's Segmentation/ folder and the config to build, checked before anything is timed."""
    from .segmentation_official import default_config, segmentation_root

    root = segmentation_root(official)
    if root is None:
        raise ZooError(f"--official {official}: not a BICLab/Spike2Former checkout (expected Segmentation/ with "
                       "mmseg, mmdet and Qtrick_architecture); clone github.com/BICLab/Spike2Former")
    config = Path(official_config) if official_config else default_config(root)
    if config is None or not config.is_file():
        raise ZooError(f"--official-config {official_config or '(default)'}: no such config in {root}; name the "
                       "model's config file")
    return root, config


def _spawn(cmd: list[str], label: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise ZooError(f"benchmark path {label} failed: {proc.stderr.strip().splitlines()[-1:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    got["load_1min"] = [load, os.getloadavg()[0]]  # before and after: other jobs on the machine skew the times
    return got


def run(name: str = "spike2former-ade20k", imgsz: int = 512, repeats: int = 1, warmup: int = 1,
        threads: int = 2, rounds: int = 1, official: str | None = None, official_python: str | None = None,
        official_config: str | None = None) -> dict:
    """Time the paths (and, given ``official``, the official code) in turn, ``rounds`` times, each in a fresh
    process; a path's time is the median of all its timed forwards."""
    import torch

    paths = (("official",) if official else ()) + PATHS
    if official:
        root, config = _official_args(official, official_config)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if official:  # the zoo's weights, exactly as the zoo workers draw them, for the official model
            import zoo

            torch.manual_seed(0)
            state = Path(tmp) / "state.pt"
            torch.save(firing_weights(zoo.load(name, pretrained=False)).state_dict(), state)
        for r in range(rounds):
            for i, path in enumerate(paths, 1):
                progress(f"round {r + 1}/{rounds}, [{i}/{len(paths)}] timing path {path} ({name}, {imgsz}x{imgsz}, "
                         f"{warmup} warm-up + {repeats} forwards, {threads} threads, own process)")
                out = str(Path(tmp) / f"{path}.pt")
                if path == "official":
                    cmd = [official_python or sys.executable, str(Path(__file__).with_name("segmentation_official.py")),
                           "--checkout", str(root), "--config", str(config), "--state", str(state),
                           "--imgsz", str(imgsz), "--repeats", str(repeats), "--warmup", str(warmup),
                           "--threads", str(threads), "--out", out]
                else:
                    cmd = [sys.executable, "-c", "import json; from benchmarks.segmentation import worker; "
                           f"print(json.dumps(worker({path!r}, {name!r}, {imgsz}, {repeats}, {warmup}, {threads}, "
                           f"{out!r})))"]
                got = _spawn(cmd, path)
                if path in results:
                    got["times_s"] = results[path]["times_s"] + got["times_s"]
                    got["cpu_s"] = results[path]["cpu_s"] + got["cpu_s"]
                    got["peak_mb"] = max(got["peak_mb"], results[path]["peak_mb"])
                    got["ms"] = statistics.median(got["times_s"]) * 1e3
                    got["load_1min"] = results[path]["load_1min"] + got["load_1min"]
                results[path] = got
        logits = {p: torch.load(Path(tmp) / f"{p}.pt") for p in paths}
    for r in results.values():
        r["cpu_ms"] = statistics.median(r["cpu_s"]) * 1e3
    for r in results.values():
        r["speedup"] = results["reference"]["ms"] / r["ms"]
        r["cpu_speedup"] = results["reference"]["cpu_ms"] / r["cpu_ms"]
    ref = logits["reference"]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    report = {"model": name, "imgsz": imgsz, "repeats": repeats, "warmup": warmup, "threads": threads,
              "rounds": rounds, "paths": results, "fast_max_rel_diff": rel(logits["fast"], ref),
              "auto_max_rel_diff": rel(logits["auto"], ref),
              "auto_argmax_agreement": float((logits["auto"].argmax(1) == ref.argmax(1)).float().mean())}
    if official:
        report["official_config"] = str(config)
        report["reference_vs_official_max_rel_diff"] = rel(ref, logits["official"])
        report["fast_vs_official_max_rel_diff"] = rel(logits["fast"], logits["official"])
        report["official_over"] = {p: results["official"]["ms"] / results[p]["ms"] for p in PATHS}
        report["official_over_cpu"] = {p: results["official"]["cpu_ms"] / results[p]["cpu_ms"] for p in PATHS}
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="spike2former-ade20k", help="segmentation model (default spike2former-ade20k)")
    parser.add_argument("--imgsz", type=int, default=512, metavar="N", help="input size (default 512)")
    parser.add_argument("--repeats", type=int, default=1, metavar="N", help="timed forwards per path (default 1)")
    parser.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed forwards first (default 1)")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads (default 2)")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="time the paths in turn N times, each time in fresh processes (default 1)")
    parser.add_argument("--official", metavar="PATH",
                        help="also time the official code from your own BICLab/Spike2Former checkout (its own process)")
    parser.add_argument("--official-python", metavar="PY",
                        help="Python for --official, with mmcv-lite 2.0.1, mmengine 0.8.4, spikingjelly 0.0.0.0.14 "
                             "(default: this one)")
    parser.add_argument("--official-config", metavar="FILE",
                        help="official config to build (default: the ADE20K SDTv2 one in the checkout)")


def run_bench(args) -> None:
    for flag in ("imgsz", "repeats", "threads", "rounds"):
        if getattr(args, flag) <= 0:
            raise ZooError(f"--{flag} must be positive, got {getattr(args, flag)}")
    report = run(args.model, args.imgsz, args.repeats, max(args.warmup, 0), args.threads, args.rounds,
                 args.official, args.official_python, args.official_config)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    from zoo.table import text

    rows = [{"path": p, "s per forward": f"{r['ms'] / 1e3:.2f}", "speedup": f"{r['speedup']:.2f}x",
             "CPU s": f"{r['cpu_ms'] / 1e3:.2f}", "CPU speedup": f"{r['cpu_speedup']:.2f}x",
             "peak memory": f"{r['peak_mb']:.0f} MB", "load before/after": "/".join(f"{v:.1f}" for v in r["load_1min"])}
            for p, r in report["paths"].items()]
    print(f"{report['model']}, batch 1, {report['imgsz']}x{report['imgsz']}, {report['threads']} threads, median of "
          f"{report['rounds']} x {report['repeats']} forward(s), each after {report['warmup']} warm-up in its own "
          "process, paths in turn (speedup = reference time / path time; CPU = process CPU time, less skewed than the "
          "wall time when other jobs share the cores)")
    print(text(rows, ["path", "s per forward", "speedup", "CPU s", "CPU speedup", "peak memory", "load before/after"]))
    print(f"fast vs reference logits: largest difference {report['fast_max_rel_diff']:.2e} of the largest logit")
    arith = report["paths"]["auto"].get("arith", {})
    print(f"auto vs reference logits: largest difference {report['auto_max_rel_diff']:.2e} of the largest logit, "
          f"per-pixel argmax equal at {report['auto_argmax_agreement'] * 100:.2f} % of pixels; arithmetic per "
          f"(convolution, shape): {', '.join(f'{a} {n}' for a, n in sorted(arith.items()))}")
    if "official_over" in report:
        o = report["official_over"]
        print(f"official code: {report['paths']['official']['ms'] / 1e3:.2f} s per forward, "
              f"{report['paths']['official']['peak_mb']:.0f} MB; official time / reference time = {o['reference']:.2f}, "
              f"official time / fast time = {o['fast']:.2f} (CPU time: {report['official_over_cpu']['reference']:.2f}, "
              f"{report['official_over_cpu']['fast']:.2f}); logits vs official (of the largest official logit): "
              f"reference {report['reference_vs_official_max_rel_diff']:.2e}, "
              f"fast {report['fast_vs_official_max_rel_diff']:.2e}")


VERB = Verb("Spike2Former inference paths side by side (reference = the official computation), as speed ratios",
            add_arguments, run_bench, takes="task")


def summary(size: str = "quick", name: str = "spike2former-tiny-shapes") -> dict:
    """The segmentation row of ``zoo bench`` (:mod:`zoo.bench`): the demo model ``spike2former-tiny-shapes`` on
    a freshly generated held-out shapes set (:mod:`tasks.segmentation.synthetic`, seed 12345): mIoU when its card
    has weights, else ``n/a`` and random weights with firing statistics (:func:`firing_weights`) for the firing
    rate, energy (first image) and speed; the reference and fast paths timed side by side at 128x128, batch 1;
    exact = logits within 1e-4 of the reference's largest. ``size="tiny"``: 2 images, 64x64 timing."""
    import torch

    import zoo
    from tasks.segmentation.data import load_dataset
    from tasks.segmentation.evaluate import evaluate
    from tasks.segmentation.fast import optimize
    from tasks.segmentation.synthetic import write_ade20k
    from zoo import registry

    from . import median_ms, summary_row

    n_val, repeats, imgsz = {"quick": (20, 3, 128), "tiny": (2, 1, 64)}[size]
    trained = registry.info(name).weights is not None
    torch.manual_seed(0)
    model = zoo.load(name) if trained else firing_weights(zoo.load(name, pretrained=False))
    with tempfile.TemporaryDirectory() as tmp:
        write_ade20k(tmp, n_train=0, n_val=n_val, seed=12345)
        data = load_dataset(tmp, split="val")
        progress(f"segmentation: {name} on {n_val} generated held-out images"
                 + ("" if trained else " (no demo weights: firing rate and energy only, random weights)"))
        res = evaluate(model, data, max_images=None if trained else 1)
    x = torch.randn(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    times, outs = {}, {}
    progress(f"segmentation: timing reference, fast ({imgsz}x{imgsz}, batch 1, median of {repeats})")
    with torch.no_grad():
        for path in PATHS:
            optimize(model, enable=path == "fast")
            times[path] = median_ms(lambda: model(x), repeats)
            outs[path] = model(x)
        optimize(model, enable=False)
    ref = outs["reference"]
    exact = [p for p in PATHS if float((outs[p] - ref).abs().max() / ref.abs().max()) <= 1e-4]
    return summary_row(name, "segmentation", "mIoU", res.miou * 100 if trained else None,
                       f"{n_val if trained else 1} generated held-out shapes image(s)", res.firing_rate, res.energy_mj,
                       "image", times, "reference", exact,
                       note=("" if trained else "no demo weights: random weights with firing statistics; ")
                       + f"paths at {imgsz}x{imgsz}, batch 1")
