"""Pretrained weights: the manifest, the cache, and verified, resumable downloads.

* The manifest (``weights/manifest.toml``) lists each weight file: its sources
  (https URL, Google Drive file id, Hugging Face repo + file + revision), sha256,
  size and format (the model card names the converter of each format).
* Files live in a cache (``$ZOO_HOME``, default ``~/.cache/spiking-zoo``),
  written to ``.partial/NAME.part`` while downloading (resumed with an HTTP Range
  request after an interruption) and renamed into place atomically only after
  the sha256 matches.
* The sha256 is checked on every load, not only after download. Where the
  manifest has no hash yet (released files not yet verified by us), the hash of
  the first download is pinned in ``NAME.sha256`` beside the file and checked
  from then on.
* Trust on first use is a documented choice: where the manifest has no sha256,
  every download says so on stderr, and a transfer the zoo cannot prove
  complete (no Content-Length, no size or hash in the manifest, not chunked)
  is never pinned.
* Only ``https://`` is followed — from the manifest, from redirects and from
  any page or form the downloader parses (``http://127.0.0.1`` only where the
  manifest itself names it, for tests) — so no file from elsewhere (``file://``,
  another host over plain http) reaches the cache.
* One download per file at a time: a lock (``filelock``) beside the partial
  file, so two processes fetching one file both end with the verified file.
  Each download has an overall deadline (``ZOO_DOWNLOAD_DEADLINE`` seconds),
  besides a per-read timeout, so a stalled or dripping server cannot hang it.
* ``ZOO_OFFLINE=1`` (or an unreachable network) never downloads: it fails
  with a message naming the file and where to put it. Every failure is one
  line: a read-only cache names the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html.parser
import http.client
import os
import re
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .errors import OfflineError, WeightsError, ZooError, one_line
from .fileio import atomic_write_text

MANIFEST = Path(__file__).resolve().parent.parent / "weights" / "manifest.toml"
BUNDLED_DIR = MANIFEST.parent
GDRIVE_URL = "https://drive.google.com/uc?export=download&id={id}"
HF_URL = "{endpoint}/{repo}/resolve/{revision}/{file}"
CHUNK = 1 << 20
TIMEOUT = 15  # seconds a single read may wait
DEADLINE = float(os.environ.get("ZOO_DOWNLOAD_DEADLINE", 4 * 3600))  # seconds one download may take in all
LOCK_TIMEOUT = DEADLINE  # seconds to wait for another process downloading the same file
MAX_BYTES = 64 << 30  # a download with no size in the manifest stops here
PAGE_BYTES = 1 << 20  # the most of a web page the downloader reads
RETRIES = 5
PARTIAL = ".partial"  # unfinished downloads, kept for resuming, beside (not in) the cached files
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class WeightsEntry:
    key: str
    file: str  # file name in the cache (or under weights/ when bundled)
    format: str  # safetensors | torch | ultralytics | mmengine
    sha256: str = ""
    size: int = 0
    sources: list[dict] = field(default_factory=list)
    bundled: bool = False
    license: str = ""
    note: str = ""

    def urls(self) -> list[str]:
        out = []
        for src in self.sources:
            if "url" in src:
                out.append(src["url"])
            elif "gdrive" in src:
                out.append(GDRIVE_URL.format(id=urllib.parse.quote(str(src["gdrive"]), safe="")))
            elif "hf_repo" in src:
                endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
                q = lambda v: urllib.parse.quote(str(v), safe="/")  # noqa: E731
                out.append(HF_URL.format(endpoint=endpoint, repo=q(src["hf_repo"]),
                                         revision=q(src.get("revision", "main")), file=q(src.get("hf_file", ""))))
            elif "gdrive_folder" in src:
                continue  # a folder is not a file: documented for people, not downloadable
            else:
                raise ZooError(f"weights entry {self.key!r} has a source of unknown kind: {src}")
        return out


_FIELDS = {f.name for f in fields(WeightsEntry)} - {"key"}


def _check_entry(path: Path, key: str, v) -> WeightsEntry:
    bad = lambda why: ZooError(f"weights manifest {path}: entry {key!r} {why}")  # noqa: E731
    if not isinstance(v, dict):
        raise bad("is not a table")
    unknown = sorted(set(v) - set(_FIELDS))
    if unknown or "file" not in v or "format" not in v:
        raise bad(f"has unknown fields {unknown}" if unknown else "needs `file` and `format`")
    for name, kind in (("file", str), ("format", str), ("sha256", str), ("license", str),
                       ("note", str), ("size", int), ("bundled", bool), ("sources", list)):
        if name in v and not isinstance(v[name], kind):
            raise bad(f"has a {name} of the wrong type ({type(v[name]).__name__})")
    f = PurePosixPath(v["file"])
    if not v["file"] or f.is_absolute() or any(p in ("..", "") or p.startswith(".") for p in f.parts) or "\\" in v["file"]:
        raise bad(f"has file {v['file']!r}: it must be a relative name inside the cache (no '..', no hidden parts)")
    if v.get("sha256") and not SHA256.fullmatch(v["sha256"]):
        raise bad("has a sha256 that is not 64 lowercase hex digits")
    if v.get("size", 0) < 0 or not all(isinstance(s, dict) for s in v.get("sources", [])):
        raise bad("has a negative size or a source that is not a table")
    return WeightsEntry(key=key, **v)


def load_manifest(path: Path | None = None) -> dict[str, WeightsEntry]:
    path = Path(path) if path else MANIFEST
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ZooError(f"cannot read the weights manifest {path}: {one_line(e, 160)}") from None
    return {k: _check_entry(path, k, v) for k, v in raw.items()}


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


def read_pin(pin: Path, of: Path) -> str:
    """The sha256 pinned in ``pin`` for ``of`` ('' when there is none); a damaged pin is a one-line error."""
    try:
        text = pin.read_bytes().decode("ascii").strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError):
        text = None
    if text is None or not SHA256.fullmatch(text):
        raise WeightsError(f"the hash pinned for {of} in {pin} is damaged (not a sha256); delete both files and download again")
    return text


def verify(path: Path, e: WeightsEntry) -> Path:
    """Check ``path`` against the entry's size and sha256 (or the pinned hash); return it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} is not a file; delete it and download again (`zoo download`)")
    if e.size and path.stat().st_size != e.size:
        raise WeightsError(f"{path} has {path.stat().st_size} bytes, expected {e.size}: delete it and download again (`zoo download`)")
    pin = path.with_name(path.name + ".sha256")
    expected = e.sha256 or read_pin(pin, path)
    try:
        digest = sha256_file(path)
    except OSError as err:
        raise WeightsError(f"cannot read {path} ({err.strerror or err})") from None
    if expected and digest != expected:
        raise WeightsError(f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}...: the file is corrupt or not {e.key}; delete it and download again")
    if not expected and not e.bundled:  # bundled files carry their hash in the manifest
        atomic_write_text(pin, digest + "\n")
    return path


