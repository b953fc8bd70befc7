"""zoo.vision: one image contract for every mode, the letterbox, finding images, profiling one sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import neurons
from zoo.errors import ZooError
from zoo.profiling import profile
from zoo.vision import (IMAGE_SUFFIXES, PAD_VALUE, find_images, image_files, image_tensor, letterbox, load_image,
                        load_mask, profile_first_sample, to_pil)


def _save(tmp_path, name, im, **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


def _one_line(err, *parts):
    msg = str(err.value)
    assert "\n" not in msg
    for p in parts:
        assert str(p) in msg, (p, msg)


# ------------------------------------------------------------------------------------------ load_image


def test_load_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    as_tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    cases = {
        "rgb.png": Image.fromarray(rgb),
        "rgb.jpg": Image.fromarray(rgb),
        "gray.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
        "la.png": Image.fromarray(rgb[..., :2].copy(), "LA"),
        "pal.png": Image.fromarray(rgb).convert("P"),
        "bw.bmp": Image.fromarray(rgb[..., 0]).convert("1"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "pal.gif": Image.fromarray(rgb).convert("P"),
        "rgb.tiff": Image.fromarray(rgb),
        "rgb.webp": Image.fromarray(rgb),
    }
    for name, im in cases.items():
        t = load_image(_save(tmp_path, name, im))
        assert t.shape == (3, 37, 53) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1, name
    assert torch.equal(load_image(tmp_path / "rgb.png"), as_tensor)  # 8-bit: value / 255, bit for bit
    assert torch.equal(load_image(tmp_path / "rgba.png"), as_tensor)  # alpha dropped, colours kept
    t = load_image(tmp_path / "gray.png")
    assert torch.equal(t[0], t[2]) and torch.equal(t[0], as_tensor[0])
    la = load_image(tmp_path / "la.png")
    assert torch.equal(la[1], as_tensor[0])
    # palette with a transparent entry: the entry's colour, not black
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    t = load_image(_save(tmp_path, "palt.png", pal, transparency=1))
    assert torch.allclose(t[:, 2, 3] * 255, torch.tensor([200.0, 100.0, 50.0]))
    # 16-bit grey keeps its precision (not clipped at 255)
    g16 = rng.integers(0, 65536, (29, 41), dtype=np.uint16)
    t = load_image(_save(tmp_path, "g16.png", Image.fromarray(g16)))
    assert t.shape == (3, 29, 41) and torch.equal(t[0], t[2])
    assert torch.allclose(t[1], torch.from_numpy(g16.astype(np.float32) / 65535), atol=1e-6)
    f32 = rng.random((9, 11)).astype(np.float32)
    t = load_image(_save(tmp_path, "f.tiff", Image.fromarray(f32, "F")))
    assert torch.allclose(t[0], torch.from_numpy(f32), atol=1e-6)
    # the same contract for a PIL image in memory
    assert torch.equal(image_tensor(Image.fromarray(rgb)), as_tensor)


def test_load_image_exif_orientation(tmp_path):
    rgb = np.zeros((37, 53, 3), np.uint8)
    rgb[0, 0] = 255  # top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path, "rot.png", Image.fromarray(rgb), exif=exif)
    shown = load_image(path)
    assert shown.shape == (3, 53, 37) and shown[0, 0, -1] == 1.0  # top-left moved to the top-right
    stored = load_image(path, exif=False)
    assert stored.shape == (3, 37, 53) and stored[0, 0, 0] == 1.0


def test_load_image_errors(tmp_path):
    with pytest.raises(ZooError) as e:
        load_image(tmp_path / "missing.jpg")
    _one_line(e, "missing.jpg", "missing")
    (tmp_path / "notes.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ZooError) as e:
        load_image(tmp_path / "notes.png")
    _one_line(e, "notes.png", "cannot decode", "not an image")
    good = _save(tmp_path, "good.png", Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    j = tmp_path / "t.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(j)
    j.write_bytes(j.read_bytes()[:300])
    for bad in (tmp_path / "cut.png", j):
        with pytest.raises(ZooError) as e:
            load_image(bad)
        _one_line(e, bad.name, "cannot decode")
        assert str(e.value).startswith(str(bad))
    with pytest.raises(ZooError) as e:
        load_image(tmp_path)
    _one_line(e, "folder")


def test_to_pil_round_trip(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pil = to_pil(load_image(_save(tmp_path, "x.png", Image.fromarray(rgb))))
    assert pil.mode == "RGB" and pil.size == (7, 5) and np.array_equal(np.asarray(pil), rgb)


def test_load_mask(tmp_path):
    labels = np.random.default_rng(3).integers(0, 21, (9, 13), dtype=np.uint8)
    labels[0, :3] = 255  # VOC's "void" border
    pal = Image.fromarray(labels, "P")
    pal.putpalette(list(np.random.default_rng(4).integers(0, 256, 768, dtype=np.uint8)))
    m = load_mask(_save(tmp_path, "m.png", pal))
    assert m.dtype == torch.int64 and m.shape == (9, 13) and torch.equal(m, torch.from_numpy(labels).long())
    assert torch.equal(load_mask(_save(tmp_path, "g.png", Image.fromarray(labels))), m)  # grey: the value
    g16 = (labels.astype(np.uint16) * 1000)
    assert torch.equal(load_mask(_save(tmp_path, "g16.png", Image.fromarray(g16))), torch.from_numpy(g16.astype(np.int64)))
    with pytest.raises(ZooError) as e:
        load_mask(_save(tmp_path, "rgb.png", Image.fromarray(np.dstack([labels] * 3))))
    _one_line(e, "rgb.png", "palette or grey")
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(ZooError) as e:
        load_mask(tmp_path / "bad.png")
    _one_line(e, "bad.png", "cannot decode")


# ------------------------------------------------------------------------------------------ letterbox


def test_letterbox_geometry():
    img = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(0))
    out, r, (left, top) = letterbox(img, 64)
    assert out.shape == (3, 64, 64) and r == pytest.approx(64 / 70)
    assert (left, top) == (0, 9)  # resized to 46 x 64: 18 rows of padding, 9 on top, 9 below
    grey = PAD_VALUE / 255
    assert torch.allclose(out[:, :9], torch.full_like(out[:, :9], grey)) and torch.allclose(out[:, 55:], torch.full_like(out[:, 55:], grey))
    assert not torch.allclose(out[:, 9:55], torch.full_like(out[:, 9:55], grey))
    # auto: smallest multiple of the stride; odd padding goes to the bottom / right
    out, r, pad = letterbox(torch.rand(3, 37, 53), 64, auto=True)
    assert out.shape == (3, 64, 64) and r == pytest.approx(64 / 53) and pad == (0, 9)  # 45 rows -> 19 pad: 9 + 10
    out, r, pad = letterbox(torch.rand(3, 100, 300), 320, auto=True)
    assert out.shape == (3, 128, 320) and pad == (0, 10)  # 107 rows -> 128
    # no upscaling when asked; uint8 input becomes float in [0, 1]
    out, r, pad = letterbox(torch.full((3, 20, 30), 255, dtype=torch.uint8), 64, scaleup=False)
    assert r == 1 and out.shape == (3, 64, 64) and pad == (17, 22) and out.max() == 1.0
    # an explicit canvas
    out, r, pad = letterbox(torch.rand(3, 480, 640), 640, shape=(512, 672))
    assert out.shape == (3, 512, 672) and r == 1 and pad == (16, 16)
    with pytest.raises(ValueError):
        letterbox(torch.rand(3, 480, 640), 640, shape=(320, 320))
    with pytest.raises(ZooError):
        letterbox(torch.rand(480, 640), 640)
    with pytest.raises(ZooError, match="empty"):
        letterbox(torch.rand(3, 0, 5), 64)


def test_letterbox_leading_dims_and_antialias():
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(2, 3, 75, 90, generator=g)  # Gen1-style [T, 3, H, W]
    out, r, pad = letterbox(frames, 64, shape=(64, 64))
    assert out.shape == (2, 3, 64, 64)
    for t in range(2):  # every frame letterboxed alike
        one, r1, pad1 = letterbox(frames[t], 64, shape=(64, 64))
        assert torch.equal(out[t], one) and (r1, pad1) == (r, pad)
    # the channels of all frames as one image (how evaluation letterboxed frame stacks before): equal
    flat, _, _ = letterbox(frames.reshape(6, 75, 90), 64, shape=(64, 64))
    assert torch.equal(flat.reshape(2, 3, 64, 64), out)
    # shrinking is antialiased unless asked not to; no antialias is plain bilinear
    plain, _, _ = letterbox(frames[0], 60, antialias=False)
    ref = F.interpolate(frames[0][None], size=(50, 60), mode="bilinear", align_corners=False)[0]
    assert torch.equal(plain[:, 5:55], ref)
    smooth, _, _ = letterbox(frames[0], 60)
    ref = F.interpolate(frames[0][None], size=(50, 60), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.equal(smooth[:, 5:55], ref.clamp(0, 1)) and not torch.allclose(smooth, plain, atol=1e-2)


def test_letterbox_nearest_for_masks():
    mask = torch.tensor([[0, 1], [2, 3]], dtype=torch.uint8).repeat_interleave(5, 0).repeat_interleave(7, 1)[None]
    out, r, pad = letterbox(mask, 28, mode="nearest", pad_value=255)  # 10x14 -> 20x28, 4 rows above and below
    assert out.dtype == torch.uint8 and out.shape == (1, 28, 28) and r == 2 and pad == (0, 4)
    assert set(out.unique().tolist()) == {0, 1, 2, 3, 255}  # no blended labels
    assert (out[0, :4] == 255).all() and (out[0, 24:] == 255).all() and out[0, 4, 0] == 0 and out[0, 23, 27] == 3
    image, _, image_pad = letterbox(torch.rand(3, 10, 14), 28)
    assert image_pad == pad and image.shape[-2:] == out.shape[-2:]  # the mask lands where its image does
    with pytest.raises(ZooError, match="mode"):
        letterbox(mask, 28, mode="bicubic")


# ------------------------------------------------------------------------------------------ finding images


def test_find_images(tmp_path):
    assert ".jpg" in IMAGE_SUFFIXES and ".png" in IMAGE_SUFFIXES and len(set(IMAGE_SUFFIXES)) == len(IMAGE_SUFFIXES)
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "B.PNG")
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "deeper" / "c.jpg")
    (tmp_path / "sub" / "a.txt").write_text("")
    assert find_images([tmp_path / "ok.png", tmp_path / "sub"]) == [tmp_path / "ok.png", tmp_path / "sub" / "B.PNG"]
    assert find_images(tmp_path / "ok.png") == [tmp_path / "ok.png"]
    assert image_files(tmp_path / "sub", recursive=True) == [tmp_path / "sub" / "B.PNG", tmp_path / "sub" / "deeper" / "c.jpg"]
    (tmp_path / "docs").mkdir()
    for sources, match in (([tmp_path / "nope.jpg"], "not found"), ([tmp_path / "docs"], "no images in folder"),
                           ([], "no input")):
        with pytest.raises(ZooError, match=match) as e:
            find_images(sources)
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ profiling


class _Net(nn.Module):
    """A real-valued stem conv, an I-LIF and a spiking conv: MACs, a firing rate and ACs to count."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.lif = neurons.ILIF()
        self.conv = neurons.SpikeConv2d(4, 2, 3, padding=1, source=self.lif)
        self.seen = []

    def forward(self, x):
        self.seen.append((tuple(x.shape), x.dtype))
        return self.conv(self.lif(self.stem(x).unsqueeze(0))[0])


def test_profile_first_sample():
    torch.manual_seed(0)
    model = _Net().double()
    batch = torch.rand(3, 3, 16, 24)
    got = profile_first_sample(model, batch)
    assert model.seen[-1] == ((1, 3, 16, 24), torch.float64)  # the first sample, in the model's dtype
    want = profile(model, batch[:1].double())
    assert got.summary() == want.summary() and got.macs > 0 and got.acs > 0 and got.firing_rate is not None
    # one image [3, H, W], letterboxed first
    got = profile_first_sample(model, batch[1], imgsz=32, auto=True)
    assert model.seen[-1][0] == (1, 3, 32, 32)
    assert got.summary() == profile(model, letterbox(batch[1], 32, auto=True)[0][None].double()).summary()
    # a data set of (image, target): its first item
    data = [(batch[2], {"boxes": torch.zeros(0, 4)}), (batch[0], {})]
    assert profile_first_sample(model, data).summary() == profile(model, batch[2:3].double()).summary()
    with pytest.raises(ZooError, match="empty"):
        profile_first_sample(model, [])
