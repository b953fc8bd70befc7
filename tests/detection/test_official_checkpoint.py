"""An official checkpoint exactly as ultralytics writes it (whole pickled fp16 modules of classes the
zoo does not have) loads through ``zoo.load(..., weights=path)`` and reproduces the official outputs."""

import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file

import zoo
from tasks.detection.spikeyolo import build_spikeyolo

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "detection"
_FAKE = "ultralytics.nn.modules.yolo_spikformer"


def _write_ultralytics_checkpoint(state: dict, desc: dict, path: Path) -> None:
    """Pickle a module tree whose classes all live in ``ultralytics.*`` (absent when reading), fp16, with ema."""
    donor = build_spikeyolo(tuple(desc["scale"]), nc=desc["nc"], T=1, p5_ratio=desc["p5_ratio"])
    donor.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    donor = donor.half()
    mods = {n: types.ModuleType(n) for n in ("ultralytics", "ultralytics.nn", "ultralytics.nn.modules", _FAKE, "ultralytics.nn.tasks")}
    # give every zoo object a class of the same name living in ultralytics.* (a subclass, so the layout fits)
    swapped, fakes = [], {}
    objs = list(donor.modules())
    objs += [v for m in donor.modules() for v in vars(m).values() if type(v).__module__.startswith(("tasks.", "neurons."))]
    for obj in {id(o): o for o in objs}.values():
        cls = type(obj)
        if cls not in fakes:
            fakes[cls] = type(cls.__name__, (cls,), {"__module__": _FAKE, "__qualname__": cls.__name__})
            setattr(mods[_FAKE], cls.__name__, fakes[cls])
        fake = fakes[cls]
        object.__setattr__(obj, "__class__", fake)
        swapped.append((obj, cls))

    class DetectionModel(torch.nn.Module):
        pass

    DetectionModel.__module__ = "ultralytics.nn.tasks"
    DetectionModel.__qualname__ = "DetectionModel"
    mods["ultralytics.nn.tasks"].DetectionModel = DetectionModel
    top = DetectionModel()
    top.model = donor.model
    top.yaml = {"nc": desc["nc"], "scale": "tiny"}
    top.names = {i: f"c{i}" for i in range(desc["nc"])}
    top.stride = torch.tensor([8.0, 16.0, 32.0])
    sys.modules.update(mods)
    try:
        torch.save({"epoch": 295, "best_fitness": 0.6, "model": top, "ema": top, "updates": 1000, "optimizer": None,
                    "train_args": {"imgsz": 640}, "date": "2024-05-01", "version": "8.0.197"}, path,
                   )
    finally:
        for obj, cls in swapped:
            object.__setattr__(obj, "__class__", cls)
        for n in mods:
            sys.modules.pop(n, None)


def test_zoo_load_reads_official_ultralytics_file(tmp_path):
    desc = json.loads((FIXTURES / "spikeyolo_tiny.json").read_text())
    official = load_file(FIXTURES / "spikeyolo_tiny_official.safetensors")
    path = tmp_path / "official.pt"
    _write_ultralytics_checkpoint(official, desc, path)
    assert "ultralytics" not in sys.modules
    model = zoo.load("spikeyolo-coco", weights=path, scale=tuple(desc["scale"]), nc=desc["nc"], T=2,
                     p5_ratio=desc["p5_ratio"])
    io = load_file(FIXTURES / "spikeyolo_tiny_io.safetensors")
    with torch.no_grad():
        y, raw = model(io["input"])
    assert (y - io["y"]).abs().max() <= 1e-4
    assert max((r - io[f"raw{i}"]).abs().max() for i, r in enumerate(raw)) <= 1e-4
    spike = zoo.load("spikeyolo-coco", weights=path, mode="spike", scale=tuple(desc["scale"]), nc=desc["nc"], T=2,
                     p5_ratio=desc["p5_ratio"])
    with torch.no_grad():
        ys, _ = spike(io["input"])
    assert ((ys - io["y"]).abs().max() / io["y"].abs().max()) <= 1e-4
