"""Pretrained weights: the manifest, the cache, and verified, resumable downloads.

* The manifest (``weights/manifest.toml``) lists each weight file: its sources
  (https URL, Google Drive file id, Hugging Face repo + file + revision), sha256,
  size, format, and which model converter reads it.
* Files live in a cache (``$ZOO_HOME``, default ``~/.cache/spiking-zoo``),
  written to ``.partial/NAME.part`` while downloading (resumed with an HTTP Range
  request after an interruption) and renamed into place atomically only after
  the sha256 matches.
* The sha256 is checked on every load, not only after download. Where the
  manifest has no hash yet (released files not yet verified by us), the hash of
  the first download is pinned in ``NAME.sha256`` beside the file and checked
  from then on.
* ``ZOO_OFFLINE=1`` (or an unreachable network) never downloads: it fails
  with a message naming the file and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import html
import os
import re
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .errors import OfflineError, WeightsError, ZooError

MANIFEST = Path(__file__).resolve().parent.parent / "weights" / "manifest.toml"
BUNDLED_DIR = MANIFEST.parent
GDRIVE_URL = "https://drive.google.com/uc?export=download&id={id}"
HF_URL = "{endpoint}/{repo}/resolve/{revision}/{file}"
CHUNK = 1 << 20
TIMEOUT = 15
RETRIES = 5
PARTIAL = ".partial"  # unfinished downloads, kept for resuming, beside (not in) the cached files


@dataclass
class WeightsEntry:
    key: str
    file: str  # file name in the cache (or under weights/ when bundled)
    format: str  # safetensors | torch | ultralytics | mmengine
    sha256: str = ""
    size: int = 0
    sources: list[dict] = field(default_factory=list)
    bundled: bool = False
    converter: str = ""  # "module:function" mapping this file's state dict to the model's keys
    license: str = ""
    note: str = ""

    def urls(self) -> list[str]:
        out = []
        for src in self.sources:
            if "url" in src:
                out.append(src["url"])
            elif "gdrive" in src:
                out.append(GDRIVE_URL.format(id=src["gdrive"]))
            elif "hf_repo" in src:
                endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
                out.append(HF_URL.format(endpoint=endpoint, repo=src["hf_repo"],
                                         revision=src.get("revision", "main"), file=src["hf_file"]))
            elif "gdrive_folder" in src:
                continue  # a folder is not a file: documented for people, not downloadable
            else:
                raise ZooError(f"weights entry {self.key!r} has a source of unknown kind: {src}")
        return out


def load_manifest(path: Path | None = None) -> dict[str, WeightsEntry]:
    path = Path(path) if path else MANIFEST
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ZooError(f"cannot read the weights manifest {path}: {e}") from None
    return {k: WeightsEntry(key=k, **v) for k, v in raw.items()}


def entry(key: str) -> WeightsEntry:
    manifest = load_manifest()
    if key not in manifest:
        raise ZooError(f"no weights entry {key!r} in {MANIFEST}; entries: {', '.join(sorted(manifest))}")
    return manifest[key]


def cache_dir() -> Path:
    home = os.environ.get("ZOO_HOME")
    if home:
        return Path(home).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spiking-zoo"


def is_offline() -> bool:
    return os.environ.get("ZOO_OFFLINE", "").lower() in ("1", "true", "yes")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, e: WeightsEntry) -> Path:
    """Check ``path`` against the entry's size and sha256 (or the pinned hash); return it."""
    path = Path(path)
    if e.size and path.stat().st_size != e.size:
        raise WeightsError(f"{path} has {path.stat().st_size} bytes, expected {e.size}: delete it and download again (`zoo download`)")
    pin = path.with_name(path.name + ".sha256")
    expected = e.sha256 or (pin.read_text().strip() if pin.exists() else "")
    digest = sha256_file(path)
    if expected and digest != expected:
        raise WeightsError(f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}...: the file is corrupt or not {e.key}; delete it and download again")
    if not expected and not e.bundled:  # bundled files carry their hash in the manifest
        _atomic_write_text(pin, digest + "\n")
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def local_path(e: WeightsEntry) -> Path:
    return BUNDLED_DIR / e.file if e.bundled else cache_dir() / e.file


