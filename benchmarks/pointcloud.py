"""``zoo bench pointcloud``: E-3DSNN forward cost, and the zoo's sparse convs against dense conv3d.

Each measurement runs in its own fresh process (its peak memory is its own), on one real cloud: the
pyvista example airplane (``pyvista-examples``, sampled to 10,000 points) when installed, else points on
a sphere. Parts:

* ``forward``: E-3DSNN-H (random weights, BN statistics that make the neurons fire) on 10,000 points,
  batch 1, integer mode: ms per forward, voxels, peak memory;
* ``layers``: a submanifold 3x3x3 conv and a 2x2x2 stride-2 conv at the stem resolution (voxel 0.02),
  each as the zoo's sparse conv (:mod:`tasks.pointcloud.sparse`, kernel maps included), as ``F.conv3d``
  on the dense grid, and as spconv at 1 thread where spconv is installed (optional; its CPU build is
  wrong with 2 threads, see the module notes). Ratios = dense (or spconv) time / sparse time.

Memory: each process's peak RSS, and the growth of that peak during the op's runs ("memory of the op"; the
dense grid itself is allocated before). The dense grid is the occupied bounding box, not the model's
spatial shape (which adds a margin of 96). Times are medians of ``--repeats`` runs after one warm-up; only
ratios and memory are results.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys

from zoo.errors import ZooError
from zoo.plugin import Verb
from zoo.timing import call_times

from . import firing_statistics, progress


def cloud(num_points: int = 10000):
    """``[1, N, 6]``: the pyvista airplane sampled on its surface, or a sphere; grey (OpenShape's 0.4)."""
    import numpy as np
    import torch

    spec = importlib.util.find_spec("pvexamples")
    rng = np.random.default_rng(0)
    if spec is not None and importlib.util.find_spec("trimesh") is not None:
        from pathlib import Path

        from tasks.pointcloud.predict import read_cloud

        xyz, _ = read_cloud(Path(spec.origin).parent / "airplane.ply", num_points)
        xyz = xyz[rng.choice(len(xyz), num_points, replace=False)]
        name = "pyvista airplane"
    else:
        xyz = rng.normal(size=(num_points, 3))
        xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
        name = "sphere"
    from tasks.pointcloud.data import prepare

    return prepare(xyz, None, num_points, y_up=False)[None], name


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_ms(fn, repeats: int) -> float:
    return statistics.median(call_times(fn, repeats)) * 1e3


def worker_forward(size: str, num_points: int, repeats: int) -> dict:
    import torch

    import zoo
    from tasks.pointcloud.evaluate import sparse_energy

    torch.manual_seed(0)
    model = firing_statistics(zoo.load(f"svl-e3dsnn-{size}-openshape", pretrained=False), bias_max=0.6, seed=0)
    x, name = cloud(num_points)
    base = _peak_mb()
    with torch.no_grad():
        ms = _median_ms(lambda: model(x), repeats)
    e = sparse_energy(model, x)
    voxels = model.stem[0].last_kernel_map.n_in
    return {"part": "forward", "model": f"E-3DSNN-{size.upper()}", "cloud": name, "points": num_points,
            "voxels": voxels, "ms": ms, "peak_mb": _peak_mb(), "work_mb": _peak_mb() - base, "firing_rate": e["firing_rate"],
            "energy_mj": e["energy_mj"]}


def worker_layer(kind: str, impl: str, channels: int, num_points: int, repeats: int) -> dict:
    """One conv (``subm`` 3x3x3 or ``down`` 2x2x2 s2, ``channels`` -> ``channels``) by ``impl``."""
    import torch
    import torch.nn.functional as F

    from tasks.pointcloud.e3dsnn import voxelize
    from tasks.pointcloud.sparse import SparseConv3d, SubMConv3d

    x, name = cloud(num_points)
    st = voxelize(x, 0.02)
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(len(st.features), channels, generator=g)
    st = st.replace_feature(feats)
    conv = (SubMConv3d(channels, channels, 3, padding=1, bias=False) if kind == "subm"
            else SparseConv3d(channels, channels, 2, stride=2, bias=False))
    shape = tuple(st.spatial_shape)
    grid = tuple(int(s) for s in st.coords[:, 1:].max(0).values + 2)  # the occupied box (+ a margin)
    if impl == "dense":
        dense = torch.zeros(1, channels, *grid)
        c = st.coords
        dense[0, :, c[:, 1], c[:, 2], c[:, 3]] = feats.t()
        w = conv.weight.permute(0, 4, 1, 2, 3).contiguous()
    if impl == "sparse":
        def fn():
            fresh = type(st)(st.features, st.coords, shape, 1)  # kernel maps are built every call
            return conv(fresh)
    elif impl == "dense":
        def fn():
            return F.conv3d(dense, w, padding=1) if kind == "subm" else F.conv3d(dense, w, stride=2)
    elif impl == "spconv":
        torch.set_num_threads(1)
        import spconv.pytorch as sp

        layer = (sp.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key="k") if kind == "subm"
                 else sp.SparseConv3d(channels, channels, 2, stride=2, bias=False))
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
        coords = st.coords.int()

        def fn():
            return layer(sp.SparseConvTensor(feats, coords, list(shape), 1))
    else:
        raise ValueError(impl)
    base = _peak_mb()  # the process so far (torch, the cloud; the dense grid for "dense")
    with torch.no_grad():
        ms = _median_ms(fn, repeats)
    return {"part": "layer", "kind": kind, "impl": impl, "channels": channels, "voxels": len(feats),
            "grid": list(grid), "ms": ms, "peak_mb": _peak_mb(), "work_mb": _peak_mb() - base,
            "threads": torch.get_num_threads()}


