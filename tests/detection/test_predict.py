"""detect() in memory; predict(): images of any mode and odd sizes, annotated outputs, the JSON, unreadable
files skipped and counted, the speed; `zoo predict`; bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import neurons
import zoo
import zoo.cli
from tasks.detection.predict import JSON_NAME, detect, predict
from zoo.vision import letterbox
from zoo.errors import ZooError


class FixedDetector(nn.Module):
    """A fake SpikeYOLO (80 classes): a fixed set of boxes laid out on whatever input it gets.

    Anchor 0: a person over the middle half (0.9); anchor 1: the same box shifted by 2 px (0.8, removed by
    NMS); anchor 2: a car at the top-left (0.6); anchor 3: a dog below the threshold (0.1).
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.lif = neurons.ILIF()
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        self.lif(self.stem(x).unsqueeze(0))
        b, _, h, w = x.shape
        out = torch.zeros(b, 84, 4)
        out[:, :4, 0] = torch.tensor([w / 2, h / 2, w / 2, h / 2])
        out[:, :4, 1] = torch.tensor([w / 2 + 2, h / 2, w / 2, h / 2])
        out[:, :4, 2] = torch.tensor([w / 8, h / 8, w / 8, h / 8])
        out[:, :4, 3] = torch.tensor([w / 2, h / 2, 10, 10])
        out[:, 4 + 0, 0], out[:, 4 + 0, 1], out[:, 4 + 2, 2], out[:, 4 + 16, 3] = 0.9, 0.8, 0.6, 0.1
        return out, []


def _images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = rng.integers(0, 256, (123, 77, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "a_rgb.jpg")
    Image.fromarray(rng.integers(0, 256, (45, 301), dtype=np.uint8)).save(folder / "b_gray.png")
    Image.fromarray(rng.integers(0, 256, (250, 199, 4), dtype=np.uint8), "RGBA").save(folder / "c_rgba.png")
    Image.fromarray(rng.integers(0, 65536, (33, 65), dtype=np.uint16)).save(folder / "d_16bit.png")
    Image.fromarray(rgb).convert("P").save(folder / "e_palette.gif")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_folder_of_mixed_images(tmp_path):
    folder = _images(tmp_path)
    model = FixedDetector()
    res = predict(model, [folder], tmp_path / "out", imgsz=64)
    sizes = {"a_rgb.jpg": (77, 123), "b_gray.png": (301, 45), "c_rgba.png": (199, 250), "d_16bit.png": (65, 33),
             "e_palette.gif": (77, 123)}
    assert [r["file"].split("/")[-1] for r in res.images] == list(sizes)  # sorted, the .txt skipped
    assert all(s[2] % 32 == 0 and s[3] % 32 == 0 and max(s[2:]) == 64 for s in model.seen[1:])  # letterboxed, stride 32
    written = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert written == res.images and res.json_path == tmp_path / "out" / JSON_NAME
    for rec, seen in zip(written, model.seen[1:]):  # seen[0]: the profiling pass
        w, h = sizes[rec["file"].split("/")[-1]]
        assert (rec["width"], rec["height"]) == (w, h)
        annotated = Image.open(rec["annotated"])
        assert annotated.size == (w, h) and annotated.mode == "RGB"
        assert [(d["class_id"], d["class_name"]) for d in rec["detections"]] == [(0, "person"), (2, "car")]
        assert [d["score"] for d in rec["detections"]] == pytest.approx([0.9, 0.6])
        for d in rec["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h  # a box over the padding collapses to the edge
        # the person box covers the middle half of the canvas: undo the centred padding and the scale
        ch, cw = seen[2:]
        r = 64 / max(w, h)
        px, py = (cw - w * r) / 2, (ch - h * r) / 2
        expect = [(cw / 4 - px) / r, (ch / 4 - py) / r, (3 * cw / 4 - px) / r, (3 * ch / 4 - py) / r]
        expect = [min(max(v, 0), lim) for v, lim in zip(expect, (w, h, w, h))]
        assert rec["detections"][0]["box"] == pytest.approx(expect, abs=1 / r)
    out_names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out_names == ["a_rgb.jpg", "b_gray.png", "c_rgba.png", "d_16bit.png", "e_palette.png", JSON_NAME]
    # the drawing changed the pixels where the box is
    before = np.asarray(Image.open(folder / "c_rgba.png").convert("RGB"))
    after = np.asarray(Image.open(tmp_path / "out" / "c_rgba.png"))
    assert (before != after).any()
    assert res.profile is not None and res.profile.energy_mj > 0 and res.profile.firing_rate is not None


def test_predict_exact_boxes_and_options(tmp_path):
    # a 50 x 96 image at imgsz 96: no resizing, canvas 64 x 96 with 7 rows of padding above and below
    Image.fromarray(np.zeros((50, 96, 3), np.uint8)).save(tmp_path / "x.png")
    model = FixedDetector()
    res = predict(model, tmp_path / "x.png", tmp_path / "out", imgsz=96, energy=False)
    assert model.seen == [(1, 3, 64, 96)]
    dets = res.images[0]["detections"]
    assert dets[0]["box"] == [24.0, 9.0, 72.0, 41.0]  # (24, 16, 72, 48) on the canvas, minus the 7 px on top
    assert dets[1]["box"] == [6.0, 0.0, 18.0, 5.0]  # (6, 4, 18, 12) on the canvas -> clipped at the top
    assert res.profile is None
    res = predict(FixedDetector(), [tmp_path / "x.png"], tmp_path / "out2", imgsz=96, conf=0.05, iou=0.95)
    assert [d["class_name"] for d in res.images[0]["detections"]] == ["person", "person", "car", "dog"]
    res = predict(FixedDetector(), [tmp_path / "x.png"], tmp_path / "out3", imgsz=96, names=["p"] * 84, conf=0.7)
    assert [d["class_name"] for d in res.images[0]["detections"]] == ["p"]


def test_predict_same_names_from_two_folders(tmp_path):
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / sub / "pic.png")
    res = predict(FixedDetector(), [tmp_path / "one", tmp_path / "two" / "pic.png"], tmp_path / "out", imgsz=32)
    assert [r["annotated"].split("/")[-1] for r in res.images] == ["pic.png", "pic_1.png"]


def test_predict_bad_inputs(tmp_path):
    model = FixedDetector()
    empty = tmp_path / "docs"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    for sources, match in (([tmp_path / "missing.jpg"], "not found"), ([empty], f"no images in folder {empty}"),
                           ([empty / "readme.txt"], "no image could be read: .*readme.txt: cannot decode"),
                           ([], "no input")):
        with pytest.raises(ZooError, match=match) as e:
            predict(model, sources, tmp_path / "out")
        assert "\n" not in str(e.value)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    with pytest.raises(ZooError, match="broken.jpg"):
        predict(model, [tmp_path / "broken.jpg"], tmp_path / "out")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "afile").write_text("")
    with pytest.raises(ZooError, match="not a folder"):
        predict(model, [tmp_path / "ok.png"], tmp_path / "afile")
    with pytest.raises(ZooError, match="conf"):
        predict(model, [tmp_path / "ok.png"], tmp_path / "out", conf=2)
    with pytest.raises(ZooError, match="broken.jpg.*and 1 more"):
        predict(model, [tmp_path / "broken.jpg", empty / "readme.txt"], tmp_path / "out")
    assert not (tmp_path / "out" / JSON_NAME).exists()


