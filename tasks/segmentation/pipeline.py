"""The official Spike2Former test pipeline (mmseg 1.x), step for step, on the zoo's image contract.

mmseg's test pipeline for these models is ``LoadImageFromFile`` (8-bit BGR) -> ``Resize(scale, keep_ratio=True)``
(mmcv's ``imrescale``: cv2 bilinear on the 8-bit image) -> ``SegDataPreProcessor`` (BGR -> RGB, ImageNet mean /
std, zero padding on the right and bottom to ``size_divisor`` where the config sets one) -> whole-image
inference -> ``EncoderDecoder.postprocess_result`` (padding cut off, bilinear resize to the original size with
``align_corners=False``, argmax over the channels).

Here an image is the zoo's ``float [3, H, W]`` RGB in [0, 1] (:func:`zoo.vision.load_image`); it is taken back to
8 bits (``round(255 x)``: exactly the file's pixels for 8-bit files) and resized with ``cv2.resize(...,
INTER_LINEAR)``, the call ``mmcv.imresize`` makes, at the size ``mmcv.rescale_size`` computes. Channel order does
not change a per-channel resize, so the image stays RGB. mmcv itself is not imported: it imports mmengine;
tests/segmentation/test_predict.py checks that the result equals ``mmcv.imrescale``.

Test settings per data set (released configs): ADE20K and VOC 2012 ``scale=(2048, 512)``, no padding;
Cityscapes ``scale=(2048, 1024)``, ``size_divisor=32``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zoo.errors import ZooError

MEAN = (123.675, 116.28, 103.53)  # RGB, on 0..255
STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class TestPipeline:
    """``scale``: mmcv's (long edge, short edge) keep-ratio bounds; ``size_divisor``: pad to a multiple (None: none)."""

    scale: tuple[int, int] = (2048, 512)
    size_divisor: int | None = None

    def __post_init__(self):
        if len(self.scale) != 2 or min(self.scale) <= 0:
            raise ZooError(f"test scale must be two positive sizes (long edge, short edge), got {self.scale}")
        if self.size_divisor is not None and self.size_divisor <= 0:
            raise ZooError(f"size divisor must be positive, got {self.size_divisor}")


ADE20K = TestPipeline((2048, 512))
VOC2012 = TestPipeline((2048, 512))
CITYSCAPES = TestPipeline((2048, 1024), size_divisor=32)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ZooError("the segmentation test pipeline resizes with OpenCV (as mmcv / mmseg do); install it with "
                       "`pip install 'spiking-zoo[segmentation]'` (or `pip install opencv-python`)") from None
    return cv2


def rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """``mmcv.rescale_size((w, h), scale)``: the keep-ratio size ``(new_w, new_h)`` that fits ``scale``.

    The factor is ``min(long / max(h, w), short / min(h, w))`` with ``long, short`` the larger and smaller entry of
    ``scale``; sizes are ``int(x * factor + 0.5)`` (never below 1 pixel here; mmcv would fail on 0).
    """
    long, short = max(scale), min(scale)
    factor = min(long / max(h, w), short / min(h, w))
    return max(int(w * factor + 0.5), 1), max(int(h * factor + 0.5), 1)


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """``float [3, H, W]`` in [0, 1] -> ``uint8 [H, W, 3]`` (``round(255 x)``), the 8-bit image mmseg reads."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ZooError(f"expected an RGB image tensor [3, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    if image.dtype == torch.uint8:
        arr = image
    else:
        arr = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(arr.permute(1, 2, 0).cpu().numpy())


def resize_image(image: torch.Tensor, scale: tuple[int, int]) -> np.ndarray:
    """The official ``Resize(scale, keep_ratio=True)``: ``uint8 [h', w', 3]`` (cv2 bilinear on 8 bits)."""
    arr = to_uint8_hwc(image)
    h, w = arr.shape[:2]
    size = rescale_size(w, h, scale)
    if size == (w, h):
        return arr
    return _cv2().resize(arr, size, interpolation=_cv2().INTER_LINEAR)


def preprocess(image: torch.Tensor, pipeline: TestPipeline = ADE20K) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image -> ``(model input [1, 3, H', W'] normalised and padded, (h, w) of the resized image before padding)``."""
    resized = torch.from_numpy(resize_image(image, pipeline.scale)).permute(2, 0, 1).float()
    x = (resized - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    h, w = x.shape[-2:]
    d = pipeline.size_divisor
    if d:
        ph, pw = -h % d, -w % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)  # SegDataPreProcessor pads after normalising, with 0
    return x[None], (h, w)


def postprocess(logits: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
    """``[K, H', W']`` logits -> the padding cut, bilinearly resized to ``original`` (h, w): ``[K, h, w]``."""
    h, w = resized
    logits = logits[:, :h, :w]
    if tuple(logits.shape[-2:]) != tuple(original):
        logits = F.interpolate(logits[None], size=tuple(original), mode="bilinear", align_corners=False)[0]
    return logits


__all__ = ["TestPipeline", "ADE20K", "VOC2012", "CITYSCAPES", "MEAN", "STD", "rescale_size", "resize_image",
           "preprocess", "postprocess", "to_uint8_hwc"]

# the released models' test settings; a model not named here gets Cityscapes' for Cityscapes classes, else ADE20K's
PIPELINES = {
    "spike2former-ade20k": ADE20K, "spike2former-l-ade20k": ADE20K, "spike2former-cityscapes": CITYSCAPES,
    "spike2former-voc2012": VOC2012, "spike2former-voc2012-t4": VOC2012,
    # the demo model: trained on 64-pixel crops; tested as its training validated it (short side 64, long <= 4x)
    "spike2former-tiny-shapes": TestPipeline((256, 64), None),
}


def pipeline_for(model) -> TestPipeline:
    """The test pipeline of a loaded model (``model.card``, set by :func:`zoo.load`); ADE20K's without a card."""
    from .classes import CITYSCAPES_CLASSES

    card = getattr(model, "card", None)
    if card is None:
        return ADE20K
    if card.name in PIPELINES:
        return PIPELINES[card.name]
    return CITYSCAPES if tuple(card.classes) == CITYSCAPES_CLASSES else ADE20K


__all__ += ["PIPELINES", "pipeline_for"]
