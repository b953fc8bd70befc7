"""Image input shared by the vision tasks: reading files, letterboxing, finding images, profiling.

One contract for images everywhere in the zoo (detection, segmentation, ...): an image is a
``torch.float32`` tensor ``[3, H, W]`` with values in [0, 1], RGB, ``H`` and ``W`` the pixels of the
file (after the EXIF orientation, unless asked not to). :func:`load_image` returns exactly that for
any mode PIL opens:

========================  =================================================================
file                      tensor
========================  =================================================================
RGB (8-bit)               ``value / 255``, bit for bit
grey ``L``, 1-bit ``1``   the grey value in all three channels
RGBA, LA, PA, RGBa        alpha dropped, colours kept (as ``cv2.imread``, which ultralytics uses)
palette ``P``             the palette colours (a transparent entry keeps its colour)
CMYK, YCbCr, ...          PIL's conversion to RGB
16-bit grey (``I;16*``)   ``value / 65535``, full precision, in all three channels
32-bit int grey ``I``     ``value / 65535`` when in 0..65535, else ``value / max``
float grey ``F``          the value when in [0, 1], else ``value / max`` (NaN as 0)
========================  =================================================================

EXIF orientation (tag 274) is applied by default, as image viewers and ``cv2.imread`` do;
``exif=False`` keeps the stored pixel grid (what annotations of a data set refer to when they were
made on the stored pixels). A missing, unreadable, corrupt or truncated file raises
:class:`ZooError` with one line that starts with the path. :func:`to_pil` turns such a tensor back
into an 8-bit RGB PIL image (exactly the file's pixels for 8-bit files).

:func:`load_mask` reads a segmentation label mask (palette index or grey value, ``int64 [H, W]``).
:func:`letterbox` resizes keeping the aspect ratio and pads with grey 114, as ultralytics does
(``mode="nearest"`` for masks);
:func:`find_images` lists the image files named by paths and folders (:data:`IMAGE_SUFFIXES`);
:func:`profile_first_sample` runs :func:`zoo.profile` on the first sample of a batch or data set.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import ZooError

__all__ = ["IMAGE_SUFFIXES", "PAD_VALUE", "load_image", "load_mask", "image_tensor", "as_images", "PredictionRun", "to_pil", "file_error",
           "letterbox", "letterbox_geometry", "image_files", "find_images", "model_device_dtype", "profile_first_sample"]

# Image file suffixes the zoo reads (lower case): ultralytics' IMG_FORMATS plus the other formats
# PIL decodes that photos and frames come in.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pbm", ".pnm",
                  ".jfif", ".dng", ".mpo", ".pfm")

PAD_VALUE = 114  # ultralytics' letterbox grey, in 0..255

_FORMATS = "JPEG, PNG, BMP, TIFF, WebP, GIF, PNM, ..."


# --------------------------------------------------------------------------------------------------
# Reading


def load_image(path: str | Path, exif: bool = True) -> torch.Tensor:
    """Read an image file into the zoo's image contract: ``float32 [3, H, W]`` RGB in [0, 1].

    Every PIL mode is handled as the module table says (16-bit and float grey at full precision,
    alpha dropped, palette colours). ``exif``: apply the EXIF orientation (default). Raises
    :class:`ZooError` (one line, starting with the path) for a missing file, a folder, a file that
    is not an image, and a corrupt, truncated or oversized one.
    """
    return _read(path, exif, image_tensor)


def load_mask(path: str | Path, exif: bool = True) -> torch.Tensor:
    """Read a label mask (segmentation) as ``int64 [H, W]``: the palette index of a palette image
    (VOC, ADE20K style: the index is the class, the colours are only for viewing), the value of a
    grey image (``L``, ``I;16``, ``I``). Colour (RGB) masks raise: they need a colour -> class table.
    ``exif`` and the errors as :func:`load_image`."""

    def indices(im):
        if im.mode not in ("P", "L", "I") and not im.mode.startswith("I;16"):
            raise ZooError(f"{path}: a label mask must be a palette or grey image, not {im.mode}; "
                           "map colours to class indices first")
        return torch.from_numpy(np.asarray(im).astype(np.int64))

    return _read(path, exif, indices)


def _read(path, exif: bool, convert):
    """Open ``path`` with PIL, apply the EXIF orientation if ``exif``, return ``convert(image)``;
    every failure a one-line ZooError that starts with the path."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise file_error(path, "is a folder, not an image file")
    if not path.exists():
        raise file_error(path, "image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            if exif:
                im = ImageOps.exif_transpose(im) or im
            return convert(im)
    except UnidentifiedImageError:
        raise file_error(path, f"cannot decode the image: not an image file PIL reads ({_FORMATS}); "
                               "replace or remove the file") from None
    except Image.DecompressionBombError as e:
        raise file_error(path, f"cannot decode the image: too large to decode safely ({e}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise file_error(path, f"cannot decode the image: corrupt or truncated ({detail}); "
                               "replace or remove the file") from None


def image_tensor(im) -> torch.Tensor:
    """A PIL image (any mode) as ``float32 [3, H, W]`` RGB in [0, 1], by the module's table."""
    grey = _grey_high_precision(im)
    if grey is not None:
        return torch.from_numpy(grey).unsqueeze(0).expand(3, -1, -1).contiguous()
    if im.mode in ("P", "PA") and ("transparency" in im.info or im.mode == "PA"):
        im = im.convert("RGBA")  # a palette with transparency converts to RGB only through RGBA
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.array(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"decoded to an unexpected shape {arr.shape}")
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _grey_high_precision(im) -> np.ndarray | None:
    """A [H, W] float32 array in [0, 1] for 16-bit / 32-bit / float grey images, else None."""
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if im.mode == "I":
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if a.size == 0 or (a.min() >= 0 and a.max() <= 65535) else max(float(a.max()), 1.0)
        return np.clip(a / top, 0, 1).astype(np.float32)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64))
        top = 1.0 if a.size == 0 or a.max() <= 1 else float(a.max())
        return np.clip(a / top, 0, 1).astype(np.float32)
    return None


