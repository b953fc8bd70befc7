"""A hostile server and a hostile manifest: only https is followed, nothing unproven is pinned, one line each.

A raw HTTP server on 127.0.0.1 (http.server in a thread) answers each path
with a scripted response: no Content-Length, cut connections, chunked
transfers, stalls, redirects to other schemes, Google-Drive-like confirm pages.
"""

from __future__ import annotations

import hashlib
import http.server
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path

import pytest

from zoo import hub
from zoo.errors import OfflineError, WeightsError, ZooError

PAYLOAD = random.Random(0).randbytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Raw(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    log: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.log.append((self.path, self.headers.get("Range")))
        route = self.routes.get(self.path)
        try:
            if route is None:
                self.wfile.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def send(h, body: bytes = b"", status="200 OK", headers=None, length=True, cut=None, drip=None):
    head = {"Content-Type": "application/octet-stream", **(headers or {})}
    if length:
        head["Content-Length"] = str(len(body))
    h.wfile.write(f"HTTP/1.1 {status}\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items()) + b"\r\n")
    if drip:  # (bytes, seconds): a server that never stops but barely sends
        for i in range(0, len(body), drip[0]):
            h.wfile.write(body[i:i + drip[0]])
            h.wfile.flush()
            time.sleep(drip[1])
        return
    h.wfile.write(body if cut is None else body[:cut])


def chunked(h, body: bytes, cut=None):
    h.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent = 0
    for i in range(0, len(body), 50_000):
        piece = body[i:i + 50_000]
        h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        sent += len(piece)
        if cut is not None and sent >= cut:
            return  # connection closes mid-transfer, before the final 0-chunk
    h.wfile.write(b"0\r\n\r\n")


def ranged(data):
    """A file server that honours Range."""
    def route(h):
        rng = h.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start:
            send(h, data[start:], "206 Partial Content", {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        else:
            send(h, data)
    return route


@pytest.fixture
def server():
    handler = type("H", (_Raw,), {"routes": {}, "log": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    finally:
        srv.shutdown()
        srv.server_close()


def manifest(tmp_path, monkeypatch, url=None, sha=True, size=True, text=None, source=None):
    path = tmp_path / "manifest.toml"
    path.write_text(text if text is not None else (
        '[demo]\nfile = "demo.bin"\nformat = "torch"\n'
        f'sources = [{source or "{ url = " + chr(34) + url + chr(34) + " }"}]\n'
        + (f'sha256 = "{SHA}"\n' if sha else "") + (f"size = {len(PAYLOAD)}\n" if size else "")))
    monkeypatch.setattr(hub, "MANIFEST", path)
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path)
    return path


def cached(home: Path) -> list[str]:
    """What reached the cache proper (not the .partial folder, not locks)."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and hub.PARTIAL not in p.parts)


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# ----------------------------------------------------------------------------- schemes and links


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/w.bin", "http://example.com/w.bin",
                                 "data:application/octet-stream;base64,AAAA", "//127.0.0.1/w.bin"])
def test_manifest_url_of_another_scheme_is_refused(tmp_path, monkeypatch, zoo_home, url):
    manifest(tmp_path, monkeypatch, url, sha=False, size=False)
    with pytest.raises(OfflineError, match=r"refusing to download .*: only https:// URLs are followed") as err:
        hub.fetch("demo", progress=False)
    one_line(err)
    assert cached(zoo_home) == []


def test_hf_endpoint_of_another_scheme_is_refused(tmp_path, monkeypatch, zoo_home):
    monkeypatch.setenv("HF_ENDPOINT", "file:///etc")
    manifest(tmp_path, monkeypatch, source='{ hf_repo = "o/r", hf_file = "passwd" }', sha=False, size=False)
    with pytest.raises(OfflineError, match=r"refusing to download 'file:///etc/o/r/resolve/main/passwd'"):
        hub.fetch("demo", progress=False)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://example.com/x"])
def test_redirect_to_another_scheme_is_refused(tmp_path, monkeypatch, zoo_home, server, target):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: send(h, status="302 Found", headers={"Location": target})
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    with pytest.raises(OfflineError, match=r"refusing to download .*\(a link from http://127\.0\.0\.1.*only https://") as err:
        hub.fetch("demo", progress=False)
    one_line(err)
    assert cached(zoo_home) == []


def test_redirect_within_local_http_is_followed(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: send(h, status="301 Moved", headers={"Location": "/real.bin"})
    srv.routes["/real.bin"] = ranged(PAYLOAD)
    manifest(tmp_path, monkeypatch, base + "/w.bin")
    assert hub.fetch("demo", progress=False).read_bytes() == PAYLOAD


def test_no_downgrade_from_https():
    with pytest.raises(OfflineError, match="a link from https://drive.google.com/x"):
        hub.check_url("http://127.0.0.1:8000/file", came_from="https://drive.google.com/x")
    assert hub.check_url("https://drive.usercontent.google.com/download?id=1", "https://drive.google.com/x")


@pytest.mark.parametrize("page", [
    '<form id="download-form" action="file:///etc/passwd"><input type="hidden" name="id" value="1"></form>',
    '<form id="download-form" action="javascript:alert(1)"></form>',
    '<form action="http://example.com/download"><input type="hidden" name="confirm" value="t"></form>',
    '<a href="ftp://example.com/uc?export=download&amp;confirm=t">download anyway</a>',
])
def test_page_links_and_forms_to_other_schemes_are_refused(tmp_path, monkeypatch, zoo_home, server, page):
    base, srv = server
    srv.routes["/uc?export=download&id=F"] = lambda h: send(h, page.encode(), headers={"Content-Type": "text/html"})
    monkeypatch.setattr(hub, "GDRIVE_URL", base + "/uc?export=download&id={id}")
    manifest(tmp_path, monkeypatch, source='{ gdrive = "F" }', sha=False, size=False)
    with pytest.raises(OfflineError, match=r"refusing to download .*a link from http://127\.0\.0\.1") as err:
        hub.fetch("demo", progress=False)
    one_line(err)
    assert cached(zoo_home) == []


def test_gdrive_page_with_hostile_markup_is_parsed_as_html(tmp_path, monkeypatch, zoo_home, server):
    """Attributes in any order and quoting, entities, junk around: the form is found by an HTML parser."""
    base, srv = server
    page = ("<html><form action='/nope'></form><div><<<input type=hidden name=x value=1>"
            f"<form method=get action='{base}/dl?a=1&amp;b=2' id='download-form'>"
            "<input value='t' name='confirm' type='hidden'><input type='text' name='ignored' value='z'></form>")
    srv.routes["/uc?export=download&id=F"] = lambda h: send(h, page.encode(), headers={"Content-Type": "text/html; charset=utf-8"})
    srv.routes["/dl?a=1&b=2&confirm=t"] = ranged(PAYLOAD)
    monkeypatch.setattr(hub, "GDRIVE_URL", base + "/uc?export=download&id={id}")
    manifest(tmp_path, monkeypatch, source='{ gdrive = "F" }')
    assert hub.fetch("demo", progress=False).read_bytes() == PAYLOAD


# ----------------------------------------------------------------------------- incomplete transfers


def test_no_content_length_unverifiable_is_never_pinned(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: send(h, PAYLOAD, length=False, cut=1000)  # ends early; looks like the end
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    with pytest.raises(OfflineError, match="without a Content-Length and the manifest has no size or sha256.*nothing was pinned") as err:
        hub.fetch("demo", progress=False)
    one_line(err)
    assert cached(zoo_home) == [] and not list(zoo_home.rglob("*.part")) and not list(zoo_home.rglob("*.sha256"))


def test_no_content_length_cut_with_size_known_resumes(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    calls = []

    def route(h):
        calls.append(h.headers.get("Range"))
        if len(calls) == 1:
            send(h, PAYLOAD, length=False, cut=1000)
        else:
            ranged(PAYLOAD)(h)
    srv.routes["/w.bin"] = route
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=True)
    assert hub.fetch("demo", progress=False).read_bytes() == PAYLOAD and calls == [None, "bytes=1000-"]


def test_no_content_length_verified_by_hash_is_kept(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: send(h, PAYLOAD, length=False)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=True, size=False)
    assert hub.fetch("demo", progress=False).read_bytes() == PAYLOAD


def test_chunked_transfer_cut_is_incomplete(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: chunked(h, PAYLOAD, cut=100_000)
    monkeypatch.setattr(hub, "RETRIES", 1)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    with pytest.raises(OfflineError, match="kept being interrupted; run the same command again to resume"):
        hub.fetch("demo", progress=False)
    assert cached(zoo_home) == []


def test_chunked_transfer_complete_is_pinned(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: chunked(h, PAYLOAD)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    path = hub.fetch("demo", progress=False)
    assert path.read_bytes() == PAYLOAD and (zoo_home / "demo.bin.sha256").read_text().strip() == SHA


def test_invalid_content_length_is_one_line(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: send(h, PAYLOAD, length=False, headers={"Content-Length": "lots"})
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    with pytest.raises(OfflineError, match="without a Content-Length"):
        hub.fetch("demo", progress=False)


def test_announced_size_beyond_the_manifest_is_refused_before_reading(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: send(h, PAYLOAD + b"x" * 1000)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=True)
    with pytest.raises(OfflineError, match=f"announces {len(PAYLOAD) + 1000} bytes for demo.bin, the manifest says {len(PAYLOAD)}"):
        hub.fetch("demo", progress=False)
    assert cached(zoo_home) == []


def test_endless_body_stops_at_the_manifest_size(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: send(h, PAYLOAD * 4, length=False)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=True)
    with pytest.raises(OfflineError, match=f"sent more than {len(PAYLOAD)} bytes for demo.bin; nothing was kept"):
        hub.fetch("demo", progress=False)
    assert cached(zoo_home) == [] and not list(zoo_home.rglob("*.part"))


def test_partial_answer_at_the_wrong_offset_starts_over(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    (zoo_home / hub.PARTIAL).mkdir(parents=True)
    (zoo_home / hub.PARTIAL / "demo.bin.part").write_bytes(PAYLOAD[:5000])
    srv.routes["/w.bin"] = lambda h: send(h, PAYLOAD, "206 Partial Content",  # claims a range, sends from 0
                                          {"Content-Range": f"bytes 0-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"})
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    assert hub.fetch("demo", progress=False).read_bytes() == PAYLOAD


def test_stale_partial_longer_than_the_file_starts_over(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    (zoo_home / hub.PARTIAL).mkdir(parents=True)
    (zoo_home / hub.PARTIAL / "demo.bin.part").write_bytes(b"junk" * 100_000)  # 416 for its range

    def route(h):
        if h.headers.get("Range"):
            send(h, status="416 Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(PAYLOAD)}"})
        else:
            send(h, PAYLOAD)
    srv.routes["/w.bin"] = route
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    assert hub.fetch("demo", progress=False).read_bytes() == PAYLOAD
    assert (zoo_home / "demo.bin.sha256").read_text().strip() == SHA


# ----------------------------------------------------------------------------- stalls and deadlines


def test_stalled_server_times_out(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: (send(h, PAYLOAD, cut=10), h.wfile.flush(), time.sleep(3))
    monkeypatch.setattr(hub, "TIMEOUT", 0.2)
    monkeypatch.setattr(hub, "RETRIES", 1)
    manifest(tmp_path, monkeypatch, base + "/w.bin")
    with pytest.raises(OfflineError, match="kept being interrupted"):
        hub.fetch("demo", progress=False)
    assert cached(zoo_home) == []


def test_dripping_server_hits_the_deadline(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: send(h, PAYLOAD, drip=(100, 0.02))  # always just in time for the read timeout
    monkeypatch.setattr(hub, "TIMEOUT", 1.0)
    monkeypatch.setattr(hub, "DEADLINE", 0.5)
    manifest(tmp_path, monkeypatch, base + "/w.bin")
    with pytest.raises(OfflineError, match=r"download of demo.bin from .* stalled: not complete after 0.5 s; run the same command again to resume") as err:
        hub.fetch("demo", progress=False)
    one_line(err)
    assert cached(zoo_home) == []


# ----------------------------------------------------------------------------- trust on first use, pins, manifest


def test_entry_without_sha256_says_so_on_every_download(tmp_path, monkeypatch, zoo_home, server, capsys):
    base, srv = server
    srv.routes["/w.bin"] = ranged(PAYLOAD)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False)
    for _ in range(2):
        path = hub.fetch("demo", progress=False)
        path.unlink()
        path.with_name(path.name + ".sha256").unlink()
    assert capsys.readouterr().err.count("the manifest has no sha256 for demo.bin (demo): trusting this first download") == 2
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=True)
    hub.fetch("demo", progress=False)
    assert "no sha256" not in capsys.readouterr().err


@pytest.mark.parametrize("pin", [b"\xff\xfe\x00garbage", b"not a hash\n", b"", b"A" * 64])
def test_damaged_pin_is_one_line_error(tmp_path, monkeypatch, zoo_home, pin):
    manifest(tmp_path, monkeypatch, "https://example.invalid/w.bin", sha=False, size=False)
    zoo_home.mkdir()
    (zoo_home / "demo.bin").write_bytes(PAYLOAD)
    (zoo_home / "demo.bin.sha256").write_bytes(pin)
    with pytest.raises(WeightsError, match=r"the hash pinned for .*demo.bin in .*demo.bin.sha256 is damaged") as err:
        hub.fetch("demo", progress=False)
    one_line(err)


def test_read_only_cache_names_the_folder(tmp_path, monkeypatch, server):
    base, srv = server
    srv.routes["/w.bin"] = ranged(PAYLOAD)
    manifest(tmp_path, monkeypatch, base + "/w.bin")
    if os.geteuid() != 0:
        home = tmp_path / "ro"
        home.mkdir()
        home.chmod(0o555)
    else:  # root writes through permission bits: use a folder no one may write
        home = Path("/sys")
        if not home.is_dir():
            pytest.skip("no unwritable folder to test with")
    monkeypatch.setenv("ZOO_HOME", str(home))
    with pytest.raises(ZooError, match=rf"the zoo cache folder {home}/\.partial is not writable \(.*\); make it writable or set ZOO_HOME") as err:
        hub.fetch("demo", progress=False)
    one_line(err)
    assert srv.log == []  # refused before downloading anything


@pytest.mark.parametrize("text,match", [
    ('[demo]\nfile = "../../outside.bin"\nformat = "torch"\n', "must be a relative name inside the cache"),
    ('[demo]\nfile = "/etc/passwd"\nformat = "torch"\n', "must be a relative name inside the cache"),
    ('[demo]\nfile = ".partial/x.part"\nformat = "torch"\n', "no hidden parts"),
    ('[demo]\nfile = "d.bin"\nformat = "torch"\nexec = "rm -rf /"\n', r"unknown fields \['exec'\]"),
    ('[demo]\nfile = "d.bin"\nformat = "torch"\nsize = "big"\n', "size of the wrong type"),
    ('[demo]\nfile = "d.bin"\nformat = "torch"\nsha256 = "abc"\n', "not 64 lowercase hex digits"),
    ('demo = 3\n', "is not a table"),
    ('[demo\n', "cannot read the weights manifest"),
])
def test_hostile_manifest_is_one_line_error(tmp_path, monkeypatch, zoo_home, text, match):
    manifest(tmp_path, monkeypatch, text=text)
    with pytest.raises(ZooError, match=match) as err:
        hub.fetch("demo", progress=False)
    one_line(err)


def test_unverified_first_download_then_tampered_file_is_caught(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    srv.routes["/w.bin"] = ranged(PAYLOAD)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    path = hub.fetch("demo", progress=False)
    path.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF]))
    with pytest.raises(WeightsError, match="sha256"):
        hub.fetch("demo", progress=False)


# ----------------------------------------------------------------------------- two processes, one file


def _worker(manifest_path: str, home: str, ready: str, out):
    os.environ["ZOO_HOME"] = home
    from zoo import hub as h

    h.MANIFEST = Path(manifest_path)
    Path(ready, f"ready-{os.getpid()}").touch()
    try:
        path = h.fetch("demo", progress=False)
        out.put(("ok", hashlib.sha256(path.read_bytes()).hexdigest()))
    except BaseException as e:  # reported to the test
        out.put(("error", repr(e)))


def test_two_processes_fetching_one_file_both_get_it_verified(tmp_path, monkeypatch, zoo_home, server):
    base, srv = server
    ready = tmp_path / "ready"
    ready.mkdir()

    def route(h):  # hold the first answer until both processes are in fetch: without a lock both would GET
        end = time.monotonic() + 20
        while len(list(ready.iterdir())) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)
        send(h, PAYLOAD, drip=(50_000, 0.02))
    srv.routes["/w.bin"] = route
    path = manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), str(zoo_home), str(ready), out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [("ok", SHA), ("ok", SHA)]
    assert [p for p, _ in srv.log] == ["/w.bin"]  # one transfer; the other process waited and verified
    assert cached(zoo_home) == ["demo.bin", "demo.bin.sha256"]
    assert (zoo_home / "demo.bin.sha256").read_text().strip() == SHA and not list(zoo_home.rglob("*.part"))


@pytest.mark.parametrize("answer,match", [
    (b"HELLO THERE\r\n\r\n", "gave a malformed answer"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n", "gave a malformed answer"),
    (b"HTTP/1.1 302 Found\r\nLocation: https://a\x01b/ x\r\n\r\n", "malformed answer|refusing to download"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 9999\r\n\r\n<html><form", "web page"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", "interrupted"),
])
def test_malformed_answers_are_one_line(tmp_path, monkeypatch, zoo_home, server, answer, match):
    base, srv = server
    srv.routes["/w.bin"] = lambda h: h.wfile.write(answer)
    monkeypatch.setattr(hub, "RETRIES", 0)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    with pytest.raises(OfflineError, match=match) as err:
        hub.fetch("demo", progress=False)
    one_line(err)
    assert cached(zoo_home) == []


def test_redownload_must_match_the_first_use_pin(tmp_path, monkeypatch, zoo_home, server, capsys):
    """Trust on first use: once pinned, a later download (the file was deleted) must be the same file."""
    base, srv = server
    srv.routes["/w.bin"] = ranged(PAYLOAD)
    manifest(tmp_path, monkeypatch, base + "/w.bin", sha=False, size=False)
    hub.fetch("demo", progress=False).unlink()
    srv.routes["/w.bin"] = ranged(PAYLOAD[::-1])  # the source now serves something else
    with pytest.raises(WeightsError, match="failed verification.*expected f5e9677bbd305f63"):
        hub.fetch("demo", progress=False)
    assert cached(zoo_home) == ["demo.bin.sha256"] and (zoo_home / "demo.bin.sha256").read_text().strip() == SHA
    assert capsys.readouterr().err.count("trusting this first download") == 1