def test_predict_folder_with_unreadable_files(tmp_path):
    folder = _images(tmp_path)
    (folder / "b_gray.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # cut short
    (folder / "f_fake.jpg").write_text("not a jpeg")
    res = predict(FixedDetector(), [folder], tmp_path / "out", imgsz=64, energy=False)
    assert [r["file"].split("/")[-1] for r in res.images] == ["a_rgb.jpg", "c_rgba.png", "d_16bit.png", "e_palette.gif"]
    assert [s["file"].split("/")[-1] for s in res.skipped] == ["b_gray.png", "f_fake.jpg"]
    assert all(s["error"].startswith(s["file"]) and "cannot decode" in s["error"] for s in res.skipped)
    assert json.loads((tmp_path / "out" / JSON_NAME).read_text()) == res.images
    lines = res.report()
    assert "2 of 6 file(s) could not be read" in lines[2] and "b_gray.png" in lines[0] and "frames/s" in lines[3]
    assert res.fps > 0 and res.to_dict()["skipped"] == res.skipped


def test_detect_in_memory():
    model = FixedDetector()
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (50, 96, 3), dtype=np.uint8)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    one, pil, batch = detect(model, tensor, imgsz=96), detect(model, Image.fromarray(rgb), imgsz=96), \
        detect(model, torch.stack([tensor, tensor]), imgsz=96)
    assert len(one) == 1 and len(batch) == 2 and model.seen[0] == (1, 3, 64, 96)
    for d in (one[0], pil[0], *batch):
        assert torch.equal(d["boxes"], one[0]["boxes"]) and d["names"] == ["person", "car"]
        assert d["labels"].tolist() == [0, 2] and d["scores"].tolist() == pytest.approx([0.9, 0.6])
    assert one[0]["boxes"].tolist() == [[24.0, 9.0, 72.0, 41.0], [6.0, 0.0, 18.0, 5.0]]
    # the boxes map back through the letterbox: the model saw the padded canvas
    x, r, pad = letterbox(tensor, 96, auto=True)
    assert x.shape == (3, 64, 96) and pad == (0, 7) and r == 1
    assert [d["names"] for d in detect(model, [tensor], imgsz=96, names=["p"] * 84, conf=0.7)] == [["p"]]
    with pytest.raises(ZooError, match="image 0"):
        detect(model, torch.rand(1, 20, 30))
    with pytest.raises(ZooError, match="image 0"):
        detect(model, "photo.jpg")


