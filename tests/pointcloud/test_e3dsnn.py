"""E-3DSNN: official parameter counts and keys, voxelisation, parity with the official model, spike mode, Rep-VLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import neurons
from tasks.pointcloud.e3dsnn import build_e3dsnn, fold_text_head, from_official, normalize_unit_sphere, voxelize
from zoo.errors import ZooError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pointcloud"
OFFICIAL_KEYS = json.loads((FIXTURES / "e3dsnn_official_keys.json").read_text())["variants"]
SMALL = dict(out_channels=32, embed_channels=8, enc_channels=(8, 16, 16, 32), enc_depth=(1, 2, 1, 1))


@pytest.mark.parametrize("size", ["t", "s", "l", "h"])
def test_parameter_counts_and_state_dict_equal_the_official(size):
    with torch.device("meta"):
        model = build_e3dsnn(size)
    official = OFFICIAL_KEYS[size]
    assert sum(p.numel() for p in model.parameters()) == official["params"]
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("final.")) == official["params_without_final"]
    mine = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert mine == official["state_dict"]


def test_from_official_strips_only_the_ddp_prefix():
    state = {"module.stem.0.weight": torch.zeros(1), "module.enc.0.down.1._max_num_voxels_during_training": torch.zeros(1),
             "final.bias": torch.zeros(1)}
    assert sorted(from_official(state)) == ["final.bias", "stem.0.weight"]


def openshape_normalize_pc(pc: np.ndarray) -> np.ndarray:  # OpenShape src/utils/data.py normalize_pc, as documented
    pc = pc - np.mean(pc, axis=0)
    m = np.max(np.linalg.norm(pc, axis=1))
    return np.zeros_like(pc) if m < 1e-6 else pc / m


def test_normalisation_is_openshapes():
    xyz = torch.randn(500, 3, dtype=torch.float64) * 3 + 2
    np.testing.assert_allclose(normalize_unit_sphere(xyz).numpy(), openshape_normalize_pc(xyz.numpy()), rtol=1e-9, atol=1e-15)
    assert torch.equal(normalize_unit_sphere(torch.ones(4, 3)), torch.zeros(4, 3))


def test_voxelize_merges_points_of_one_voxel_by_their_mean():
    pts = torch.tensor([
        [0.000, 0.000, 0.000, 0.2, 0.2, 0.2],
        [0.011, 0.001, 0.002, 0.4, 0.6, 0.8],   # same 0.02 voxel as the first point
        [0.050, 0.030, 0.000, 1.0, 0.0, 0.0],   # voxel (2, 1, 0)
    ])
    x = voxelize([pts, pts[2:]], normalize=False)
    assert x.batch_size == 2
    assert x.coords.tolist() == [[0, 0, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0]]
    torch.testing.assert_close(x.features[0], pts[:2].mean(0))
    torch.testing.assert_close(x.features[1], pts[2])
    assert x.spatial_shape == (2 + 96, 1 + 96, 0 + 96)  # the release: max + 96
    # the same cloud in another order gives the same voxels (deterministic)
    y = voxelize([pts[[2, 1, 0]], pts[2:]], normalize=False)
    assert torch.equal(y.coords, x.coords) and torch.allclose(y.features, x.features)


@pytest.mark.parametrize("bad", [torch.zeros(2, 10, 3), torch.zeros(10, 6), [torch.zeros(0, 6)]])
def test_bad_points_are_a_zoo_error(bad):
    with pytest.raises(ZooError):
        voxelize(bad)


def _small_from_fixture():
    t = load_file(FIXTURES / "e3dsnn_small_official.safetensors")
    state = {k[len("official."):]: v for k, v in t.items() if k.startswith("official.")}
    model = build_e3dsnn("t", normalize=False, **SMALL)
    model.load_state_dict(from_official(state))
    return model, t


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_equals_the_official_model_run_with_spconv(mode):
    """Fixture: the official E_3DSNN_T class (small widths) on spconv 2.3.8, 1 thread, random weights,
    two real-format clouds [2, 1283, 6] (see the fixture's metadata for the input adapter)."""
    model, t = _small_from_fixture()
    model.train(mode == "train")
    with torch.no_grad():
        out = model(t["points"])
    ref = t[f"features_{mode}"]
    assert out.shape == ref.shape == (2, 32)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_final_layer_needs_spconvs_1x1_reinterpretation():
    model, t = _small_from_fixture()
    model.eval()
    model.final.spconv_1x1 = False  # a "natural" 1x1 conv on the same weights
    with torch.no_grad():
        out = model(t["points"])
    assert (out - t["features_eval"]).abs().max() > 1e-2 * t["features_eval"].abs().max()


def test_spike_driven_mode_equals_integer_mode():
    model, t = _small_from_fixture()
    model.eval()
    eq = neurons.check_equivalence(model, t["points"][:1])
    assert eq.max_rel < 1e-5
    assert neurons.mode_of(model) == "integer"


def test_training_step_runs_and_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_e3dsnn("t", **SMALL).train()
    pts = torch.cat([torch.randn(2, 400, 3), torch.rand(2, 400, 3)], 2)
    out = model(pts)
    out.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_rep_vli_folded_head_equals_the_unfolded_zero_shot_logits():
    torch.manual_seed(0)
    model, t = _small_from_fixture()
    model.eval()
    text = torch.randn(7, 32)  # category text features [K, C]
    text_proj = torch.nn.Linear(32, 32)
    with torch.no_grad():
        feats = model(t["points"])
        unfolded = F.normalize(feats, dim=1) @ F.normalize(text_proj(text), dim=1).T  # SVL train.py test_modelnet40
        head = model.set_zero_shot_head(text, text_proj)
        logits = model(t["points"])
    assert isinstance(head, torch.nn.Linear) and head.bias is None and tuple(head.weight.shape) == (7, 32)
    torch.testing.assert_close(logits, unfolded, rtol=1e-5, atol=1e-6)
    assert "head.weight" not in model.state_dict()  # derived from the category features, never saved


def test_fold_text_head_rejects_bad_features():
    with pytest.raises(ZooError):
        fold_text_head(torch.zeros(3))

