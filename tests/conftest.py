"""Shared test fixtures: a small registered model and a local HTTP file server."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import neurons
import zoo
from zoo import registry


class TinySNN(nn.Module):
    """Real-valued stem conv -> I-LIF -> spiking conv -> BN -> I-LIF -> spiking linear, T time steps."""

    def __init__(self, T: int = 2, classes: int = 5):
        super().__init__()
        self.T = T
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.lif1 = neurons.ILIF()
        self.conv = neurons.SpikeConv2d(4, 6, 3, stride=2, padding=1, source=self.lif1)
        self.bn = nn.BatchNorm2d(6)
        self.lif2 = neurons.ILIF()
        self.head = neurons.SpikeLinear(6 * 4 * 4, classes, source=self.lif2)

    def forward(self, x):
        T, B = self.T, x.shape[0]
        x = self.stem(x).unsqueeze(0).repeat(T, 1, 1, 1, 1)  # [T, B, C, H, W]
        x = self.lif1(x).flatten(0, 1)
        x = self.bn(self.conv(x)).unflatten(0, (T, B))
        x = self.lif2(x).flatten(0, 1)
        return self.head(x.flatten(1)).unflatten(0, (T, B)).mean(0)


if "tinysnn-test" not in registry._REGISTRY:
    registry._load_tasks()
    zoo.register("tinysnn-test", task="detection", paper="(test model)", input="image [B,3,8,8]",
                 input_size=(1, 3, 8, 8), T=2, D=4, neuron="ILIF",
                 metrics=[dict(dataset="none", metric="acc", value=1.0, source="paper")])(TinySNN)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    m = TinySNN()
    with torch.no_grad():
        m.stem.weight.mul_(4)  # make the neurons fire
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    headers_for: dict[str, dict] = {}
    drop_after: dict[str, int] = {}  # path -> bytes to send before dropping the connection (once)
    log: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path
        self.log.append((path, self.headers.get("Range")))
        if path not in self.files:
            self.send_error(404)
            return
        data = self.files[path]
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        for k, v in self.headers_for.get(path, {"Content-Type": "application/octet-stream"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.drop_after.pop(path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_server():
    """Serves ``server.files[path] = bytes`` on 127.0.0.1; yields (base_url, handler class)."""
    handler = type("Handler", (_Handler,), {"files": {}, "headers_for": {}, "drop_after": {}, "log": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def shared_zoo_home(tmp_path_factory) -> Path:
    """One zoo cache for the whole run, for tests that only need a converted model to exist (the tiny
    Shakespeare SDLLM takes a minute or two to convert on 2 cores; its conversion is tested on its own)."""
    return tmp_path_factory.mktemp("zoo_home_shared")


@pytest.fixture
def zoo_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "zoo_home"
    monkeypatch.setenv("ZOO_HOME", str(home))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    return home