def to_pil(image: torch.Tensor):
    """An image tensor ``[3, H, W]`` in [0, 1] as an 8-bit RGB PIL image (``round(255 x)``)."""
    from PIL import Image

    arr = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def file_error(path, problem: str) -> ZooError:
    """A one-line ZooError naming the file and the problem: ``"{path}: {problem}"``."""
    return ZooError(" ".join(f"{path}: {problem}".split()))


# --------------------------------------------------------------------------------------------------
# Letterbox


def letterbox_geometry(h: int, w: int, imgsz: int | tuple[int, int] = 640, stride: int = 32, auto: bool = False,
                       scaleup: bool = True, shape: tuple[int, int] | None = None):
    """Where :func:`letterbox` puts an ``h`` x ``w`` image: ``(ratio, (nh, nw), (ch, cw), (left, top))``,
    the scale, the resized size, the canvas and the padding before the image."""
    if h <= 0 or w <= 0:
        raise ZooError(f"cannot letterbox an empty image of size {h}x{w}")
    th, tw = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    if th <= 0 or tw <= 0:
        raise ZooError(f"image size must be positive, got {imgsz}")
    r = min(th / h, tw / w)
    if not scaleup:
        r = min(r, 1.0)
    nh, nw = max(int(round(h * r)), 1), max(int(round(w * r)), 1)
    if shape is not None:
        ch, cw = int(shape[0]), int(shape[1])
        if ch < nh or cw < nw:
            raise ValueError(f"canvas {ch}x{cw} is smaller than the resized image {nh}x{nw}")
    elif auto:
        ch, cw = math.ceil(nh / stride) * stride, math.ceil(nw / stride) * stride
    else:
        ch, cw = th, tw
    return r, (nh, nw), (ch, cw), ((cw - nw) // 2, (ch - nh) // 2)


def letterbox(
    image: torch.Tensor,
    imgsz: int | tuple[int, int] = 640,
    stride: int = 32,
    auto: bool = False,
    scaleup: bool = True,
    shape: tuple[int, int] | None = None,
    pad_value: int = PAD_VALUE,
    antialias: bool | None = None,
    mode: str = "bilinear",
) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Resize ``image`` ``[..., C, H, W]`` to fit ``imgsz`` keeping its aspect ratio, then pad.

    Returns ``(padded [..., C, H', W'] float in [0, 1], ratio, (pad_left, pad_top))``; a point
    ``p`` of the original maps to ``p * ratio + pad``. Leading dimensions (a batch, Gen1's ``T``
    frames) are letterboxed alike; a ``uint8`` image is divided by 255 first.

    The canvas: ``shape`` (h, w) if given (e.g. a validation batch shape), else the smallest
    multiple of ``stride`` around the resized image if ``auto`` (ultralytics' predict), else
    ``imgsz`` itself. ``scaleup=False`` never enlarges. The padding is split evenly, the odd pixel
    right / bottom (ultralytics' ``round(pad / 2 -+ 0.1)``), filled with ``pad_value`` / 255.
    Resizing is bilinear; ``antialias`` (default: when shrinking, close to cv2's INTER_AREA that
    ultralytics' validation loader uses) low-pass filters first. ``mode="nearest"`` is for label
    masks (``[..., H, W]`` from :func:`load_mask` as ``[1, H, W]``): nearest-neighbour resizing, the
    dtype and the values kept, padding with ``pad_value`` itself (e.g. 255, the usual ignore index).
    """
    if mode not in ("bilinear", "nearest"):
        raise ZooError(f"letterbox mode must be 'bilinear' or 'nearest', got {mode!r}")
    if not isinstance(image, torch.Tensor) or image.dim() < 3:
        raise ZooError(f"letterbox expects an image tensor [C, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    nearest = mode == "nearest"
    if not nearest and not image.is_floating_point():
        image = image.float().div(255)
    h, w = image.shape[-2:]
    r, (nh, nw), (ch, cw), (left, top) = letterbox_geometry(h, w, imgsz, stride, auto, scaleup, shape)
    if (nh, nw) != (h, w):
        lead = image.shape[:-3]
        flat = image.reshape(-1, *image.shape[-3:])
        if nearest:
            flat = F.interpolate(flat.double(), size=(nh, nw), mode="nearest").to(image.dtype)
        else:
            flat = F.interpolate(flat.float(), size=(nh, nw), mode="bilinear", align_corners=False,
                                 antialias=r < 1 if antialias is None else antialias).clamp_(0, 1)
        image = flat.reshape(*lead, *flat.shape[-3:])
    dh, dw = ch - nh, cw - nw
    if dh or dw:
        image = F.pad(image, (left, dw - left, top, dh - top), value=pad_value if nearest else pad_value / 255.0)
    return image, r, (left, top)


# --------------------------------------------------------------------------------------------------
# Finding images


def image_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The files in ``folder`` (and its subfolders if ``recursive``) with an :data:`IMAGE_SUFFIXES`
    suffix (any case), sorted by path; possibly empty."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_images(sources: Sequence[str | Path] | str | Path) -> list[Path]:
    """The image files named by ``sources``: files as given, folders their image files (sorted,
    not recursive). Raises :class:`ZooError` for a path that does not exist or a folder without
    images. Files are not opened here: :func:`load_image` reports those that cannot be read."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise ZooError("no input given; pass an image file or a folder of images")
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            found = image_files(p)
            if not found:
                raise ZooError(f"no images in folder {p} (looked for {', '.join(IMAGE_SUFFIXES[:6])}, ...)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ZooError(f"input not found: {p}")
    return files


# --------------------------------------------------------------------------------------------------
# Profiling


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device of the model's first parameter and the dtype of its first floating-point one
    (CPU and float32 for a model without them): where and how to feed it images."""
    p = next(model.parameters(), None)
    f = next((q for q in model.parameters() if q.is_floating_point()), None)
    return (p.device if p is not None else torch.device("cpu")), (f.dtype if f is not None else torch.float32)


def profile_first_sample(model: torch.nn.Module, source, imgsz: int | tuple[int, int] | None = None,
                         stride: int = 32, auto: bool = False, preset: str = "fp32"):
    """:func:`zoo.profile` of ``model`` on one sample: the papers' per-sample firing rate and energy.

    ``source``: a tensor, taken as a batch whose first sample is profiled (``x[:1]``; a 3-D
    ``[C, H, W]`` image is one sample), or a data set / iterable whose first item (an image, or an
    ``(image, target)`` pair) is one sample. With ``imgsz`` the sample is letterboxed first
    (:func:`letterbox` with ``stride`` and ``auto``). The input is moved to the model's device and
    dtype. Returns the :class:`zoo.profiling.Profile`.
    """
    from .profiling import profile

    if isinstance(source, torch.Tensor):
        x = source[None] if source.dim() == 3 else source[:1]
    else:
        try:
            item = source[0] if hasattr(source, "__getitem__") else next(iter(source))
        except (IndexError, StopIteration):
            raise ZooError("cannot profile the first sample of an empty data set") from None
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise ZooError(f"the data set's first sample is {type(x).__name__}, not a tensor (or an (image, target) pair)")
        x = x[None]
    if imgsz is not None:
        x = letterbox(x, imgsz, stride, auto=auto)[0]
    device, dtype = model_device_dtype(model)
    return profile(model, x.to(device=device, dtype=dtype), preset=preset)


def as_images(images) -> list[torch.Tensor]:
    """``images`` as a list of ``[3, H, W]`` tensors: a tensor ``[3, H, W]`` or batch ``[B, 3, H, W]``,
    a PIL image, or a list of those."""
    if isinstance(images, torch.Tensor):
        images = [images] if images.dim() == 3 else list(images) if images.dim() == 4 else [images]
    elif not isinstance(images, (list, tuple)):
        images = [images]
    out = []
    for k, im in enumerate(images):
        if not isinstance(im, torch.Tensor):
            if not hasattr(im, "mode") or not hasattr(im, "convert"):
                raise ZooError(f"image {k}: expected a tensor [3, H, W] or a PIL image, got {type(im).__name__}")
            im = image_tensor(im)
        if im.dim() != 3 or im.shape[0] != 3 or min(im.shape[1:]) == 0:
            raise ZooError(f"image {k}: expected an RGB tensor [3, H, W] (or a batch [B, 3, H, W]), got {tuple(im.shape)}")
        out.append(im)
    return out


@dataclass
class PredictionRun:
    """What a task's ``predict`` over files did: per-image records (as in its JSON), the JSON path, the files it
    could not read (``{"file", "error"}``), the first image's profile and the seconds spent in the in-memory
    model call (``timed`` says what that covers; reading, drawing and writing files are not included)."""

    images: list[dict] = field(default_factory=list)
    json_path: Path | None = None
    profile: object | None = None  # zoo.profiling.Profile of the first image
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    timed = "model"  # what `seconds` covers, for the report

    @property
    def fps(self) -> float | None:
        """Images per second through the timed part (None before any image)."""
        return len(self.images) / self.seconds if self.images and self.seconds > 0 else None

    def to_dict(self) -> dict:
        d = {"images": self.images, "json": str(self.json_path) if self.json_path else None,
             "skipped": self.skipped, "seconds": self.seconds, "fps": self.fps}
        if self.profile is not None:
            d["energy"] = self.profile.summary()
        return d

    def report(self) -> list[str]:
        """Lines for a person: the files skipped and the speed."""
        lines = [f"skipped {s['error']}" for s in self.skipped]
        if self.skipped:
            lines.append(f"{len(self.skipped)} of {len(self.skipped) + len(self.images)} file(s) could not be read "
                         "and were skipped")
        if self.fps is not None:
            lines.append(f"{len(self.images)} image(s) in {self.seconds:.2f} s: {self.fps:.1f} frames/s "
                         f"({self.timed}; reading and writing files not included)")
        return lines
