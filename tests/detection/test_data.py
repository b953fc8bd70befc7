"""Detection data adapters on small data sets written here in the real on-disk formats."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.detection.data import (
    COCO80_TO_COCO91, EVDET200K_CLASSES, VOC_CLASSES, COCODataset, EvDET200KDataset, Gen1Dataset, Letterbox,
    VOCDataset, YOLODataset, collate, load_dataset, load_names, read_prophesee_dat,
)
from zoo.errors import ZooError


def _png(path, w, h, color=(255, 0, 51), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), color).save(path)
    return path


def _one_line(err: pytest.ExceptionInfo, *parts):
    msg = str(err.value)
    assert "\n" not in msg
    for p in parts:
        assert str(p) in msg, (p, msg)


# ------------------------------------------------------------------------------------------ images
# (every image mode and the loader's errors: tests/test_vision.py)

def test_data_sets_read_the_stored_pixel_grid(tmp_path):
    """Boxes refer to the stored pixels: an EXIF orientation tag does not turn the image."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _png(tmp_path / "images" / "val" / "a.png", 20, 10).unlink()
    Image.new("RGB", (20, 10), (255, 0, 51)).save(tmp_path / "images" / "val" / "a.png", exif=exif)
    x, t = YOLODataset(tmp_path / "images" / "val", ["a"])[0]
    assert x.shape == (3, 10, 20) and t["orig_size"] == (10, 20)
    assert torch.equal(x[:, 0, 0], torch.tensor([1.0, 0.0, 51 / 255]))


# ------------------------------------------------------------------------------------------ COCO

def _coco(tmp_path, **over):
    img = tmp_path / "images"
    _png(img / "a.png", 20, 16)
    _png(img / "b.png", 10, 10, color=(0, 0, 0))
    data = {
        "images": [{"id": 42, "file_name": "a.png", "width": 20, "height": 16},
                   {"id": 7, "file_name": "b.png", "width": 10, "height": 10}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 3, "bbox": [1, 2, 5, 4], "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 90, "bbox": [15, 10, 10, 10], "iscrowd": 0},  # clipped
            {"id": 3, "image_id": 42, "category_id": 1, "bbox": [0, 0, 8, 8], "iscrowd": 1},  # crowd: skipped
            {"id": 4, "image_id": 42, "category_id": 1, "bbox": [3, 3, 0, 5], "iscrowd": 0},  # w = 0: skipped
            {"id": 5, "image_id": 42, "category_id": 3, "bbox": [1, 2, 5, 4]},  # duplicate: kept once
        ],
    }
    data.update(over)
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps(data))
    return ann, img


def test_coco(tmp_path):
    ann, img = _coco(tmp_path)
    ds = COCODataset(ann, img)
    assert len(ds) == 2 and ds.names == ("person", "car", "toothbrush")
    assert ds.category_ids == ds.coco80_to_91 == (1, 3, 90)
    x, t = ds[0]
    assert x.shape == (3, 16, 20) and torch.equal(x[:, 5, 5], torch.tensor([1.0, 0.0, 51 / 255]))
    assert torch.equal(t["boxes"], torch.tensor([[1.0, 2.0, 6.0, 6.0], [15.0, 10.0, 20.0, 16.0]]))
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    assert t["labels"].tolist() == [1, 2]
    assert t["image_id"] == 42 and t["orig_size"] == (16, 20) and t["file"] == str(img / "a.png")
    x, t = ds[1]
    assert t["image_id"] == 7 and t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert len(COCO80_TO_COCO91) == 80 and COCO80_TO_COCO91[:3] == (1, 2, 3) and COCO80_TO_COCO91[-1] == 90
    assert 12 not in COCO80_TO_COCO91


