"""Shared set-up of the `vatt serve` tests: an index written with known vectors, thumbnails and media files from
mediagen, a real uvicorn server in a thread, and the expectations computed here (float64 cosine rankings)."""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mediagen import draw_counter, make_audio_only, make_bad_files, make_video
from safetensors.numpy import load_file

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from vattcli.api import build_model, load_model, load_tokenizer  # noqa: E402
from vattcli.checkpoints import save_checkpoint  # noqa: E402
from vattcli.config import dump_yaml, load_config  # noqa: E402
from vattcli.data.text import train_tokenizer  # noqa: E402
from vattcli.data.windows import jpeg_thumbnail  # noqa: E402
from vattcli.eval.query import clip_spec_from_checkpoint  # noqa: E402
from vattcli.retrieval.index import RetrievalIndex  # noqa: E402
from vattcli.retrieval.store import IndexContent  # noqa: E402
from vattcli.serve.app import LOOPBACK_HOSTS, create_app  # noqa: E402
from vattcli.serve.service import Limits, SearchService  # noqa: E402
from vattcli.train.config import PretrainConfig  # noqa: E402

CAPTIONS = [f"a {c} {s} moving {m}" for c in ("red", "green", "blue") for s in ("square", "circle")
            for m in ("left", "right")]
LIMIT = 300_000  # bytes of a query file the test server accepts
VATT = Path(sys.executable).parent / "vatt"


def serve_command() -> list[str]:
    """`vatt serve` as a subprocess command line (the installed entry point)."""
    return [str(VATT), "serve"]


def make_checkpoint(root: Path) -> Path:
    tokenizer = train_tokenizer(CAPTIONS * 4, root / "sp", vocab_size=24)
    torch.manual_seed(0)
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", ["data.train={s: synthetic}"])
    return save_checkpoint(root / "run", 1, build_model(cfg.model), config=dump_yaml(cfg), tokenizer=tokenizer)


def unit(rng: np.random.Generator, n: int, d: int) -> torch.Tensor:
    v = rng.normal(size=(n, d))
    return torch.tensor(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=torch.float32)


def write_index(folder: Path, ckpt: Path, media: Path) -> dict:
    """Sources: a.mp4, sub/b.mp4, c.m4a (audio only), gone.mp4, changed.mp4 and a skipped bad.mp4. Items: two
    windows of a, one of b (captioned), two of c (S_va only)."""
    (media / "sub").mkdir(parents=True)
    files = {"a": make_video(media / "a.mp4", duration=2.0, audio_rate=16000).path,
             "b": make_video(media / "sub" / "b.mp4", duration=1.0, size=(48, 64), fps=15).path,
             "c": make_audio_only(media / "c.m4a", duration=2.0, rate=16000),
             "gone": make_video(media / "gone.mp4", duration=1.0, audio_rate=None).path,
             "changed": make_video(media / "changed.mp4", duration=1.0, audio_rate=None).path}
    sources = [{"path": str(p), "size": p.stat().st_size, "mtime": p.stat().st_mtime, "duration": 2.0,
                "has_video": name != "c", "has_audio": name in ("a", "b", "c")} for name, p in files.items()]
    sources.append({"path": str(media / "bad.mp4"), "skipped": "corrupt", "message": "not a media file"})
    spans = [(0, 0.0, 0.8), (0, 0.8, 1.6), (1, 0.0, 0.8), (2, 0.0, 0.8), (2, 0.8, 1.6)]
    items = [{"key": f"{Path(sources[s]['path']).name}@{a:.2f}", "source": sources[s]["path"], "source_id": s,
              "start": a, "end": b} for s, a, b in spans]
    items[2]["caption"] = "a blue circle moving left"
    thumbs = [jpeg_thumbnail(draw_counter(100 + i, 64, 96)) if s != 2 else None for i, (s, _, _) in enumerate(spans)]
    rng = np.random.default_rng(7)
    vt, va = unit(rng, 3, 32), unit(rng, 5, 64)
    content = IndexContent(items, {"vt": vt, "va": va}, {"vt": torch.arange(3), "va": torch.arange(5)}, thumbs,
                           sources)
    RetrievalIndex.write(folder, content, ckpt=ckpt, tokenizer_sha256=load_tokenizer(ckpt).sha256,
                         model_name="vatt-tiny", settings={"root": str(media), "window": 0.8, "stride": 0.8})
    return {"files": files, "items": items, "thumbs": thumbs}


class Server:
    """A uvicorn server in a thread, on a socket bound here (port 0: a free one)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the test server did not start"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, **kw) -> tuple[int, dict]:
        status, headers, body = self.request(method, path, **kw)
        assert headers["content-type"] == "application/json", (status, body[:200])
        return status, json.loads(body)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "vattTestBoundary7MA4YWxk") -> tuple:
    """A multipart/form-data body of (field, filename or None, data) parts, and its headers."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    ckpt = make_checkpoint(root)
    written = write_index(root / "index", ckpt, root / "media")
    uploads, bad = root / "uploads", root / "bad"
    uploads.mkdir()
    bad.mkdir()
    service = SearchService.open(str(root / "index"), limits=Limits(max_upload=LIMIT))
    server = Server(create_app(service, upload_dir=uploads, allowed_hosts=LOOPBACK_HOSTS))
    stored = load_file(str(root / "index" / "embeddings.safetensors"))
    yield {"root": root, "ckpt": ckpt, "server": server, "uploads": uploads, "stored": stored, **written,
           "model": load_model(ckpt), "spec": clip_spec_from_checkpoint(ckpt), "bad": make_bad_files(bad)}
    server.stop()


def expected(world: dict, space: str, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(item, cosine) of the k best rows of ``space``, in float64."""
    matrix = world["stored"][f"video_{space}"].astype(np.float64)
    rows = world["stored"][f"rows_{space}"]
    scores = matrix @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(rows[i]), float(scores[i])) for i in order]


NAMES = {0: "a.mp4", 1: "sub/b.mp4", 2: "c.m4a"}  # as the API must show them: relative to the indexed folder


def check_results(world: dict, results: list[dict], want: list[tuple[int, float]]) -> None:
    assert [r["rank"] for r in results] == list(range(1, len(want) + 1))
    for result, (item, score) in zip(results, want):
        source = world["items"][item]["source_id"]
        expected_keys = {"rank", "score", "key", "source", "start", "end", "thumbnail", "media", "kind"}
        if item == 2:
            expected_keys.add("caption")
            assert result["caption"] == "a blue circle moving left"
        assert set(result) == expected_keys
        assert result["key"] == world["items"][item]["key"]
        assert result["score"] == pytest.approx(score, abs=1e-5)
        assert (result["source"], result["start"], result["end"]) == (NAMES[source], world["items"][item]["start"],
                                                                      world["items"][item]["end"])
        assert result["thumbnail"] == (None if source == 2 else f"/thumb/{item}")
        assert result["media"] == f"/media/{source}"
        assert result["kind"] == ("audio" if source == 2 else "video")


class Running:
    """`vatt serve ARGS` as a subprocess; ``url`` once it prints where it listens, its stderr lines kept."""

    def __init__(self, args: list[str], env: dict | None = None) -> None:
        self.proc = subprocess.Popen(serve_command() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.url: str | None = None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if " at http://" in line:
                self.url = line.split(" at ", 1)[1].split()[0]
                break

    def get(self, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
        port = int(self.url.rstrip("/").rsplit(":", 1)[1])
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, list[str]]:
        """Send ``sig``; the exit code and all of stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, rest = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, self.lines + rest.splitlines()
