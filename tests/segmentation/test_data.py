"""ADE20K, Cityscapes and VOC 2012 adapters on small data sets written in their real layouts."""

import numpy as np
import pytest
from PIL import Image

from tasks.segmentation.data import ADE20K, Cityscapes, VOC2012, load_dataset
from zoo.errors import ZooError


def _image(path, h=6, w=8, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _label(path, values, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([i % 256 for i in range(768)])
    im.save(path)


def test_ade20k_reduces_the_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _image(root / "images/validation/ADE_val_1.jpg")
    raw = np.zeros((6, 8), np.uint8)
    raw[0, 0], raw[1, 1], raw[2, 2] = 1, 150, 255
    _label(root / "annotations/validation/ADE_val_1.png", raw)
    ds = load_dataset(tmp_path)
    assert isinstance(ds, ADE20K) and len(ds) == 1
    image, label, name = ds[0]
    assert image.shape == (3, 6, 8) and 0 <= image.min() and image.max() <= 1 and name == "ADE_val_1.jpg"
    assert label[0, 0] == 0 and label[1, 1] == 149 and label[2, 2] == 255 and label[3, 3] == 255  # 0 -> ignore


def test_cityscapes_train_ids_and_label_ids_conversion(tmp_path):
    base = tmp_path / "leftImg8bit/val/lindau"
    _image(base / "lindau_000000_000019_leftImg8bit.png")
    _image(base / "lindau_000001_000019_leftImg8bit.png", seed=1)
    gt = tmp_path / "gtFine/val/lindau"
    _label(gt / "lindau_000000_000019_gtFine_labelTrainIds.png", np.full((6, 8), 18))
    ids = np.full((6, 8), 7)  # road
    ids[0, :3] = (26, 0, 33)  # car, unlabeled, bicycle
    _label(gt / "lindau_000001_000019_gtFine_labelIds.png", ids)
    ds = load_dataset(tmp_path)
    assert isinstance(ds, Cityscapes) and len(ds) == 2 and ds.converted == 1
    assert (ds[0][1] == 18).all()
    label = ds[1][1]
    assert label[0, :3].tolist() == [13, 255, 18] and label[1, 0] == 0


def test_voc_split_listing_and_palette_labels(tmp_path):
    root = tmp_path / "VOCdevkit/VOC2012"
    _image(root / "JPEGImages/2007_000032.jpg")
    raw = np.zeros((6, 8), np.uint8)
    raw[2:4, 2:4], raw[0] = 15, 255
    _label(root / "SegmentationClass/2007_000032.png", raw, palette=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n")
    ds = load_dataset(tmp_path)
    assert isinstance(ds, VOC2012) and len(ds) == 1
    label = ds[0][1]
    assert label[2, 2] == 15 and label[0, 0] == 255 and label[5, 5] == 0


def test_bad_data_is_one_line_naming_the_file(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _image(root / "images/validation/a.jpg")
    _image(root / "images/validation/b.jpg")
    _image(root / "images/validation/c.jpg")
    _label(root / "annotations/validation/a.png", np.zeros((5, 8)))  # wrong size
    _label(root / "annotations/validation/b.png", np.full((6, 8), 200))  # 199 after reduce_zero_label
    (root / "annotations/validation/c.png").write_bytes(b"not a png")  # corrupt
    ds = ADE20K(root)
    for i, (name, match) in enumerate((("a.png", "is 8x5 but its image"), ("b.png", "outside the 150 classes"),
                                       ("c.png", "cannot"))):
        with pytest.raises(ZooError, match=match) as e:
            ds[i]
        assert name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ZooError, match="missing"):
        ADE20K(root, split="train")
    (root / "images/training").mkdir()
    (root / "annotations/training").mkdir()
    with pytest.raises(ZooError, match="empty"):
        ADE20K(root, split="train")
    with pytest.raises(ZooError, match="is not a folder"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "VOC").mkdir()
    with pytest.raises(ZooError, match="not an ADE20K"):
        load_dataset(tmp_path / "VOC")


def test_synthetic_shapes_read_as_ade20k(tmp_path):
    from tasks.segmentation.synthetic import CLASSES, write_ade20k

    write_ade20k(tmp_path, n_train=3, n_val=2, seed=1)
    train, val = load_dataset(tmp_path, split="train"), load_dataset(tmp_path)
    assert isinstance(val, ADE20K) and len(train) == 3 and len(val) == 2
    for image, label, _ in (train[i] for i in range(3)):
        assert image.shape[1:] == label.shape
        values = set(label.unique().tolist())
        assert 0 in values and values <= set(range(len(CLASSES))) and len(values) >= 2  # background + shapes