def local_path(e: WeightsEntry) -> Path:
    return BUNDLED_DIR / e.file if e.bundled else cache_dir() / e.file


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".zoo-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ZooError(f"the zoo cache folder {folder} is not writable ({err.strerror or err}); "
                       "make it writable or set ZOO_HOME to a writable folder") from None
    return folder


def fetch(key: str, progress: bool = True) -> Path:
    """The verified local path of weights ``key``, downloading it if needed (one process at a time)."""
    from filelock import FileLock, Timeout

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
    partial = _writable(path.parent / PARTIAL)
    try:
        with FileLock(str(partial / (path.name + ".lock")), timeout=LOCK_TIMEOUT):
            if path.exists():  # another process finished it while we waited
                return verify(path, e)
            errors = []
            for url in urls:
                try:
                    download(url, path, e, progress=progress)
                    return path
                except OfflineError as err:
                    errors.append(str(err))
    except Timeout:
        raise OfflineError(f"another process has been downloading {e.file} for {LOCK_TIMEOUT:.0f} s "
                           f"(lock {partial / (path.name + '.lock')}); wait for it or delete the lock") from None
    raise OfflineError(f"could not download {e.file} ({key}): {'; '.join(errors)}; download it by hand and {where}")


# ----------------------------------------------------------------------------- the transfer


