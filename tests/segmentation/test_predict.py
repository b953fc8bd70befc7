"""The official test pipeline (mmcv's resize, normalisation, padding, resize back), segment / predict / evaluate
and the predict and eval verbs, on a tiny Spike2Former and small data sets written in the real layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import zoo
import zoo.cli
from tasks.segmentation.data import ADE20K, VOC2012
from tasks.segmentation.evaluate import evaluate
from tasks.segmentation.pipeline import TestPipeline as Pipeline
from tasks.segmentation.pipeline import CITYSCAPES, MEAN, STD, preprocess, rescale_size, resize_image
from tasks.segmentation.predict import JSON_NAME, predict, segment
from tasks.segmentation.spike2former import build_spike2former
from zoo.registry import info
from zoo.vision import load_image, load_mask

mmcv = pytest.importorskip("mmcv", reason="mmcv-lite is in the [test] extra")
ROOT = Path(__file__).resolve().parents[2]
SMALL = Pipeline((64, 32))  # the official keep-ratio rule at a size the tiny model runs fast


def tiny_model(num_classes: int = 150, seed: int = 0):
    torch.manual_seed(seed)
    model = build_spike2former(embed_dims=(8, 16, 24, 32), mlp_ratio=2, num_classes=num_classes, num_queries=6,
                               feat_channels=32, encoder_layers=1, encoder_ffn=32, dcn_group=4, decoder_layers=2,
                               decoder_ffn=32)
    with torch.no_grad():  # firing BN statistics and visible layer scales, so the prediction varies over the image
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.6)
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.fill_(0.5)
    return model.eval()


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- the pipeline against mmcv


@pytest.mark.parametrize("hw,scale", [((37, 53), (2048, 512)), ((333, 517), (64, 48)), ((61, 29), (2048, 1024))])
def test_resize_is_mmcv_imrescale(hw, scale):
    arr = _rgb(*hw)
    image = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    ours = resize_image(image, scale)
    ref, factor = mmcv.imrescale(arr, scale, interpolation="bilinear", return_scale=True, backend="cv2")
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)  # bit for bit: the same cv2 call on the same 8-bit pixels
    assert rescale_size(hw[1], hw[0], scale) == mmcv.rescale_size((hw[1], hw[0]), scale)


def test_the_zoo_does_not_import_mmcv_or_mmengine():
    code = ("import sys; import tasks.segmentation.predict, tasks.segmentation.evaluate, tasks.segmentation.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mmcv', 'mmengine', 'mmseg'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_preprocess_normalises_rgb_and_pads_like_the_data_preprocessor():
    arr = _rgb(45, 70, seed=3)
    image = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    p = Pipeline((100, 40), size_divisor=32)
    x, (h, w) = preprocess(image, p)
    bgr = mmcv.imrescale(arr[..., ::-1].copy(), p.scale, interpolation="bilinear")  # what LoadImageFromFile holds
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float()  # bgr_to_rgb
    expected = (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert (h, w) == expected.shape[-2:] and x.shape == (1, 3, 64, 64)  # 40x62 padded to multiples of 32
    assert torch.equal(x[0, :, :h, :w], expected)
    assert (x[0, :, h:] == 0).all() and (x[0, :, :, w:] == 0).all()  # padded after normalising, with 0
    assert CITYSCAPES.scale == (2048, 1024) and CITYSCAPES.size_divisor == 32


def test_segment_is_the_official_chain():
    model = tiny_model(num_classes=5)
    arr = _rgb(50, 77, seed=5)
    image = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    (seg,) = segment(model, image, SMALL, return_logits=True)
    resized = mmcv.imrescale(arr, SMALL.scale, interpolation="bilinear")
    x = (torch.from_numpy(resized).permute(2, 0, 1).float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        logits = F.interpolate(model(x[None]), size=(50, 77), mode="bilinear", align_corners=False)[0]
    assert seg["input_size"] == tuple(resized.shape[:2])
    assert torch.equal(seg["logits"], logits) and torch.equal(seg["label"], logits.argmax(0))
    assert seg["label"].shape == (50, 77) and seg["logits"].std(dim=(1, 2)).min() > 0  # varies over the image


# --------------------------------------------------------------------------- predict


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(40, 61, 1)).save(folder / "a_rgb.jpg")
    Image.fromarray(_rgb(33, 20, 2)[..., 0]).save(folder / "b_grey.png")
    Image.fromarray(np.dstack([_rgb(25, 31, 3), np.full((25, 31), 128, np.uint8)])).save(folder / "c_rgba.png")
    Image.fromarray((np.random.default_rng(4).integers(0, 65535, (17, 45))).astype(np.uint16)).save(folder / "d_16bit.png")
    return folder


def test_predict_writes_labels_overlays_and_areas(tmp_path):
    model = tiny_model(num_classes=150)
    model.names = list(info("spike2former-ade20k").classes)
    folder = _images(tmp_path / "in")
    (folder / "e_bad.png").write_bytes(b"not an image")
    res = predict(model, folder, tmp_path / "out", pipeline=SMALL)
    assert len(res.images) == 4 and len(res.skipped) == 1 and "e_bad.png" in res.skipped[0]["error"]
    assert res.profile is not None and res.profile.energy_mj > 0 and res.profile.acs > 0 and res.profile.macs > 0
    records = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert records == res.images
    for rec in records:
        image = load_image(rec["file"])
        label = load_mask(rec["label"])
        assert label.shape == image.shape[1:] == (rec["height"], rec["width"])
        (seg,) = segment(model, image, SMALL)
        assert torch.equal(label, seg["label"])  # the PNG holds the class indices
        assert sum(c["pixels"] for c in rec["classes"]) == label.numel()
        for c in rec["classes"]:
            assert c["pixels"] == int((label == c["class_id"]).sum()) and c["class_name"] == model.names[c["class_id"]]
        overlay = Image.open(rec["overlay"])
        assert overlay.mode == "RGB" and overlay.width > rec["width"]  # the legend is beside the image
    assert any("1 of 5 file(s) could not be read" in line for line in res.report())


def test_predict_refuses_when_nothing_can_be_read(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(zoo.ZooError, match="no image could be read: .*x.png"):
        predict(tiny_model(num_classes=3), tmp_path / "x.png", tmp_path / "out", pipeline=SMALL)


# --------------------------------------------------------------------------- evaluate


def mmseg_formula(preds, labels, num_classes, ignore=255):
    """mmseg IoUMetric written out with numpy: per-image histograms (predictions outside the classes in no bin)."""
    inter, area_p, area_l = (np.zeros(num_classes) for _ in range(3))
    for p, l in zip(preds, labels):
        p, l = np.asarray(p).ravel(), np.asarray(l).ravel()
        keep = l != ignore
        p, l = p[keep], l[keep]
        bins = np.arange(num_classes + 1)
        inter += np.histogram(p[p == l], bins=bins)[0]
        area_p += np.histogram(p, bins=bins)[0]
        area_l += np.histogram(l, bins=bins)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / (area_p + area_l - inter), inter / area_l
    return np.nanmean(iou), np.nanmean(acc), inter.sum() / area_l.sum()


def _ade(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    for i, (h, w) in enumerate([(40, 52), (31, 45), (48, 33)]):
        (root / "images/validation").mkdir(parents=True, exist_ok=True)
        (root / "annotations/validation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(h, w, 10 + i)).save(root / f"images/validation/img{i}.jpg")
        raw = np.random.default_rng(i).integers(0, 4, (h, w)).astype(np.uint8)  # 0 = other (ignored)
        Image.fromarray(raw, "L").save(root / f"annotations/validation/img{i}.png")
    return root


def test_evaluate_equals_the_mmseg_formula(tmp_path):
    model = tiny_model(num_classes=150)
    data = ADE20K(_ade(tmp_path))
    res = evaluate(model, data, pipeline=SMALL, keep_predictions=True)
    labels = [data[i][1] for i in range(len(data))]
    miou, macc, aacc = mmseg_formula([p.numpy() for p in res.predictions], [l.numpy() for l in labels], 150)
    assert res.images == 3 and res.num_classes == 150
    assert res.miou == pytest.approx(miou, abs=1e-12) and res.macc == pytest.approx(macc, abs=1e-12)
    assert res.aacc == pytest.approx(aacc, abs=1e-12)
    assert res.energy_mj > 0 and 0 < res.firing_rate


def test_voc_argmax_over_all_channels_counts_misses(tmp_path):
    """A VOC checkpoint predicts 150 channels: pixels predicted >= 21 are misses, as in mmseg (no cut to 21)."""
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    Image.fromarray(_rgb(30, 40, 7)).save(root / "JPEGImages/2007_000001.jpg")
    raw = np.random.default_rng(8).integers(0, 21, (30, 40)).astype(np.uint8)
    raw[0] = 255
    Image.fromarray(raw, "L").save(root / "SegmentationClass/2007_000001.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000001\n")
    data = VOC2012(root)
    model = tiny_model(num_classes=150, seed=1)
    res = evaluate(model, data, pipeline=SMALL, keep_predictions=True)
    (pred,) = res.predictions
    assert res.num_classes == 21
    miou, macc, aacc = mmseg_formula([pred.numpy()], [raw], 21)
    assert (res.miou, res.macc, res.aacc) == pytest.approx((miou, macc, aacc), abs=1e-12, nan_ok=True)
    hand = np.where(pred.numpy() == pred.numpy(), 150, 0)  # a prediction entirely outside VOC's 21 classes
    assert mmseg_formula([hand], [raw], 21)[2] == 0


# --------------------------------------------------------------------------- the verbs


@pytest.fixture
def seg_cli(monkeypatch):
    calls = []

    def fake_load(name, **kw):
        calls.append((name, kw))
        model = tiny_model(num_classes=150)
        model.card = info(name)
        model.names = list(model.card.classes)
        return model

    monkeypatch.setattr(zoo, "load", fake_load)
    return calls


def test_zoo_predict_command(seg_cli, tmp_path, capsys):
    folder = _images(tmp_path / "in")
    out = tmp_path / "out"
    code = zoo.cli.main(["predict", "spike2former-ade20k", str(folder), "--out", str(out), "--weights", "w.pth",
                         "--scale", "64", "32", "--mode", "spike", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert seg_cli == [("spike2former-ade20k", {"pretrained": False, "weights": "w.pth", "mode": "spike", "device": "cpu"})]
    assert "a_rgb.jpg (61x40)" in text and "MACs" in text and "ACs" in text and "paper: 68 mJ" in text
    assert "weights: w.pth" in text and (out / "a_rgb_label.png").exists() and (out / "a_rgb_overlay.png").exists()
    (folder / "z_bad.jpg").write_bytes(b"junk")
    assert zoo.cli.main(["predict", "spike2former-voc2012", str(folder), "--out", str(out), "--scale", "64", "32",
                         "--json", "--no-energy"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["images"]) == 4 and len(d["skipped"]) == 1 and "z_bad.jpg" in d["skipped"][0]["error"]


def test_zoo_eval_command_and_bad_data(seg_cli, tmp_path, capsys):
    root = _ade(tmp_path)
    code = zoo.cli.main(["eval", "spike2former-ade20k", "--data", str(tmp_path), "--scale", "64", "32", "--weights", "w"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "mIoU" in text and "mAcc" in text and "aAcc" in text and "firing rate" in text and "paper: 68 mJ" in text
    code = zoo.cli.main(["eval", "spike2former-ade20k", "--data", str(tmp_path), "--scale", "64", "32", "--json",
                         "--max-images", "1", "--no-energy"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["images"] == 1 and 0 <= d["aacc"] <= 1
    Image.fromarray(np.zeros((5, 5), np.uint8), "L").save(root / "annotations/validation/img1.png")  # wrong size
    assert zoo.cli.main(["eval", "spike2former-ade20k", "--data", str(tmp_path), "--scale", "64", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "img1.png" in err and "is 5x5 but its image" in err and "\n" not in err
    assert zoo.cli.main(["eval", "spike2former-ade20k", "--data", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_zoo_profile_reports_energy_beside_the_paper(monkeypatch, capsys):
    import zoo.api

    monkeypatch.setattr(zoo.api, "load", lambda name, **kw: tiny_model(num_classes=150))
    assert zoo.cli.main(["profile", "spike2former-voc2012", "--input-size", "1", "3", "32", "32", "--mode", "spike"]) == 0
    text = capsys.readouterr().out
    assert "SpikeProduct" in text and "random weights" in text
    assert "paper: 63 mJ per image (PASCAL VOC2012 val, T1 x D4); random weights fire differently" in text


def test_bench_suite_is_registered(capsys):
    from zoo.plugin import task

    assert task("segmentation").bench() is not None
    assert zoo.cli.main(["bench", "segmentation", "--imgsz", "0"]) == 2
    assert "--imgsz must be positive" in capsys.readouterr().err