# --------------------------------------------------------------------------- zoo predict


@pytest.fixture
def detection_cli(monkeypatch):
    """`zoo` verbs as registered by tasks.detection, with zoo.load faked."""
    calls = []

    def fake_load(name, **kw):
        calls.append((name, kw))
        return FixedDetector()

    monkeypatch.setattr(zoo, "load", fake_load)
    return calls


def test_zoo_predict_command(detection_cli, tmp_path, capsys):
    folder = _images(tmp_path)
    out = tmp_path / "runs"
    code = zoo.cli.main(["predict", "tinysnn-test", str(folder / "a_rgb.jpg"), str(folder / "b_gray.png"),
                         "--out", str(out), "--imgsz", "64", "--conf", "0.5", "--mode", "spike", "--device", "cpu",
                         "--weights", "w.pt"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert detection_cli == [("tinysnn-test", {"pretrained": False, "weights": "w.pt", "mode": "spike", "device": "cpu"})]
    assert "1 person, 1 car" in text and "firing rate" in text and "MACs" in text and "ACs" in text and "mJ" in text
    assert "2 image(s) in" in text and "frames/s" in text and "skipped" not in text
    assert (out / "a_rgb.jpg").exists() and (out / "b_gray.png").exists() and (out / JSON_NAME).exists()
    code = zoo.cli.main(["predict", "spikeyolo-coco", str(folder), "--out", str(out), "--imgsz", "64", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and len(d["images"]) == 5 and d["energy"]["energy_mj"] > 0 and d["mode"] == "integer"
    assert d["skipped"] == [] and d["fps"] > 0
    (folder / "z_bad.png").write_bytes(b"junk")
    assert zoo.cli.main(["predict", "spikeyolo-coco", str(folder), "--out", str(out), "--imgsz", "64"]) == 0
    text = capsys.readouterr().out
    assert "z_bad.png: cannot decode" in text and "1 of 6 file(s) could not be read" in text
    assert len(json.loads((out / JSON_NAME).read_text())) == 5
    assert detection_cli[-1] == ("spikeyolo-coco", {"pretrained": True, "weights": None, "mode": "integer", "device": "cpu"})
    # a model without released weights needs --weights
    assert zoo.cli.main(["predict", "tinysnn-test", str(folder), "--imgsz", "64", "--device", "cpu"]) == 2
    assert "--weights PATH" in capsys.readouterr().err


def test_zoo_predict_errors(detection_cli, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, match in ((["predict", "tinysnn-test", str(empty), "--imgsz", "64", "--weights", "w"], f"no images in folder {empty}"),
                        (["predict", "tinysnn-test", str(tmp_path / "nope.png"), "--imgsz", "64", "--weights", "w"], "not found"),
                        (["predict", "tinysnn-test", str(empty), "--imgsz", "0"], "--imgsz"),
                        (["predict", "tinysnn-test", str(empty), "--device", "toaster"], "device")):
        assert zoo.cli.main(argv) == 2
        err = capsys.readouterr().err
        assert match in err and err.startswith("zoo: error:") and err.count("\n") == 1, err


def test_predict_with_arith_override(tmp_path, capsys):
    """`zoo predict --arith`: the demo detector with each convolution on the arithmetic asked for (fp32 where
    it cannot apply), reported. On the bundled image the exact arithmetics find the same objects as the model as
    built; all-int8 (lossy weights everywhere, no tolerance: the override) still finds every one of them."""
    from collections import Counter
    from pathlib import Path

    from zoo import arith

    image = str(Path(__file__).resolve().parents[2] / "weights" / "demo" / "shapes.jpg")
    found = {}
    for choice in ("reference", "winograd", "int8" if arith.int8_available() else "fp32"):
        out = tmp_path / choice
        assert zoo.cli.main(["predict", "spikeyolo-tiny-shapes", image, "--out", str(out), "--arith", choice,
                             "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["arith"]["asked"] == choice
        layers = report["arith"]["layers"]
        if choice == "reference":
            assert layers == []
        else:
            taken = {r["arith"] for r in layers}
            assert taken <= {choice, "fp32"} and choice in taken
            assert all("override" in r["why"] or "not possible" in r["why"] for r in layers)
        found[choice] = sorted(d["class_name"] for d in report["images"][0]["detections"])
    assert found["winograd"] == found["reference"] and len(found["reference"]) == 5, found
    assert not Counter(found["reference"]) - Counter(found.get("int8", found["reference"])), found
    assert zoo.cli.main(["predict", "spikeyolo-tiny-shapes", image, "--out", str(tmp_path / "s"), "--arith", "fp32"]) == 0
    assert "arithmetic (--arith fp32): fp32 " in capsys.readouterr().out
    assert zoo.cli.main(["predict", "spikeyolo-tiny-shapes", image, "--arith", "int8", "--mode", "spike"]) == 2
    assert zoo.cli.main(["predict", "spikeyolo-tiny-shapes", image, "--arith", "fp16"]) == 2
