"""Downloads from a 127.0.0.1 server: verified, resumed, atomic, offline-aware."""

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zoo import hub
from zoo.errors import OfflineError, WeightsError


@pytest.fixture
def payload(tmp_path):
    path = tmp_path / "src.safetensors"
    save_file({"w": torch.randn(256, 256, generator=torch.Generator().manual_seed(0))}, str(path))
    return path.read_bytes()


def _data_files(home):
    """Files under the cache, but the (empty) download locks."""
    return [p.relative_to(home) for p in home.rglob("*") if p.is_file() and p.suffix != ".lock"]


def _manifest(tmp_path, monkeypatch, text):
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    monkeypatch.setattr(hub, "MANIFEST", path)
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path)
    return path


def _entry(url, data, sha=True, size=True, extra=""):
    return (f'[demo]\nfile = "demo.safetensors"\nformat = "safetensors"\n'
            f'sources = [{{ url = "{url}" }}]\n'
            + (f'sha256 = "{hashlib.sha256(data).hexdigest()}"\n' if sha else "")
            + (f"size = {len(data)}\n" if size else "") + extra)


def test_download_verify_and_cache(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    server.files["/w.safetensors"] = payload
    _manifest(tmp_path, monkeypatch, _entry(base + "/w.safetensors", payload))
    path = hub.fetch("demo", progress=False)
    assert path == zoo_home / "demo.safetensors" and path.read_bytes() == payload
    assert not list(zoo_home.rglob("*.part"))
    n = len(server.log)
    assert hub.fetch("demo", progress=False) == path and len(server.log) == n  # cached: no request


def test_wrong_hash_leaves_nothing(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    server.files["/w.safetensors"] = payload[:-10] + b"0123456789"
    _manifest(tmp_path, monkeypatch, _entry(base + "/w.safetensors", payload))
    with pytest.raises(WeightsError, match="failed verification"):
        hub.fetch("demo", progress=False)
    assert not _data_files(zoo_home)  # nothing half-written kept anywhere


def test_interrupted_download_resumes(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    server.files["/w.safetensors"] = payload
    server.drop_after["/w.safetensors"] = 100_000
    _manifest(tmp_path, monkeypatch, _entry(base + "/w.safetensors", payload))
    path = hub.fetch("demo", progress=False)
    assert path.read_bytes() == payload
    ranges = [r for p, r in server.log]
    assert ranges[0] is None and ranges[1] == "bytes=100000-"


def test_resume_from_partial_file_of_earlier_run(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    server.files["/w.safetensors"] = payload
    (zoo_home / hub.PARTIAL).mkdir(parents=True)
    (zoo_home / hub.PARTIAL / "demo.safetensors.part").write_bytes(payload[:5000])
    _manifest(tmp_path, monkeypatch, _entry(base + "/w.safetensors", payload))
    assert hub.fetch("demo", progress=False).read_bytes() == payload
    assert server.log == [("/w.safetensors", "bytes=5000-")]


def test_truncated_download_without_hash_is_not_pinned(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    server.files["/w.safetensors"] = payload
    for _ in range(hub.RETRIES + 1):
        server.drop_after["/w.safetensors"] = 10  # the server keeps dropping
    _manifest(tmp_path, monkeypatch, _entry(base + "/w.safetensors", payload, sha=False, size=False))
    monkeypatch.setattr(hub, "RETRIES", 0)
    with pytest.raises(OfflineError, match="interrupted.*resume"):
        hub.fetch("demo", progress=False)
    # nothing in the cache: only the partial file, set aside for resuming, which is never loaded
    assert _data_files(zoo_home) == [Path(hub.PARTIAL) / "demo.safetensors.part"]


def test_unverified_entry_pins_first_hash_and_checks_every_load(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    server.files["/w.safetensors"] = payload
    _manifest(tmp_path, monkeypatch, _entry(base + "/w.safetensors", payload, sha=False, size=False))
    path = hub.fetch("demo", progress=False)
    pin = path.with_name(path.name + ".sha256")
    assert pin.read_text().strip() == hashlib.sha256(payload).hexdigest()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # corrupted on disk after download
    with pytest.raises(WeightsError, match="sha256"):
        hub.fetch("demo", progress=False)


def test_gdrive_confirmation_page(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    page = (f'<html><form id="download-form" action="{base}/download" method="get">'
            '<input type="hidden" name="id" value="FILEID"><input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="abc"></form></html>')
    server.files["/uc?export=download&id=FILEID"] = page.encode()
    server.headers_for["/uc?export=download&id=FILEID"] = {"Content-Type": "text/html; charset=utf-8"}
    server.files["/download?id=FILEID&export=download&confirm=t&uuid=abc"] = payload
    monkeypatch.setattr(hub, "GDRIVE_URL", base + "/uc?export=download&id={id}")
    text = _entry("x", payload).replace('{ url = "x" }', '{ gdrive = "FILEID" }')
    _manifest(tmp_path, monkeypatch, text)
    assert hub.fetch("demo", progress=False).read_bytes() == payload


def test_huggingface_source(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    server.files["/org/repo/resolve/abc123/sub/w.safetensors"] = payload
    monkeypatch.setenv("HF_ENDPOINT", base)
    text = _entry("x", payload).replace('{ url = "x" }', '{ hf_repo = "org/repo", hf_file = "sub/w.safetensors", revision = "abc123" }')
    _manifest(tmp_path, monkeypatch, text)
    assert hub.fetch("demo", progress=False).read_bytes() == payload


def test_offline_mode_names_file_and_place(tmp_path, monkeypatch, zoo_home, http_server, payload):
    base, server = http_server
    _manifest(tmp_path, monkeypatch, _entry(base + "/w.safetensors", payload))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"ZOO_OFFLINE.*demo.safetensors.*put it at"):
        hub.fetch("demo", progress=False)
    assert server.log == []


def test_unreachable_network_fails_with_advice(tmp_path, monkeypatch, zoo_home, payload):
    _manifest(tmp_path, monkeypatch, _entry("http://127.0.0.1:9/w.safetensors", payload))  # port 9: closed
    with pytest.raises(OfflineError, match=r"unreachable.*put it at"):
        hub.fetch("demo", progress=False)


def test_folder_source_is_explained(tmp_path, monkeypatch, zoo_home):
    _manifest(tmp_path, monkeypatch, '[demo]\nfile = "d.pt"\nformat = "ultralytics"\n'
              'sources = [{ gdrive_folder = "F" }]\nnote = "open the folder"\n')
    with pytest.raises(OfflineError, match="open the folder.*put it at"):
        hub.fetch("demo")


def test_real_manifest_parses():
    manifest = hub.load_manifest()
    assert "spikeyolo-coco-69m" in manifest
    for e in manifest.values():
        e.urls()  # every source is of a known kind
        assert e.format in ("ultralytics", "torch", "mmengine", "safetensors", "tar.gz")  # tar.gz: a data archive