def test_coco_bad_json(tmp_path):
    ann, img = _coco(tmp_path)
    data = json.loads(ann.read_text())
    del data["annotations"]
    ann.write_text(json.dumps(data))
    with pytest.raises(ZooError) as e:
        COCODataset(ann, img)
    _one_line(e, ann, "annotations")
    ann.write_text("{not json")
    with pytest.raises(ZooError) as e:
        COCODataset(ann, img)
    _one_line(e, ann, "JSON")
    bad = [{"id": 1, "image_id": 42, "category_id": 3}]
    ann, img = _coco(tmp_path, annotations=bad)
    with pytest.raises(ZooError) as e:
        COCODataset(ann, img)
    _one_line(e, ann, "bbox")
    ann, img = _coco(tmp_path, annotations=[{"image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ZooError) as e:
        COCODataset(ann, img)
    _one_line(e, "image id 5")
    ann, img = _coco(tmp_path, images=[{"id": 1}])
    with pytest.raises(ZooError) as e:
        COCODataset(ann, img)
    _one_line(e, "file_name")
    ann, img = _coco(tmp_path, images=[], annotations=[])
    with pytest.raises(ZooError) as e:
        COCODataset(ann, img)
    _one_line(e, "empty")


def test_coco_skip_bad(tmp_path):
    ann, img = _coco(tmp_path)
    (img / "b.png").unlink()
    with pytest.raises(ZooError) as e:
        COCODataset(ann, img)
    _one_line(e, "b.png", "missing")
    with pytest.warns(UserWarning, match="skipping bad"):
        ds = COCODataset(ann, img, skip_bad=True)
    assert len(ds) == 1 and ds.skipped == 1 and "b.png" in ds.bad[0][1]
    # a corrupt image found while loading: replaced by the next good sample, counted, warned once
    _png(img / "b.png", 10, 10)
    (img / "a.png").write_bytes(b"\x89PNG garbage")
    ds = COCODataset(ann, img)
    with pytest.raises(ZooError) as e:
        ds[0]
    _one_line(e, "a.png")
    ds = COCODataset(ann, img, skip_bad=True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            x, t = ds[0]
            assert t["image_id"] == 7
    assert ds.skipped == 1 and len([m for m in w if "skipping bad" in str(m.message)]) == 1
    (img / "b.png").write_bytes(b"junk")
    with pytest.raises(ZooError, match="every sample failed"):
        ds[1]


# ------------------------------------------------------------------------------------------ YOLO

def _yolo(tmp_path):
    _png(tmp_path / "images" / "val" / "a.png", 20, 10)
    _png(tmp_path / "images" / "val" / "sub" / "b.png", 8, 8)
    lab = tmp_path / "labels" / "val"
    lab.mkdir(parents=True)
    (lab / "a.txt").write_text(
        "1 0.5 0.5 0.2 0.4\n"
        "1 0.5 0.5 0.2 0.4\n"  # duplicate: kept once
        "0 0.95 0.5 0.2 0.2\n"  # reaches past the right edge: clipped
        "\n"
        "2 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5\n"  # polygon -> its box
    )
    return tmp_path / "images" / "val"


def test_yolo(tmp_path):
    ds = YOLODataset(_yolo(tmp_path), ["a", "b", "c"])
    assert len(ds) == 2 and ds.nc == 3
    x, t = ds[0]
    assert x.shape == (3, 10, 20) and t["orig_size"] == (10, 20) and t["image_id"] == 0
    assert t["labels"].tolist() == [1, 0, 2]
    assert torch.allclose(t["boxes"], torch.tensor([[8.0, 3.0, 12.0, 7.0], [17.0, 4.0, 20.0, 6.0],
                                                    [2.0, 1.0, 6.0, 5.0]]), atol=1e-5)
    x, t = ds[1]  # images/val/sub/b.png: no label file -> no objects
    assert t["file"].endswith("b.png") and t["boxes"].shape == (0, 4)


def test_yolo_names_and_data_yaml(tmp_path):
    assert load_names({1: "y", 0: "x"}) == ("x", "y")
    (tmp_path / "n.json").write_text(json.dumps({"names": ["p", "q"]}))
    assert load_names(tmp_path / "n.json") == ("p", "q")
    (tmp_path / "n.txt").write_text("p\nq\n")
    assert load_names(tmp_path / "n.txt") == ("p", "q")
    images = _yolo(tmp_path)
    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        "# TDE-style data file\n"
        f"path: {tmp_path}  # root\n"
        "train: # train images\n"
        "  - images/val\n"
        "val: images/val\n"
        "names:\n"
        "  0: people\n"
        "  1: electric bicycle\n"
        "  2: 'ping_pong'\n"
        "download: |\n"
        "  import os\n"
        "\n"
        "  x: 1\n"
    )
    ds = YOLODataset.from_data_yaml(cfg, "train")
    assert ds.names == ("people", "electric bicycle", "ping_pong") and len(ds) == 2
    assert load_names(cfg) == ds.names
    assert len(YOLODataset.from_data_yaml(cfg, "val")) == 2
    with pytest.raises(ZooError) as e:
        YOLODataset.from_data_yaml(cfg, "test")
    _one_line(e, "data.yaml", "test")
    # YAML that PyYAML cannot parse, and YAML that is not a mapping: one line naming the file
    for text, what in (("names: [a, b\nval: images/val\n", "not valid YAML (line"),
                       ("path: x\n  bad: indent: here\n", "not valid YAML"), ("- just\n- a list\n", "mapping")):
        cfg.write_text(text)
        with pytest.raises(ZooError) as e:
            YOLODataset.from_data_yaml(cfg, "val")
        _one_line(e, cfg, what)


def test_yolo_bad(tmp_path):
    images = _yolo(tmp_path)
    lab = tmp_path / "labels" / "val" / "a.txt"
    for text, what in (("7 0.5 0.5 0.1 0.1\n", "class 7"), ("0 0.5 0.5 0.1\n", "4 values"),
                       ("0 a b c d\n", "not numeric")):
        lab.write_text(text)
        ds = YOLODataset(images, ["a", "b", "c"])
        with pytest.raises(ZooError) as e:
            ds[0]
        _one_line(e, lab, what)
    ds = YOLODataset(images, ["a", "b", "c"], skip_bad=True)
    with pytest.warns(UserWarning, match="skipping bad"):
        assert ds[0][1]["file"].endswith("b.png")
    assert ds.skipped == 1
    empty = tmp_path / "empty" / "images"
    empty.mkdir(parents=True)
    with pytest.raises(ZooError) as e:
        YOLODataset(empty, ["a"])
    _one_line(e, empty, "empty")
    with pytest.raises(ZooError) as e:
        YOLODataset(tmp_path / "missing", ["a"])
    _one_line(e, "missing")


def test_evdet200k(tmp_path):
    Image.new("RGB", (16, 12), (127, 127, 127)).save(_png(tmp_path / "images" / "test" / "f1.png", 1, 1))
    (tmp_path / "labels" / "test").mkdir(parents=True)
    (tmp_path / "labels" / "test" / "f1.txt").write_text("9 0.5 0.5 0.25 0.5\n3 0.25 0.25 0.5 0.5\n")
    ds = EvDET200KDataset(tmp_path, "test")
    assert ds.names == EVDET200K_CLASSES and ds.names[9] == "UAV" and ds.names[3] == "electric bicycle"
    x, t = ds[0]
    assert x.shape == (3, 12, 16) and torch.allclose(x, torch.full_like(x, 127 / 255))
    assert t["labels"].tolist() == [9, 3]
    assert torch.equal(t["boxes"], torch.tensor([[6.0, 3.0, 10.0, 9.0], [0.0, 0.0, 8.0, 6.0]]))
    with pytest.raises(ZooError) as e:
        EvDET200KDataset(tmp_path, "train")
    _one_line(e, "images/train")


# ------------------------------------------------------------------------------------------ VOC

_VOC_XML = """<annotation><folder>VOC2007</folder><filename>{id}.jpg</filename>
<size><width>30</width><height>20</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult>
  <bndbox><xmin>2</xmin><ymin>3</ymin><xmax>12</xmax><ymax>15</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult>
  <bndbox><xmin>20.0</xmin><ymin>1</ymin><xmax>40</xmax><ymax>10</ymax></bndbox></object>
<object><name>car</name>
  <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>
</annotation>"""


def _voc(tmp_path, ids=("000001", "000002")):
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for i in ids:
        (root / "Annotations" / f"{i}.xml").write_text(_VOC_XML.format(id=i))
        Image.new("RGB", (30, 20), (50, 60, 70)).save(root / "JPEGImages" / f"{i}.jpg")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc(tmp_path):
    root = _voc(tmp_path)
    ds = VOCDataset(root, "test")
    assert len(ds) == 2 and ds.names == VOC_CLASSES
    x, t = ds[0]
    assert x.shape == (3, 20, 30) and t["file"].endswith("000001.jpg")
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"), VOC_CLASSES.index("car")]
    assert torch.equal(t["boxes"], torch.tensor([[1.0, 2.0, 11.0, 14.0], [19.0, 0.0, 30.0, 9.0], [0.0, 0.0, 4.0, 4.0]]))
    assert t["difficult"].dtype == torch.bool and t["difficult"].tolist() == [False, True, False]
    _, t = VOCDataset(root, "test", keep_difficult=False)[0]
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("car")]
    assert t["difficult"].tolist() == [False, False]


def test_voc_bad(tmp_path):
    root = _voc(tmp_path)
    xml = root / "Annotations" / "000001.xml"
    xml.write_text(_VOC_XML.replace("dog", "dragon"))
    with pytest.raises(ZooError) as e:
        VOCDataset(root, "test")[0]
    _one_line(e, xml, "dragon")
    xml.write_text("<annotation><object>")
    with pytest.raises(ZooError) as e:
        VOCDataset(root, "test")[0]
    _one_line(e, xml, "XML")
    xml.write_text(_VOC_XML.replace("<xmin>2</xmin>", ""))
    with pytest.raises(ZooError) as e:
        VOCDataset(root, "test")[0]
    _one_line(e, xml, "bndbox")
    (root / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(ZooError) as e:
        VOCDataset(root, "test")
    _one_line(e, "000002.jpg", "missing")
    with pytest.raises(ZooError) as e:
        VOCDataset(root, "train")
    _one_line(e, "train.txt")


# ------------------------------------------------------------------------------------------ Gen1

GEN1_BOX = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"),
                     ("class_id", "u1"), ("confidence", "<f4"), ("track_id", "<u4")])
HEADER = b"% Data file containing Event2D events.\n% Version 2\n% Date 2019-02-13 10:20:30\n% Height 240\n% Width 304\n"


def _write_dat(path, events, header=True, extra=b""):
    """events: (t, x, y, p[, high bits]) tuples, packed as Prophesee Event2D."""
    with open(path, "wb") as f:
        if header:
            f.write(HEADER + bytes([0, 8]))
        for ev in events:
            t, x, y, p = ev[:4]
            hi = ev[4] if len(ev) > 4 else 0
            word = x | (y << 14) | (p << 28) | (hi << 29)
            f.write(int(t).to_bytes(4, "little") + int(word).to_bytes(4, "little"))
        f.write(extra)


EVENTS = [
    (50_000, 20, 20, 1),  # before the 1 s label's window; inside [0, 125000) of the early label
    (740_000, 10, 10, 1),  # before the window [750000, 1000000): not shown
    (750_000, 1, 2, 1),  # slice 0 (T=2, dt = 125000): first instant
    (800_000, 3, 4, 0),  # slice 0, negative
    (874_999, 5, 6, 1),  # slice 0, last instant
    (875_000, 5, 6, 0),  # slice 1, first instant
    (900_000, 7, 8, 1),
    (900_000, 7, 8, 0),  # same time, same pixel: the later event wins (0)
    (910_000, 9, 9, 0),
    (920_000, 9, 9, 1, 7),  # the later event wins (255); bits 29-31 set: ignored
    (950_000, 303, 239, 1),  # the sensor's last column/row
    (1_000_000, 11, 11, 1),  # at the label time: outside the window
]


def _gen1(tmp_path, name="rec", events=EVENTS, rows=None):
    d = tmp_path / "gen1" / "test"
    d.mkdir(parents=True, exist_ok=True)
    _write_dat(d / f"{name}_td.dat", events)
    if rows is None:
        rows = [
            (100_000, 10, 10, 20, 20, 0, 1.0, 1),  # early label (< 250 ms)
            (1_000_000, 50, 40, 30, 20, 0, 1.0, 5),  # track 5, superseded by the next row of track 5
            (1_000_000, -10, 100, 30, 20, 1, 0.9, 2),  # x < 0: the official clamp shifts it to x in [0, 30]
            (1_000_000, 60, 50, 30, 20, 0, 1.0, 5),  # track 5, last row: kept
            (1_000_000, 290, 230, 30, 20, 0, 1.0, 9),  # reaches past the right/bottom edge
            (1_000_000, 5, 5, 0, 10, 1, 1.0, 3),  # w = 0: dropped
            (2_000_000, 5, 5, 0, 10, 1, 1.0, 3),  # only a zero-size box: not a sample
        ]
    np.save(d / f"{name}_bbox.npy", np.array(rows, dtype=GEN1_BOX))
    return tmp_path / "gen1"


def test_gen1_frames_and_boxes(tmp_path):
    root = _gen1(tmp_path)
    ds = Gen1Dataset(root, "test", T=2)
    assert len(ds) == 2 and ds.names == ("car", "pedestrian") and ds.empty_labels == 1
    x, t = ds[1]
    assert x.shape == (2, 3, 240, 304) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    f = (x[:, 0] * 255).round().to(torch.uint8)
    expect = torch.full((2, 240, 304), 127, dtype=torch.uint8)
    expect[0, 2, 1] = 255
    expect[0, 4, 3] = 0
    expect[0, 6, 5] = 255
    expect[1, 6, 5] = 0
    expect[1, 8, 7] = 0
    expect[1, 9, 9] = 255
    expect[1, 239, 303] = 255
    assert torch.equal(f, expect)
    assert t["t_us"] == 1_000_000 and t["orig_size"] == (240, 304) and t["file"].endswith("rec_td.dat")
    # official create_targets: last row per track, ordered by descending track id; x, w clamped
    # separately, centre clamped, zero size dropped; then xyxy, clipped to the frame here
    assert t["labels"].tolist() == [0, 0, 1]
    assert torch.allclose(t["boxes"], torch.tensor([[289.0, 230.0, 304.0, 240.0], [60.0, 50.0, 90.0, 70.0],
                                                    [0.0, 100.0, 30.0, 120.0]]))
    _, t = Gen1Dataset(root, "test", T=2, clip_boxes=False)[1]
    assert torch.allclose(t["boxes"][0], torch.tensor([289.0, 230.0, 319.0, 250.0]))  # centre clamped to (304, 240)

    # T = 4: dt = 62500, slices [750000, 812500), [812500, 875000), [875000, 937500), [937500, 1000000)
    x4, _ = Gen1Dataset(root, "test", T=4)[1]
    f4 = (x4[:, 0] * 255).round().to(torch.uint8)
    assert f4[0, 2, 1] == 255 and f4[0, 4, 3] == 0 and f4[1, 6, 5] == 255 and f4[2, 6, 5] == 0
    assert f4[3, 239, 303] == 255 and int((f4 != 127).sum()) == 7


def test_gen1_early_labels(tmp_path):
    root = _gen1(tmp_path)
    x, t = Gen1Dataset(root, "test")[0]  # uint64 ts: the official ts - 250000 wraps -> no events
    assert t["t_us"] == 100_000 and torch.equal(x, torch.full_like(x, 127 / 255))
    assert torch.equal(t["boxes"], torch.tensor([[10.0, 10.0, 30.0, 30.0]]))
    x, _ = Gen1Dataset(root, "test", early_labels="clamp")[0]  # window [0, 250000)
    assert x[0, 0, 20, 20] == 1.0 and int((x[:, 0] != 127 / 255).sum()) == 1
    ds = Gen1Dataset(root, "test", early_labels="drop")
    assert len(ds) == 1 and ds.early_dropped == 1
    # a signed time field (the toolbox's 't' int64): the official loader resets to 0, as "clamp"
    rows = np.load(root / "test" / "rec_bbox.npy")
    signed = np.zeros(len(rows), dtype=[("t", "<i8")] + [(n, rows.dtype[n]) for n in rows.dtype.names[1:]])
    for n in rows.dtype.names[1:]:
        signed[n] = rows[n]
    signed["t"] = rows["ts"].astype(np.int64)
    np.save(root / "test" / "rec_bbox.npy", signed)
    x, _ = Gen1Dataset(root, "test")[0]
    assert x[0, 0, 20, 20] == 1.0


def test_read_prophesee_dat(tmp_path):
    _write_dat(tmp_path / "a_td.dat", EVENTS[:3])
    ev = read_prophesee_dat(tmp_path / "a_td.dat")
    assert ev["t"].tolist() == [50_000, 740_000, 750_000]
    assert ev["x"].tolist() == [20, 10, 1] and ev["y"].tolist() == [20, 10, 2] and ev["p"].tolist() == [1, 1, 1]
    _write_dat(tmp_path / "b_td.dat", [(5, 16383, 16383, 0, 7)], header=False)  # no header: events from byte 0
    ev = read_prophesee_dat(tmp_path / "b_td.dat")
    assert ev.tolist() == [(5, 16383, 16383, 0)]


def test_gen1_bad(tmp_path):
    root = _gen1(tmp_path)
    dat = root / "test" / "rec_td.dat"
    dat.write_bytes(dat.read_bytes()[:-3])  # partial last event
    with pytest.raises(ZooError) as e:
        Gen1Dataset(root, "test")
    _one_line(e, dat, "truncated")
    with pytest.raises(ZooError) as e:
        read_prophesee_dat(dat)
    _one_line(e, dat, "truncated")
    _gen1(tmp_path, name="ok")
    with pytest.warns(UserWarning, match="skipping bad"):
        ds = Gen1Dataset(root, "test", skip_bad=True)
    assert len(ds) == 2 and ds.skipped == 1 and all("ok_td" in ds[i][1]["file"] for i in range(2))

    root = _gen1(tmp_path / "oob", events=[(900_000, 304, 5, 1)])
    with pytest.raises(ZooError) as e:
        Gen1Dataset(root, "test")[1]
    _one_line(e, "rec_td.dat", "x=304")

    root = _gen1(tmp_path / "fields")
    np.save(root / "test" / "rec_bbox.npy", np.zeros(3, dtype=[("ts", "<u8"), ("x", "<f4")]))
    with pytest.raises(ZooError) as e:
        Gen1Dataset(root, "test")
    _one_line(e, "rec_bbox.npy", "missing fields")

    (tmp_path / "none").mkdir()
    with pytest.raises(ZooError) as e:
        Gen1Dataset(tmp_path / "none")
    _one_line(e, "none", "empty")


# ------------------------------------------------------------------------------------------ box counts

def test_dropped_and_clipped_boxes_are_counted(tmp_path):
    # COCO: the w = 0 box is dropped while indexing (warned at once), the box reaching past the
    # 20x16 image is clipped when its image is read; a box wholly outside the image is dropped then
    ann, img = _coco(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 6, "image_id": 42, "category_id": 1, "bbox": [25, 2, 4, 4]})  # x > width
    ann.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="1 box\\(es\\) dropped"):
        ds = COCODataset(ann, img)
    assert (ds.dropped, ds.clipped) == (1, 0)
    for _ in range(2):  # each sample counts once, however often it is read
        _, t = ds[0]
    assert len(t["boxes"]) == 2 and (ds.dropped, ds.clipped) == (2, 1)
    line = ds.box_summary()
    assert "\n" not in line and "2 box(es) dropped" in line and "1 reaching past" in line and "1 of 2 samples" in line

    # YOLO: the box past the right edge is clipped, a zero-width one dropped; nothing to report before reading
    images = _yolo(tmp_path / "y")
    lab = tmp_path / "y" / "labels" / "val" / "a.txt"
    lab.write_text(lab.read_text() + "0 0.5 0.5 0 0.2\n")
    ds = YOLODataset(images, ["a", "b", "c"])
    assert (ds.dropped, ds.clipped, ds.box_summary()) == (0, 0, "")
    _, t = ds[0]
    assert len(t["boxes"]) == 3 and (ds.dropped, ds.clipped) == (1, 1)

    # VOC: the person box (x up to 40 on a 30-wide image) is clipped
    ds = VOCDataset(_voc(tmp_path / "v"), "test")
    ds[0], ds[1]
    assert (ds.dropped, ds.clipped) == (0, 2)

    # Gen1, at indexing: the two zero-size boxes dropped, the two reaching outside the sensor clipped
    with pytest.warns(UserWarning, match="2 box\\(es\\) dropped.*2 reaching past"):
        ds = Gen1Dataset(_gen1(tmp_path / "g"), "test")
    ds[1]
    assert (ds.dropped, ds.clipped) == (2, 2)