def check_url(url: str, came_from: str | None = None) -> str:
    """``url`` if the downloader may follow it: https, or http on 127.0.0.1 reached from http on 127.0.0.1."""
    def local_http(u):
        p = urllib.parse.urlsplit(u)
        return p.scheme == "http" and p.hostname == "127.0.0.1"

    p = urllib.parse.urlsplit(url)
    if (p.scheme == "https" and p.hostname) or (local_http(url) and (came_from is None or local_http(came_from))):
        return url
    how = f" (a link from {one_line(came_from, 120)})" if came_from else ""
    raise OfflineError(f"refusing to download {one_line(url, 120)!r}{how}: only https:// URLs are followed")


class _Redirects(urllib.request.HTTPRedirectHandler):
    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI")
        if location:  # checked before urllib's own scheme test, which would only say "HTTP 302"
            check_url(urllib.parse.urljoin(req.full_url, location), req.full_url)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(urllib.parse.urljoin(req.full_url, newurl), req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener():
    """http(s) only: no file://, ftp:// or data: handlers, every redirect checked."""
    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
              urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(), _Redirects(),
              urllib.request.HTTPErrorProcessor()):
        opener.add_handler(h)
    return opener


def _open(url: str, start: int = 0, timeout: float = TIMEOUT):
    req = urllib.request.Request(check_url(url), headers={"User-Agent": "spiking-zoo"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return _opener().open(req, timeout=timeout)


class _Page(html.parser.HTMLParser):
    """The forms (action, hidden fields) and links of a web page."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[dict, dict]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a, {}))
        elif tag == "input" and self.forms and a.get("type") == "hidden" and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])


def _gdrive_confirm_url(page: str, base: str) -> str | None:
    """Google Drive answers large files with an HTML 'virus scan' page whose form confirms the download."""
    parser = _Page()
    try:
        parser.feed(page)
        parser.close()
    except Exception:  # html.parser is lenient; whatever it still rejects is no confirm page
        return None
    forms = [f for f in parser.forms if f[0].get("action")]
    forms.sort(key=lambda f: f[0].get("id") != "download-form")
    if forms:
        attrs, hidden = forms[0]
        action = urllib.parse.urljoin(base, attrs["action"])
        return check_url(action + ("&" if "?" in action else "?") + urllib.parse.urlencode(hidden), base)
    links = [h for h in parser.links if "export=download" in h and "confirm=" in h]
    return check_url(urllib.parse.urljoin(base, links[0]), base) if links else None


def _content_range_start(resp) -> int | None:
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (resp.headers.get("Content-Range") or "").strip())
    return int(m.group(1)) if m else None


def download(url: str, dest: Path, e: WeightsEntry | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``: resumable ``.part`` file, deadline, sha256 check, atomic rename.

    Callers that may run concurrently hold the lock :func:`fetch` takes.
    """
    dest = Path(dest)
    part = _writable(dest.parent / PARTIAL) / (dest.name + ".part")  # outside the cache proper: never loaded
    e = e or WeightsEntry(key=dest.name, file=dest.name, format="")
    check_url(url)
    part.with_name(part.name + ".sha256").unlink(missing_ok=True)  # only verify() below writes it
    pinned = "" if e.sha256 else read_pin(dest.with_name(dest.name + ".sha256"), dest)
    if pinned:  # downloaded before and pinned then: a new download must be the same file
        e = dataclasses.replace(e, sha256=pinned)
    elif not e.sha256:
        print(f"zoo: warning: the manifest has no sha256 for {e.file} ({e.key}): trusting this first download "
              f"from {url} and pinning its hash in {dest.name}.sha256 (checked on every later load)", file=sys.stderr)
    limit = e.size or MAX_BYTES
    deadline = time.monotonic() + DEADLINE
    pages = interruptions = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        left = deadline - time.monotonic()
        if left <= 0:
            raise OfflineError(f"download of {dest.name} from {url} stalled: not complete after {DEADLINE:g} s; "
                               f"run the same command again to resume from {part}")
        try:
            resp = _open(url, start, timeout=min(TIMEOUT, left))
        except urllib.error.HTTPError as err:
            if err.code == 416 and start:  # the .part is complete, or bogus: the server says how long the file is
                m = re.fullmatch(r"bytes \*/(\d+)", (err.headers.get("Content-Range") or "").strip())
                if m and int(m.group(1)) == start:
                    break
                part.unlink()
                continue
            raise OfflineError(f"{url} answered HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            raise OfflineError(f"network unreachable for {url} ({one_line(getattr(err, 'reason', err), 120)})") from None
        except (http.client.HTTPException, ValueError) as err:  # a malformed answer, or a URL with control characters
            raise OfflineError(f"{one_line(url, 120)} gave a malformed answer ({type(err).__name__}: {one_line(err, 120)})") from None
        with resp:
            if resp.headers.get_content_type() == "text/html":
                pages += 1
                try:
                    page = resp.read(PAGE_BYTES).decode("utf-8", "replace")
                except (OSError, http.client.HTTPException) as err:
                    raise OfflineError(f"{url} returned a web page that broke off ({type(err).__name__})") from None
                confirm = _gdrive_confirm_url(page, resp.geturl())
                if not confirm or pages > 3:
                    raise OfflineError(f"{url} returned a web page, not a file (quota exceeded or access denied?)")
                url = confirm
                continue
            if start and (resp.status != 206 or _content_range_start(resp) != start):
                start = 0  # the server ignored (or misanswered) the Range header: start over
            total = start + resp.length if resp.length is not None else (e.size or None)  # None: unknown
            if total is not None and total > limit:
                raise OfflineError(f"{url} announces {total} bytes for {dest.name}, the manifest "
                                   f"{'says ' + str(e.size) if e.size else 'allows at most ' + str(MAX_BYTES)}; nothing was kept")
            if resp.length is None and not resp.chunked and not (e.size or e.sha256):
                part.unlink(missing_ok=True)  # close-delimited: a cut connection looks exactly like the end
                raise OfflineError(f"{url} sends {dest.name} without a Content-Length and the manifest has no size or "
                                   "sha256, so a complete transfer cannot be told from a cut one; nothing was pinned")
            cut, size = _transfer(resp, part, start, total, limit, deadline, dest.name, progress)
        if size > limit:
            part.unlink()
            raise OfflineError(f"{url} sent more than {limit} bytes for {dest.name}; nothing was kept")
        if not cut and (total is None or size == total):
            break
        if total is not None and size > total:
            part.unlink()  # more than announced: start over
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
    try:
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        if pin.exists():  # a hash pinned for an entry we could not verify: it moves with the file
            os.replace(pin, dest.with_name(dest.name + ".sha256"))
        os.replace(part, dest)
    except OSError as err:
        raise ZooError(f"cannot move the download into {dest.parent} ({err.strerror or err}); is the cache writable?") from None
    return dest


def _transfer(resp, part: Path, start: int, total, limit: int, deadline: float, name: str, progress: bool):
    """Append ``resp`` to ``part`` until it ends, breaks, passes ``limit`` or the deadline: (interrupted?, size)."""
    cut = False
    try:
        f = open(part, "ab" if start else "wb")
    except OSError as err:
        raise ZooError(f"cannot write {part} ({err.strerror or err}); is the cache writable?") from None
    with f, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
        size = start
        while size <= limit:
            if time.monotonic() > deadline:
                cut = True
                break
            try:
                chunk = resp.read1(CHUNK)  # returns what has arrived: the deadline is checked between reads
            except (OSError, http.client.HTTPException):
                cut = True  # interrupted: resume
                break
            if not chunk:
                break
            try:
                f.write(chunk)
            except OSError as err:
                raise ZooError(f"cannot write {part} ({err.strerror or err}); free space or set ZOO_HOME elsewhere") from None
            size += len(chunk)
            bar.update(len(chunk))
    return cut, size