def _spawn(call: str) -> dict:
    cmd = [sys.executable, "-c", f"import json; from benchmarks.pointcloud import *; print(json.dumps({call}))"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise ZooError(f"benchmark step {call} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(size: str = "h", num_points: int = 10000, channels: int = 16, repeats: int = 3) -> dict:
    impls = ["sparse", "dense"] + (["spconv"] if importlib.util.find_spec("spconv") is not None else [])
    progress(f"E-3DSNN-{size.upper()} forward on {num_points} points, batch 1 (own process)")
    report = {"forward": _spawn(f"worker_forward({size!r}, {num_points}, {repeats})"), "layers": []}
    for kind in ("subm", "down"):
        rows = {}
        for impl in impls:
            progress(f"{kind} conv {channels}->{channels} as {impl} (own process)")
            rows[impl] = _spawn(f"worker_layer({kind!r}, {impl!r}, {channels}, {num_points}, {repeats})")
        for r in rows.values():
            r["ratio_vs_sparse"] = r["ms"] / rows["sparse"]["ms"]
        report["layers"].extend(rows.values())
    report["spconv"] = "spconv" in impls
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="h", choices=("t", "s", "l", "h"), help="E-3DSNN size for the forward (default h)")
    parser.add_argument("--points", type=int, default=10000, metavar="N", help="points per cloud (default 10,000)")
    parser.add_argument("--channels", type=int, default=16, metavar="C", help="channels of the layer comparison (default 16)")
    parser.add_argument("--repeats", type=int, default=3, metavar="N", help="timed runs per measurement (default 3)")


def run_bench(args) -> None:
    report = run(args.size, args.points, args.channels, args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    from zoo.table import text

    f = report["forward"]
    print(f"{f['model']} forward, batch 1, {f['points']} points of the {f['cloud']} ({f['voxels']} voxels at 0.02): "
          f"{f['ms']:.0f} ms, peak memory {f['peak_mb']:.0f} MB ({f['work_mb']:.0f} MB above the loaded model) (random weights with firing BN statistics: "
          f"firing rate {f['firing_rate']:.3f}, {f['energy_mj']:.3f} mJ)")
    rows = [{"layer": f"{'SubM 3x3x3' if r['kind'] == 'subm' else 'SparseConv 2x2x2 s2'} {r['channels']}->{r['channels']}",
             "impl": r["impl"] + (" (1 thread)" if r["impl"] == "spconv" else ""),
             "time / sparse": f"{r['ratio_vs_sparse']:.2f}x", "peak memory": f"{r['peak_mb']:.0f} MB", "memory of the op": f"{r['work_mb']:.0f} MB",
             "sites": f"{r['voxels']} of {r['grid'][0]}x{r['grid'][1]}x{r['grid'][2]}"} for r in report["layers"]]
    print(text(rows, ["layer", "impl", "time / sparse", "peak memory", "memory of the op", "sites"]))
    if not report["spconv"]:
        print("spconv is not installed (optional: pip install spconv; the zoo never needs it)")


VERB = Verb("E-3DSNN forward cost on 10,000 points; the zoo's sparse convs against dense conv3d (and spconv)",
            add_arguments, run_bench, takes="task")


def summary(size: str = "quick") -> dict:
    """The point-cloud row of ``zoo bench`` (:mod:`zoo.bench`): the demo model ``svl-e3dsnn-tiny-shapes``
    classifies freshly generated procedural shapes (:mod:`tasks.pointcloud.synthetic`, seed 7, 512 points, the
    model's default zero-shot head over its 8 categories): top-1, firing rate and energy of the first cloud.
    Its convolutions have one implementation (the zoo's sparse ones), so the speed column is one SubM 3x3x3
    16->16 conv at the stem resolution: the zoo's sparse conv against ``F.conv3d`` on the dense occupied box
    (the reference: the same sums over the same sites). ``size="tiny"``: 8 shapes, a 1,000-point layer cloud."""
    import numpy as np
    import torch

    import zoo
    from tasks.pointcloud.data import prepare
    from tasks.pointcloud.evaluate import sparse_energy
    from tasks.pointcloud.synthetic import CATEGORIES, make_shape

    from . import summary_row

    per_class, layer_points, repeats = {"quick": (10, 10000, 3), "tiny": (1, 1000, 1)}[size]
    name = "svl-e3dsnn-tiny-shapes"
    model = zoo.load(name)
    cats = list(CATEGORIES)
    if model.names != cats:
        raise ZooError(f"{name}'s head names {model.names}, not the synthetic categories")
    progress(f"pointcloud: {name} zero-shot top-1 on {per_class * len(cats)} generated shapes")
    rng = np.random.default_rng(7)
    clouds, labels = [], []
    for i in range(per_class * len(cats)):
        xyz, rgb, _ = make_shape(cats[i % len(cats)], 512, rng)
        clouds.append(prepare(xyz, rgb, 512, y_up=False))
        labels.append(i % len(cats))
    points = torch.stack(clouds)
    with torch.no_grad():
        top1 = float((model(points).argmax(1) == torch.tensor(labels)).float().mean())
    e = sparse_energy(model, points[:1])
    progress(f"pointcloud: SubM 3x3x3 16->16 as sparse and as dense conv3d ({layer_points} points)")
    times = {impl: worker_layer("subm", impl, 16, layer_points, repeats)["ms"] for impl in ("dense", "sparse")}
    return summary_row(name, "pointcloud", "zero-shot top-1", top1 * 100, f"{len(labels)} generated shapes (seed 7)",
                       e["firing_rate"], e["energy_mj"], "cloud", times, "dense", ["sparse"],
                       note=f"speed: one SubM 3x3x3 conv, sparse vs dense conv3d, {layer_points} points")
