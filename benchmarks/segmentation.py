"""``zoo bench segmentation``: Spike2Former inference paths side by side, as ratios.

Paths, each timed in its own fresh process (so its peak memory is its own), on the same random weights (BN
statistics and layer scales drawn so that the neurons fire and every branch shows) and the same normalised
input, batch 1, ``--threads`` CPU threads (default 2):

* ``reference``: the zoo model as built: the computation of the official code (bit-exact with it on a reduced
  model, tests/segmentation/test_spike2former.py): T copies of every layer, the masks of all decoder layers,
  the decoder attention as ``(q k^T) v``, DCNv3's pure-PyTorch ``grid_sample`` core;
* ``fast``: :func:`tasks.segmentation.fast.optimize` (one time step, the last layer's masks, ``q (k^T v)``).

Reported: the speed-up (reference time / path time; medians of ``--repeats`` forwards after ``--warmup``), peak
resident memory of each process, and the largest difference of the fast logits from the reference ones
(relative to the largest reference logit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zoo.errors import ZooError
from zoo.plugin import Verb

from . import progress

PATHS = ("reference", "fast")


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
    if path == "fast":
        optimize(model)
    x = torch.randn(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            y = model(x)
            times.append(time.perf_counter() - t)
    torch.save(y, out)
    return {"path": path, "ms": statistics.median(times) * 1e3, "times_s": times,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(name: str = "spike2former-ade20k", imgsz: int = 512, repeats: int = 1, warmup: int = 1,
        threads: int = 2) -> dict:
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(PATHS, 1):
            progress(f"[{i}/{len(PATHS)}] timing path {path} ({name}, {imgsz}x{imgsz}, {warmup} warm-up + {repeats} "
                     f"forwards, {threads} threads, own process)")
            out = str(Path(tmp) / f"{path}.pt")
            cmd = [sys.executable, "-c", "import json; from benchmarks.segmentation import worker; "
                   f"print(json.dumps(worker({path!r}, {name!r}, {imgsz}, {repeats}, {warmup}, {threads}, {out!r})))"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise ZooError(f"benchmark path {path} failed: {proc.stderr.strip().splitlines()[-1:]}")
            results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        ref = torch.load(Path(tmp) / "reference.pt")
        fast = torch.load(Path(tmp) / "fast.pt")
    for r in results.values():
        r["speedup"] = results["reference"]["ms"] / r["ms"]
    diff = float((fast - ref).abs().max() / ref.abs().max())
    return {"model": name, "imgsz": imgsz, "repeats": repeats, "warmup": warmup, "threads": threads,
            "paths": results, "fast_max_rel_diff": diff}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="spike2former-ade20k", help="segmentation model (default spike2former-ade20k)")
    parser.add_argument("--imgsz", type=int, default=512, metavar="N", help="input size (default 512)")
    parser.add_argument("--repeats", type=int, default=1, metavar="N", help="timed forwards per path (default 1)")
    parser.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed forwards first (default 1)")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="CPU threads (default 2)")


def run_bench(args) -> None:
    for flag in ("imgsz", "repeats", "threads"):
        if getattr(args, flag) <= 0:
            raise ZooError(f"--{flag} must be positive, got {getattr(args, flag)}")
    report = run(args.model, args.imgsz, args.repeats, max(args.warmup, 0), args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    from zoo.table import text

    rows = [{"path": p, "speedup": f"{r['speedup']:.2f}x", "peak memory": f"{r['peak_mb']:.0f} MB"}
            for p, r in report["paths"].items()]
    print(f"{report['model']}, batch 1, {report['imgsz']}x{report['imgsz']}, {report['threads']} threads, median of "
          f"{report['repeats']} forward(s) after {report['warmup']} warm-up, each path in its own process "
          "(speedup = reference time / path time)")
    print(text(rows, ["path", "speedup", "peak memory"]))
    print(f"fast vs reference logits: largest difference {report['fast_max_rel_diff']:.2e} of the largest logit")


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
