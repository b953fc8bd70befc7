"""Prophesee Gen1 Automotive: ``.dat`` events and ``.npy`` boxes, sliced as SpikeYOLO's Gen1 release."""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ZooError
from zoo.vision import file_error

from ..classes import GEN1_NAMES
from .common import DetectionDataset, finish_boxes

__all__ = ["Gen1Dataset", "read_prophesee_dat", "GEN1_SENSOR"]

GEN1_SENSOR = (240, 304)  # (H, W) of the ATIS sensor of the Gen1 Automotive data set


_DAT_RAW = np.dtype([("t", "<u4"), ("_", "<u4")])


def _dat_header(path: Path) -> tuple[int, int, int]:
    """Parse a Prophesee ``.dat`` header: returns (offset of the first event, event type, event size).

    Header lines start with ``'% '``; if there is at least one, the next two bytes are the event type
    and the event size (uint8). A file without header lines has events from byte 0 (type 0, size 8).
    """
    try:
        with open(path, "rb") as f:
            n_lines = 0
            while True:
                pos = f.tell()
                line = f.readline()
                if line[:2] != b"% ":
                    break
                n_lines += 1
            f.seek(pos)
            if n_lines == 0:
                return pos, 0, 8
            two = f.read(2)
            if len(two) < 2:
                raise file_error(path, "truncated: the header ends before the event type and size bytes")
            return pos + 2, two[0], two[1]
    except FileNotFoundError:
        raise file_error(path, "event file is missing") from None
    except OSError as e:
        raise file_error(path, f"cannot read ({e})") from None


def _open_dat(path: Path) -> np.memmap | np.ndarray:
    """Memory-map the raw events (``t`` uint32 us, ``_`` packed uint32) after checking the layout."""
    start, ev_type, ev_size = _dat_header(path)
    if ev_size != 8:
        raise file_error(path, f"event size {ev_size} in the header; only 8-byte events (Event2D/CD) are supported")
    size = path.stat().st_size
    extra = (size - start) % 8
    if extra:
        raise file_error(path, f"truncated: {extra} trailing byte(s) after the last whole 8-byte event "
                                "(partial last event); re-copy the file")
    n = (size - start) // 8
    if n == 0:
        return np.zeros(0, dtype=_DAT_RAW)
    return np.memmap(path, dtype=_DAT_RAW, mode="r", offset=start, shape=(n,))


def _decode(raw: np.ndarray):
    """Unpack the 32-bit word: x = bits 0-13, y = bits 14-27, polarity = bit 28 (bits 29-31 ignored)."""
    w = np.asarray(raw["_"], dtype=np.uint32)
    x = (w & 0x3FFF).astype(np.int64)
    y = ((w >> 14) & 0x3FFF).astype(np.int64)
    p = ((w >> 28) & 1).astype(np.uint8)
    return x, y, p


