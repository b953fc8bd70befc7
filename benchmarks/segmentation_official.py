"""Time the official Spike2Former (a user's own BICLab/Spike2Former checkout) on CPU, for ``zoo bench segmentation
--official PATH``. Run as a script, in its own process, by a Python that has the official code's pins (mmcv-lite
2.0.1, mmengine 0.8.4, spikingjelly 0.0.0.0.14, timm, scipy, pycocotools, shapely, prettytable, six, torchinfo,
einops); it imports nothing from the zoo, and the zoo ships none of the official code.

The official code needs mmcv's compiled ops only to import, not to run inference (../shared/anchors/spike2former.md
section 5). Instead of patching the checkout, :func:`install` puts stand-ins in ``sys.modules`` before the import:

* ``mmcv._ext`` and ``mmcv.ops`` (and the submodules imported by name): every attribute is a function or class
  that raises if called, except ``point_sample`` (a ``grid_sample`` of ``2 p - 1``); none is called at inference.
  ``mmcv._ext`` existing makes the ``ext_loader.load_ext('_ext', ...)`` calls at import succeed;
* ``mmdet.models.layers.msdeformattn_pixel_decoder`` when the checkout lacks the file (January 2025 snapshot);
* :func:`after_mmcv`: ``mmdet.models.dense_heads.Mask2FormerHead``, which mmseg's ``mask2former_head.py`` imports
  and the fork's mmdet lacks, is set to mmengine's ``BaseModule``: what that file falls back to on an import error.

The model is built from the config (``MODELS.build``, no ``init_weights``: nothing is downloaded), the zoo's state
dict is loaded with ``strict=True`` (the zoo's Spike2Former uses the official keys:
tasks/segmentation/convert.py), and each forward is ``reset_net`` + ``EncoderDecoder.encode_decode``: the logits
the zoo's ``forward`` returns. Input: ``randn(1, 3, N, N)`` from seed 1, as the zoo's bench worker draws it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import types
from pathlib import Path

#: the ADE20K SDTv2 config: the released one in newer versions of the repository, else the snapshot's equal one
ADE20K_CONFIGS = ("configs/Spike2Former/released/ADE20K_SDTv2_iter102500.py",
                  "configs/Spike2Former/SDTv2_maskformer_DCNpixelDecoder_ade20k.py")


def segmentation_root(checkout: str | Path) -> Path | None:
    """The ``Segmentation/`` folder of a checkout (the checkout itself or its ``Segmentation/``), else None."""
    for root in (Path(checkout) / "Segmentation", Path(checkout)):
        if (root / "mmseg").is_dir() and (root / "mmdet").is_dir() and (root / "Qtrick_architecture").is_dir():
            return root.resolve()
    return None


def default_config(root: Path) -> Path | None:
    """The first of :data:`ADE20K_CONFIGS` the checkout has."""
    return next((root / c for c in ADE20K_CONFIGS if (root / c).is_file()), None)


class _Unavailable(types.ModuleType):
    """A module whose every public attribute raises when used: a compiled mmcv op that inference never calls."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        message = f"mmcv compiled op {self.__name__}.{name} is not available here (zoo bench stand-in)"

        def unavailable(*args, **kwargs):
            raise RuntimeError(message)

        if name[:1].isupper():  # a class (used as a base class or a layer type)
            return type(name, (), {"__init__": unavailable})
        return unavailable


def point_sample(input, points, align_corners: bool = False, **kwargs):
    """``input`` [N, C, H, W] sampled at ``points`` [N, P, 2] in [0, 1] (x, y) -> [N, C, P]."""
    import torch.nn.functional as F

    return F.grid_sample(input, 2.0 * points.unsqueeze(2) - 1.0, align_corners=align_corners, **kwargs).squeeze(3)


def install(root: Path) -> None:
    """Put the checkout on ``sys.path`` and the stand-ins in ``sys.modules`` (see the module docstring)."""
    sys.path.insert(0, str(root))
    sys.modules["mmcv._ext"] = _Unavailable("mmcv._ext")
    ops = _Unavailable("mmcv.ops")
    ops.__path__ = []
    ops.point_sample = point_sample
    sys.modules["mmcv.ops"] = ops
    for sub in ("roi_align", "multi_scale_deform_attn", "point_sample"):
        module = _Unavailable(f"mmcv.ops.{sub}")
        module.point_sample = point_sample
        sys.modules[module.__name__] = module
    if not (root / "mmdet/models/layers/msdeformattn_pixel_decoder.py").is_file():
        name = "mmdet.models.layers.msdeformattn_pixel_decoder"
        sys.modules[name] = _Unavailable(name)


def after_mmcv() -> None:
    import mmdet.models.dense_heads as heads

    if not hasattr(heads, "Mask2FormerHead"):
        from mmengine.model import BaseModule

        heads.Mask2FormerHead = BaseModule


def build(root: Path, config: Path, state_path: str | None):
    """The official EncoderDecoder of ``config``, eval mode, with the state dict at ``state_path`` (strict)."""
    install(root)
    import torch

    after_mmcv()
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    model = MODELS.build(Config.fromfile(str(config)).model).eval()
    if state_path:
        model.load_state_dict(torch.load(state_path, weights_only=True), strict=True)
    return model


def worker(checkout: str, config: str | None, state: str | None, imgsz: int, repeats: int, warmup: int,
           threads: int, out: str | None) -> dict:
    """Time ``encode_decode`` in this process; saves the logits to ``out``; returns ms per forward and peak RSS."""
    import torch

    root = segmentation_root(checkout)
    if root is None:
        raise SystemExit(f"{checkout}: not a BICLab/Spike2Former checkout (no Segmentation/mmseg, mmdet, "
                         "Qtrick_architecture)")
    cfg = Path(config) if config else default_config(root)
    if cfg is None or not cfg.is_file():
        raise SystemExit(f"{checkout}: no config {config or ' or '.join(ADE20K_CONFIGS)}")
    torch.set_num_threads(threads)
    model = build(root, cfg, state)
    from Qtrick_architecture.clock_driven import functional

    x = torch.randn(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    meta = [dict(img_shape=(imgsz, imgsz), pad_shape=(imgsz, imgsz), batch_input_shape=(imgsz, imgsz),
                 ori_shape=(imgsz, imgsz))]
    times, cpu = [], []
    with torch.no_grad():
        for i in range(warmup + repeats):
            functional.reset_net(model)  # the official ResetModelHook does this before every iteration
            t, c = time.perf_counter(), time.process_time()
            y = model.encode_decode(x, meta)
            if i >= warmup:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
    if out:
        torch.save(y, out)
    return {"path": "official", "ms": statistics.median(times) * 1e3, "times_s": times, "cpu_s": cpu,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "config": str(cfg),
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkout", required=True)
    p.add_argument("--config")
    p.add_argument("--state")
    p.add_argument("--imgsz", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    a = p.parse_args()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    report = worker(a.checkout, a.config, a.state, a.imgsz, a.repeats, a.warmup, a.threads, a.out)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
