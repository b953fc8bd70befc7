"""Files the zoo writes and reads back: written atomically; a damaged one is a one-line error or rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tasks.detection.train import _atomic_save, _read_resume
from tasks.language import build as lm
from zoo import fileio, hub
from zoo.checkpoint import save_safetensors
from zoo.errors import ZooError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    fileio.atomic_write_text(target, "old")

    def fail(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(target, fail)
    assert target.read_text() == "old" and _leftovers(tmp_path) == ["f.txt"]


def test_atomic_write_to_unwritable_folder_names_it(tmp_path):
    folder = Path("/sys") if Path("/sys").is_dir() else None
    if folder is None:
        pytest.skip("no unwritable folder")
    with pytest.raises(ZooError, match=r"cannot write x.bin in /sys \(.*\); make the folder writable") as err:
        fileio.atomic_write_bytes(folder / "x.bin", b"1")
    assert "\n" not in str(err.value)


def test_save_safetensors_failure_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        save_safetensors({"w": "not a tensor"}, tmp_path / "w.safetensors")
    assert _leftovers(tmp_path) == []


def test_training_checkpoint_is_written_atomically(tmp_path):
    last = tmp_path / "last.pt"
    _atomic_save({"epoch": 0, "model": {"w": torch.ones(2)}}, last)
    with pytest.raises(Exception):  # an object torch cannot pickle: the save fails half-way
        _atomic_save({"epoch": 1, "model": {"w": torch.zeros(2)}, "bad": lambda: 0}, last)
    assert torch.load(last, weights_only=True)["epoch"] == 0 and _leftovers(tmp_path) == ["last.pt"]


def _last_pt(path: Path) -> Path:
    torch.save({"epoch": 2, "model": {"w": torch.ones(3)}, "ema": {"w": torch.ones(3)}, "updates": 5,
                "optimizer": {"state": {}, "param_groups": []}, "best_fitness": 0.1,
                "train_args": {"lr0": 0.01, "imgsz": (64, 64), "cache": None}}, path)
    return path


def test_resume_reads_a_training_checkpoint(tmp_path):
    ck = _read_resume(_last_pt(tmp_path / "last.pt"))
    assert ck["epoch"] == 2 and torch.equal(ck["model"]["w"], torch.ones(3)) and ck["train_args"]["imgsz"] == (64, 64)


@pytest.mark.parametrize("damage,match", [
    ("missing", r"cannot resume: weights file .*nope.pt does not exist"),
    ("truncated", r"cannot resume: .*last.pt is a corrupt or truncated torch file"),
    ("empty", r"cannot resume: .*last.pt is not a checkpoint"),
    ("foreign", r"--resume .*last.pt is not a last.pt of `zoo train` \(it needs model, ema, updates, optimizer, epoch\)"),
    ("unsafe", r"cannot resume: .*last.pt is unsafe to load: refusing to load posix.system"),
])
def test_bad_resume_file_is_one_line_error(tmp_path, damage, match):
    path = _last_pt(tmp_path / "last.pt")
    if damage == "missing":
        path = tmp_path / "nope.pt"
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:700])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        torch.save({"w": torch.ones(1)}, path)
    else:
        import os

        class Evil:
            def __reduce__(self):
                return (os.system, ("true",))

        torch.save({"epoch": 1, "model": Evil()}, path)
    with pytest.raises(ZooError, match=match) as err:
        _read_resume(path)
    assert "\n" not in str(err.value)


def _cache_entry(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m-key.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    fileio.atomic_write_text(path.with_name(path.name + ".json"), json.dumps({"config": {"D": 7}}))
    fileio.atomic_write_text(path.with_name(path.name + ".sha256"), hub.sha256_file(path) + "\n")
    return path


def test_converted_language_cache_whole_is_used(tmp_path):
    assert lm._verify_cached(_cache_entry(tmp_path)) == {"config": {"D": 7}}


@pytest.mark.parametrize("damage", ["binary pin", "short pin", "json", "json list", "weights"])
def test_damaged_converted_language_cache_is_rebuilt(tmp_path, damage):
    path = _cache_entry(tmp_path)
    pin, meta = path.with_name(path.name + ".sha256"), path.with_name(path.name + ".json")
    if damage == "binary pin":
        pin.write_bytes(b"\xff\xfe\x00\x01")
    elif damage == "short pin":
        pin.write_text("abc\n")
    elif damage == "json":
        meta.write_text('{"config": ')
    elif damage == "json list":
        meta.write_text("[1, 2]")
    else:
        path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.warns(UserWarning, match="corrupt.*converting again"):
        assert lm._verify_cached(path) is None