def read_prophesee_dat(path) -> np.ndarray:
    """All events of a Prophesee ``.dat`` file as a structured array ``t`` (uint32, us), ``x``, ``y``
    (uint16), ``p`` (uint8, 0/1). Raises ZooError on a truncated or unsupported file."""
    path = Path(path)
    raw = _open_dat(path)
    x, y, p = _decode(raw)
    out = np.empty(len(raw), dtype=[("t", "<u4"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    out["t"], out["x"], out["y"], out["p"] = raw["t"], x, y, p
    return out


def _gen1_boxes(rows: np.ndarray, h: int, w: int):
    """Boxes of one label time, as SpikeYOLO_for_Gen1/pre_gen1.py ``create_targets`` computes them.

    Keep the last row of every track_id (ordered by descending track_id); clamp x, w to [0, W] and
    y, h to [0, H] *separately*; centre = corner + size / 2, clamped again to [0, W] / [0, H]; drop
    boxes with w == 0 or h == 0. Returns (cx, cy, w, h), the class ids, the number of boxes dropped
    and the number of kept boxes that reached outside the sensor (moved or cut by the clamping).
    """
    _, first_in_flipped = np.unique(rows["track_id"][::-1], return_index=True)
    last = (len(rows) - 1 - first_in_flipped)[::-1]
    rows = rows[last]
    b = np.stack([rows["x"], rows["y"], rows["w"], rows["h"]], 1).astype(np.float32)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    b[:, 0] = b[:, 0] + b[:, 2] / 2
    b[:, 1] = b[:, 1] + b[:, 3] / 2
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    keep = (b[:, 2] != 0) & (b[:, 3] != 0)
    x, y, bw, bh = (rows[k].astype(np.float64) for k in ("x", "y", "w", "h"))
    outside = (x < 0) | (y < 0) | (x + bw > w) | (y + bh > h)
    return b[keep], rows["class_id"].astype(np.int64)[keep], int((~keep).sum()), int((outside & keep).sum())


class Gen1Dataset(DetectionDataset):
    """Prophesee Gen1 Automotive: ``*_td.dat`` events + ``*_bbox.npy`` labels, sliced as
    SpikeYOLO's ``SpikeYOLO_for_Gen1/pre_gen1.py`` does.

    Layout: ``root/[split/]NAME_td.dat`` and ``NAME_bbox.npy`` (files sorted by name).

    Events (``.dat``, Prophesee toolbox ``src/io/dat_events_tools.py``): text header lines starting
    with ``'% '``, then 1 byte event type and 1 byte event size (8), then little-endian events of
    uint32 time stamp (us) and uint32 word: x = bits 0-13, y = bits 14-27, polarity = bit 28.
    A file whose event bytes are not a multiple of 8 (partial last event) is rejected (the official
    loader silently ignores the partial event).

    Labels (``.npy`` structured array): ``ts`` (or ``t``), ``x``, ``y`` (top-left corner), ``w``, ``h``
    in sensor pixels, ``class_id`` (0 car, 1 pedestrian), ``track_id`` (+ ``confidence``, unused).
    One sample per distinct label time ``t``:

    * events: the window ``[s, s + T*dt)`` with ``s = t - window_us`` and ``dt = window_us // T``,
      split into ``T`` slices (slice k covers ``[s + k*dt, s + (k+1)*dt)``); each slice becomes one
      frame of 127 with the pixel of an event set to 255 (positive) or 0 (negative), the last event in
      the slice winning; the 3 channels are equal. Returned as ``[T, 3, 240, 304]`` float (frame / 255).
    * labels earlier than ``window_us`` (``early_labels``): ``"official"`` (default) does what
      pre_gen1.py does. Gen1 stores ``ts`` as uint64, so its ``ts - sample_size`` wraps around, the
      loader seeks past the end of the file and the frames are all background (127); with a signed
      time field ``PSEELoader.seek_time`` resets to 0 and the window is ``[0, T*dt)``. ``"clamp"``
      always uses ``[0, T*dt)``; ``"drop"`` leaves such labels out (counted in ``early_dropped``).
    * boxes: as ``create_targets`` (see ``_gen1_boxes``: last row per track, the official separate
      clamping of corner and size, zero-size boxes dropped), converted to ``xyxy`` pixels; with
      ``clip_boxes=True`` (default) the result is also clipped to the 304x240 frame (the official
      pipeline can leave a box reaching past the right/bottom edge: ``clip_boxes=False`` keeps that).
      Counted while indexing: ``dropped`` (zero size after the clamping) and ``clipped`` (boxes
      that reached outside the sensor, whatever the clamping made of them).
      Label times left without any box are not samples (the official script returns None for them);
      their count is ``dataset.empty_labels``.
    * ``T`` default 2: the released SpikeYOLO Gen1 model (``gen1_yolo_T2`` in gen1.yaml, weights
      ``gen1_T2D4``); pre_gen1.py's own default is ``T = 4``. ``window_us`` 250 000 (``sample_size``).
    * Events outside the sensor make the sample bad (the official code asserts).
    * ``image_id`` is the sample's index; the target also has ``t_us`` (the label time).
    * Not reproduced on purpose: with repeated track ids at one label time the official script fails
      (its label array keeps the pre-deduplication length) or repeats the one kept box; here the
      last row per track is kept. Its binary search (``PSEELoader.seek_time``, files over 100 000
      events) can land after events whose time stamp equals the window start; here the window starts
      at the first such event.
    * A bad event or box file (``skip_bad=True``) counts once in ``skipped``, whatever its samples.
    """

    names = GEN1_NAMES

    def __init__(self, root, split: str | None = None, T: int = 2, window_us: int = 250_000,
                 sensor_size: tuple[int, int] = GEN1_SENSOR, clip_boxes: bool = True,
                 early_labels: str = "official", transform=None, skip_bad: bool = False):
        super().__init__(transform, skip_bad)
        if early_labels not in ("official", "clamp", "drop"):
            raise ZooError(f"Gen1Dataset: early_labels must be 'official', 'clamp' or 'drop', not {early_labels!r}")
        self.early_labels = early_labels
        self.early_dropped = 0
        if int(T) < 1 or int(window_us) // int(T) < 1:
            raise ZooError(f"Gen1Dataset: need T >= 1 and window_us // T >= 1 us (got T={T}, window_us={window_us})")
        self.T, self.window_us = int(T), int(window_us)
        self.h, self.w = (int(v) for v in sensor_size)
        self.clip_boxes = clip_boxes
        self.root = Path(root) / split if split else Path(root)
        if not self.root.is_dir():
            raise file_error(self.root, "Gen1 folder is missing")
        self.empty_labels = 0
        for bbox_file in sorted(self.root.glob("*_bbox.npy")):
            dat = bbox_file.with_name(bbox_file.name[: -len("_bbox.npy")] + "_td.dat")
            try:
                samples = self._index_file(bbox_file, dat)
            except ZooError as e:
                self._note_bad(e, at_init=True)
                continue
            self.items += samples
        self._check_not_empty(self.root)

    def _index_file(self, bbox_file: Path, dat: Path) -> list:
        try:
            boxes = np.load(bbox_file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise file_error(bbox_file, f"cannot read the box array ({e})") from None
        names = boxes.dtype.names or ()
        tkey = "t" if "t" in names else "ts"
        missing = [f for f in (tkey, "x", "y", "w", "h", "class_id", "track_id") if f not in names]
        if boxes.ndim != 1 or missing:
            raise file_error(bbox_file, f"not a Gen1 box array (missing fields {missing or 'none'}, ndim {boxes.ndim})")
        if len(boxes) and (boxes["class_id"].max() >= len(self.names) or boxes["class_id"].min() < 0):
            raise file_error(bbox_file, f"class_id outside 0..{len(self.names) - 1}")
        _open_dat(dat)  # header, size and truncation checks now, not mid-epoch
        blank_early = self.early_labels == "official" and boxes.dtype[tkey].kind == "u"
        t = boxes[tkey].astype(np.int64)
        order = np.argsort(t, kind="stable")  # group by label time, file order kept within a group
        uniq, starts = np.unique(t[order], return_index=True)
        out, dropped, clipped = [], 0, 0
        for ts, group in zip(uniq, np.split(order, starts[1:])):
            rows = boxes[group]
            early = int(ts) < self.window_us
            if early and self.early_labels == "drop":
                self.early_dropped += 1
                continue
            b, labels, n_dropped, n_clipped = _gen1_boxes(rows, self.h, self.w)
            dropped, clipped = dropped + n_dropped, clipped + n_clipped
            if len(b) == 0:
                self.empty_labels += 1
                continue
            xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
            out.append((dat, int(ts), xyxy, labels, early and blank_early))
        self._count_boxes(dropped, clipped)
        return out

    def frames(self, dat: Path, t_label: int, blank: bool = False) -> np.ndarray:
        """The ``[T, H, W]`` uint8 frames (127 / 255 / 0) of the window before ``t_label``."""
        raw = _open_dat(dat)
        if blank:
            return np.full((self.T, self.h, self.w), 127, dtype=np.uint8)
        dt = self.window_us // self.T
        start = max(t_label - self.window_us, 0)
        edges = start + dt * np.arange(self.T + 1, dtype=np.int64)
        # binary search on the memory map (np.searchsorted would copy the whole strided column)
        ts = raw["t"]
        idx = np.array([bisect.bisect_left(ts, int(e)) for e in edges], dtype=np.int64)
        chunk = np.asarray(raw[idx[0]: idx[-1]])
        x, y, p = _decode(chunk)
        frame = np.full((self.T * self.h * self.w,), 127, dtype=np.uint8)
        if len(chunk):
            if x.max() >= self.w or y.max() >= self.h:
                k = int(np.argmax((x >= self.w) | (y >= self.h)))
                raise file_error(dat, f"event at x={x[k]}, y={y[k]} lies outside the {self.w}x{self.h} sensor")
            slice_of = np.repeat(np.arange(self.T), np.diff(idx))
            key = (slice_of * self.h + y) * self.w + x
            # last event per pixel and slice: first occurrence in the reversed sequence
            uniq, first_rev = np.unique(key[::-1], return_index=True)
            frame[uniq] = np.where(p[::-1][first_rev] == 1, 255, 0).astype(np.uint8)
        return frame.reshape(self.T, self.h, self.w)

    def _load(self, i):
        dat, ts, xyxy, labels, blank = self.items[i]
        fr = self.frames(dat, ts, blank)
        image = torch.from_numpy(fr).float().div_(255.0).unsqueeze(1).repeat(1, 3, 1, 1)
        (boxes, labels), _, _ = finish_boxes(xyxy, labels, self.h, self.w, clip=self.clip_boxes)  # counted at indexing
        return image, dict(boxes=boxes, labels=labels, image_id=i, orig_size=(self.h, self.w), file=str(dat),
                           t_us=ts)
