"""``zoo bench segmentation --official PATH``: the checks on the user's checkout and the import stand-ins for
mmcv's compiled ops (benchmarks/segmentation_official.py). No official code is needed or shipped: the checkout
layouts here are empty folders; timing the real official model is the bench's job, not a test's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.segmentation import _official_args
from benchmarks.segmentation_official import ADE20K_CONFIGS, _Unavailable, point_sample
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parents[2]


def _checkout(tmp_path: Path, configs=()) -> Path:
    seg = tmp_path / "Spike2Former" / "Segmentation"
    for d in ("mmseg", "mmdet", "Qtrick_architecture"):
        (seg / d).mkdir(parents=True)
    for c in configs:
        (seg / c).parent.mkdir(parents=True, exist_ok=True)
        (seg / c).write_text("model = dict()\n")
    return seg.parent


def test_not_a_checkout_is_one_line(tmp_path):
    (tmp_path / "mmseg").mkdir()
    with pytest.raises(ZooError, match="not a BICLab/Spike2Former checkout") as e:
        _official_args(str(tmp_path), None)
    assert "\n" not in str(e.value)


def test_missing_config_is_one_line(tmp_path):
    with pytest.raises(ZooError, match="no such config"):
        _official_args(str(_checkout(tmp_path)), None)
    with pytest.raises(ZooError, match="no such config"):
        _official_args(str(_checkout(tmp_path / "b", ADE20K_CONFIGS)), str(tmp_path / "nope.py"))


@pytest.mark.parametrize("have", [ADE20K_CONFIGS, ADE20K_CONFIGS[1:]])
def test_default_config_prefers_the_released_one(tmp_path, have):
    checkout = _checkout(tmp_path, have)
    for given in (checkout, checkout / "Segmentation"):  # the repository root or its Segmentation/
        root, config = _official_args(str(given), None)
        assert root == (checkout / "Segmentation").resolve()
        assert config == root / have[0]


def test_point_sample_stand_in_samples_pixel_centres():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    ij = torch.tensor([[0, 0], [3, 4], [2, 1]])  # (row, col)
    points = torch.stack([(ij[:, 1] + 0.5) / 5, (ij[:, 0] + 0.5) / 4], -1).expand(2, -1, -1)  # (x, y) in [0, 1]
    got = point_sample(x, points)
    assert got.shape == (2, 3, 3)
    torch.testing.assert_close(got, x[:, :, ij[:, 0], ij[:, 1]])


def test_unavailable_ops_raise_when_used():
    ops = _Unavailable("mmcv.ops")
    with pytest.raises(RuntimeError, match="mmcv.ops.nms is not available"):
        ops.nms(None)
    with pytest.raises(RuntimeError, match="MultiScaleDeformableAttention"):
        type("Sub", (ops.MultiScaleDeformableAttention,), {})()
    assert not hasattr(ops, "__wrapped__")


def test_install_makes_the_compiled_imports_succeed(tmp_path):
    """In a fresh process: after install(), ``mmcv._ext`` loads as ext_loader does, and ``from mmcv.ops import``
    gives stand-ins (so the official modules import); the missing msdeformattn module is stood in for."""
    pytest.importorskip("mmcv")  # the stand-ins live inside the real (pure-Python) mmcv package
    seg = _checkout(tmp_path) / "Segmentation"
    code = (
        "import importlib, sys; from pathlib import Path; from benchmarks.segmentation_official import install\n"
        f"install(Path({str(seg)!r}))\n"
        "ext = importlib.import_module('mmcv._ext'); assert hasattr(ext, 'ms_deform_attn_forward')\n"
        "from mmcv.ops import point_sample, batched_nms\n"
        "from mmcv.ops.roi_align import roi_align\n"
        "assert 'mmdet.models.layers.msdeformattn_pixel_decoder' in sys.modules\n"
        f"assert sys.path[0] == {str(seg)!r}\n"
        "try:\n    batched_nms()\nexcept RuntimeError:\n    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