def test_zoo_eval_reports_dropped_boxes(tmp_path, monkeypatch, capsys):
    import zoo
    import zoo.cli

    class Nothing(torch.nn.Module):  # predicts no objects of 3 classes
        def forward(self, x):
            return torch.zeros(x.shape[0], 7, 4)

    monkeypatch.setattr(zoo, "load", lambda name, **kw: Nothing())
    ann, _ = _coco(tmp_path)
    with pytest.warns(UserWarning, match="dropped"):
        assert zoo.cli.main(["eval", "tinysnn-test", "--data", str(ann), "--imgsz", "32", "--weights", "w"]) == 0
    out = capsys.readouterr().out
    assert "COCODataset: 1 box(es) dropped" in out and "1 reaching past the image border clipped" in out
    with pytest.warns(UserWarning, match="dropped"):
        assert zoo.cli.main(["eval", "tinysnn-test", "--data", str(ann), "--imgsz", "32", "--weights", "w", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["boxes_dropped"] == 1 and d["boxes_clipped"] == 1


# ------------------------------------------------------------------------------------------ batching

def test_collate_letterbox_dataloader(tmp_path):
    ds = YOLODataset(_yolo(tmp_path), ["a", "b", "c"], transform=Letterbox(40))
    x, t = ds[0]  # 20x10 -> r = 2 -> 40x20, padded 10 above and below
    assert x.shape == (3, 40, 40)
    assert torch.allclose(x[:, 0, 0], torch.full((3,), 114 / 255)) and torch.allclose(x[:, 20, 20], x.new_tensor([1.0, 0, 0.2]))
    assert torch.allclose(t["boxes"][0], torch.tensor([16.0, 16.0, 24.0, 24.0]))
    assert t["letterbox"] == dict(scale=(2.0, 2.0), pad=(0, 10)) and t["orig_size"] == (10, 20)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 40, 40) and len(targets) == 2
    plain = YOLODataset(_yolo(tmp_path / "2"), ["a", "b", "c"])
    images, _ = collate([plain[0], plain[1]])
    assert isinstance(images, list) and [im.shape for im in images] == [(3, 10, 20), (3, 8, 8)]

    g = Gen1Dataset(_gen1(tmp_path), "test", T=2, transform=Letterbox(320))
    images, targets = collate([g[0], g[1]])
    assert images.shape == (2, 2, 3, 320, 320)  # [B, T, 3, H, W], the spikeyolo-gen1 input
    assert targets[1]["letterbox"]["pad"] == (0, 33)  # 304x240 -> 320x253, pad 33 + 34


def test_load_dataset_by_layout(tmp_path):
    coco = tmp_path / "coco"
    ann, _ = _coco(coco)  # coco/instances_val.json + coco/images/: rearrange into COCO's own layout
    (coco / "annotations").mkdir()
    ann.rename(coco / "annotations" / "instances_val2017.json")
    (coco / "images").rename(coco / "val2017")
    ds = load_dataset(coco)
    assert isinstance(ds, COCODataset) and len(ds) == 2 and ds.category_ids == (1, 3, 90)
    assert isinstance(load_dataset(coco / "annotations" / "instances_val2017.json"), COCODataset)
    with pytest.raises(ZooError) as e:
        load_dataset(coco, split="train2017")
    _one_line(e, "instances_train2017.json")
    assert isinstance(load_dataset(_voc(tmp_path)), VOCDataset)
    g = load_dataset(_gen1(tmp_path), T=4)
    assert isinstance(g, Gen1Dataset) and g.T == 4 and len(g) == 2
    _yolo(tmp_path / "y")
    assert len(load_dataset(tmp_path / "y", names=["a", "b", "c"])) == 2
    with pytest.raises(ZooError) as e:
        load_dataset(tmp_path / "y")
    _one_line(e, "names")
    with pytest.raises(ZooError) as e:
        load_dataset(tmp_path / "y" / "images" / "val" / "sub")
    _one_line(e, "unrecognised")