def fetch(key: str, progress: bool = True) -> Path:
    """The verified local path of weights ``key``, downloading it if needed."""
    e = entry(key)
    path = local_path(e)
    if path.exists():
        return verify(path, e)
    if e.bundled:
        raise WeightsError(f"bundled weights {path} are missing from the installation; reinstall the zoo")
    urls = e.urls()
    where = f"put it at {path} (or pass weights='PATH' to zoo.load)"
    if not urls:
        raise OfflineError(f"{e.file} ({key}) cannot be downloaded automatically ({e.note or 'no direct source'}); {where}")
    if is_offline():
        raise OfflineError(f"ZOO_OFFLINE is set and {e.file} ({key}) is not in the cache; download it from {urls[0]} and {where}")
    errors = []
    for url in urls:
        try:
            download(url, path, e, progress=progress)
            return path
        except OfflineError as err:
            errors.append(str(err))
    raise OfflineError(f"could not download {e.file} ({key}): {'; '.join(errors)}; download it by hand and {where}")


def _open(url: str, start: int = 0):
    req = urllib.request.Request(url, headers={"User-Agent": "spiking-zoo"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(req, timeout=TIMEOUT)


def _gdrive_confirm_url(page: str, base: str) -> str | None:
    """Google Drive answers large files with an HTML 'virus scan' page whose form confirms the download."""
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"', page) or re.search(r'<form[^>]*action="([^"]+)"', page)
    if form:
        fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page))
        action = urllib.parse.urljoin(base, html.unescape(form.group(1)))
        return action + ("&" if "?" in action else "?") + urllib.parse.urlencode(fields)
    link = re.search(r'href="(/uc\?export=download[^"]*confirm=[^"]+)"', page)
    return urllib.parse.urljoin(base, html.unescape(link.group(1))) if link else None


def download(url: str, dest: Path, e: WeightsEntry | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``: resumable ``.part`` file, sha256 check, atomic rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / PARTIAL / (dest.name + ".part")  # outside the cache proper: never loaded
    part.parent.mkdir(exist_ok=True)
    e = e or WeightsEntry(key=dest.name, file=dest.name, format="")
    pages = interruptions = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        try:
            resp = _open(url, start)
        except urllib.error.HTTPError as err:
            if err.code == 416 and start:  # the .part is already complete (or bogus): verify below
                break
            raise OfflineError(f"{url} answered HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            raise OfflineError(f"network unreachable for {url} ({getattr(err, 'reason', err)})") from None
        with resp:
            if "text/html" in resp.headers.get("Content-Type", ""):
                pages += 1
                confirm = _gdrive_confirm_url(resp.read(1 << 20).decode("utf-8", "replace"), resp.geturl())
                if not confirm or pages > 3:
                    raise OfflineError(f"{url} returned a web page, not a file (quota exceeded or access denied?)")
                url = confirm
                continue
            if start and resp.status != 206:  # the server ignored the Range header: start over
                start = 0
            total = int(resp.headers.get("Content-Length", 0)) + start or None
            try:
                with open(part, "ab" if start else "wb") as f, tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                ) as bar:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException):
                pass  # interrupted: resume below
        if total is None or part.stat().st_size >= total:
            break
        interruptions += 1
        if interruptions > RETRIES:
            raise OfflineError(f"download of {dest.name} kept being interrupted; run the same command again to resume from {part}")
    try:
        verify(part, e)
    except WeightsError as err:
        part.unlink(missing_ok=True)
        part.with_name(part.name + ".sha256").unlink(missing_ok=True)
        raise WeightsError(f"download of {dest.name} failed verification ({err}); nothing was kept, try again") from None
    pin = part.with_name(part.name + ".sha256")
    if pin.exists():  # a hash pinned for an entry we could not verify: it moves with the file
        os.replace(pin, dest.with_name(dest.name + ".sha256"))
    os.replace(part, dest)
    return dest
