"""Retrieval indexes and `vatt retrieve`: exact search on planted embeddings (checked against float64 cosines
computed here), the index folder round trip, refusals (other checkpoint, missing name), query encoding of real
media files (counter video / time tone from mediagen, so the window read can be checked), and the CLI end to end."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from mediagen import audio_time, make_video, read_counter, write_tone_file
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from vattcli.api import build_model, load_model
from vattcli.commands.retrieve import retrieve
from vattcli.config import dump_yaml, load_config
from vattcli.data.pipeline import ClipSpec
from vattcli.data.shards import ShardWriter
from vattcli.data.text import TextTokenizer, train_tokenizer
from vattcli.errors import VattError
from vattcli.eval.embed import Embeddings
from vattcli.retrieval.index import RetrievalIndex, resolve_index
from vattcli.eval.query import encode_audio_file, encode_video_file
from vattcli.checkpoints import save_checkpoint
from vattcli.train.config import PretrainConfig

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["square", "circle", "triangle"]
MOTIONS = ["left", "right", "up", "down"]
CAPTIONS = [f"a {c} {s} moving {m}" for c, s, m in itertools.product(COLOURS, SHAPES, MOTIONS)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_checkpoint(run: Path, seed: int, tokenizer: Path | None) -> Path:
    torch.manual_seed(seed)
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", ["data.train={s: synthetic}"])
    return save_checkpoint(run, 1, build_model(cfg.model), config=dump_yaml(cfg), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("retrieval")
    tok = train_tokenizer(CAPTIONS * 4, root / "sp", vocab_size=64)
    return {"tokenizer": tok, "ckpt": make_checkpoint(root / "run", 0, tok),
            "other": make_checkpoint(root / "other", 1, tok)}


def planted(n: int = 40, d_vt: int = 32, d_va: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Unit rows in float64: the first rows are basis vectors, the rest random directions."""
    rng = np.random.default_rng(seed)
    vt, va = rng.normal(size=(n, d_vt)), rng.normal(size=(n, d_va))
    vt[:3], va[:3] = np.eye(d_vt)[:3], np.eye(d_va)[:3]
    vt /= np.linalg.norm(vt, axis=1, keepdims=True)
    va /= np.linalg.norm(va, axis=1, keepdims=True)
    meta = [{"key": f"clip{i:03d}", "source": f"videos/v{i % 7}.mp4", "start": float(i), "end": i + 3.2,
             "captions": [CAPTIONS[i % len(CAPTIONS)], "a neighbour caption"], "dataset": "toy", "fps": 10.0}
            for i in range(n)]
    return vt, va, meta


def embeddings(vt: np.ndarray, va: np.ndarray, meta: list) -> Embeddings:
    n = len(meta)
    return Embeddings(torch.tensor(vt, dtype=torch.float32), torch.tensor(va, dtype=torch.float32),
                      torch.zeros(n, vt.shape[1]), torch.zeros(n, dtype=torch.bool), meta)


def build(folder: Path, ckpt: Path, seed: int = 0, tokenizer_sha256: str = "t" * 64,
          **kw) -> tuple[RetrievalIndex, np.ndarray, np.ndarray, list]:
    vt, va, meta = planted(seed=seed, **kw)
    index = RetrievalIndex.build(folder, embeddings(vt, va, meta), ckpt=ckpt, tokenizer_sha256=tokenizer_sha256,
                                 model_name="vatt-tiny")
    return index, vt, va, meta


def expected_order(matrix: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = matrix @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")
    return order, scores[order]


# ---------------------------------------------------------------------------------------------- search


def test_query_equal_to_item_7_ranks_it_first_and_the_rest_by_cosine(world, tmp_path):
    index, vt, va, _ = build(tmp_path / "idx", world["ckpt"])
    for space, matrix in (("vt", vt), ("va", va)):
        hits = index.search(torch.tensor(matrix[7] * 3.0), space=space, top_k=len(matrix))  # unnormalised query
        assert hits[0].item["key"] == "clip007" and hits[0].rank == 1
        assert hits[0].score == pytest.approx(1.0, abs=1e-6)
        order, scores = expected_order(matrix, matrix[7])
        assert [h.item["key"] for h in hits] == [f"clip{i:03d}" for i in order]
        assert [h.rank for h in hits] == list(range(1, len(matrix) + 1))
        np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-6)


def test_basis_vector_query_scores_are_the_items_coordinates(world, tmp_path):
    index, vt, _, _ = build(tmp_path / "idx", world["ckpt"])
    query = np.zeros(vt.shape[1])
    query[5] = 1.0
    hits = index.search(torch.tensor(query), top_k=3)
    top = np.argsort(-vt[:, 5])[:3]
    assert [h.item["key"] for h in hits] == [f"clip{i:03d}" for i in top]
    np.testing.assert_allclose([h.score for h in hits], vt[top, 5], atol=1e-6)


def test_batch_of_queries_gives_one_list_per_query(world, tmp_path):
    index, vt, _, _ = build(tmp_path / "idx", world["ckpt"])
    queries = np.random.default_rng(3).normal(size=(4, vt.shape[1]))
    batch = index.search(torch.tensor(queries, dtype=torch.float32), top_k=5)
    assert len(batch) == 4
    for q, hits in zip(queries, batch):
        order, scores = expected_order(vt, q)
        assert [h.item["key"] for h in hits] == [f"clip{i:03d}" for i in order[:5]]
        np.testing.assert_allclose([h.score for h in hits], scores[:5], atol=1e-5)


def test_search_refuses_wrong_dimension_and_space(world, tmp_path):
    index, _, _, _ = build(tmp_path / "idx", world["ckpt"])
    with pytest.raises(VattError, match="32-d"):
        index.search(torch.ones(64), space="vt")
    with pytest.raises(VattError, match="space"):
        index.search(torch.ones(32), space="at")


# ---------------------------------------------------------------------------------------------- folder


def test_round_trip_by_name_under_vatt_home(world, tmp_path, monkeypatch):
    monkeypatch.setenv("VATT_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "indexes" / "toy"
    assert resolve_index("toy") == folder
    built, vt, va, meta = build(resolve_index("toy"), world["ckpt"])
    assert sorted(p.name for p in folder.parent.iterdir()) == ["toy"]  # no temporary folder left behind
    raw = load_file(str(folder / "embeddings.safetensors"))
    assert set(raw) == {"video_vt", "video_va", "rows_vt", "rows_va"}
    assert raw["video_vt"].dtype == raw["video_va"].dtype == torch.float32
    assert raw["rows_vt"].tolist() == raw["rows_va"].tolist() == list(range(40))  # one row per clip in each space
    np.testing.assert_allclose(raw["video_vt"].double().norm(dim=1).numpy(), 1.0, atol=1e-6)

    loaded = RetrievalIndex.load("toy")
    for space, matrix in (("vt", vt), ("va", va)):
        assert torch.equal(loaded.matrices[space], built.matrices[space])
        assert loaded.matrices[space].is_contiguous() and loaded.matrices[space].dtype == torch.float32
        np.testing.assert_allclose(loaded.matrices[space].numpy(), matrix, atol=1e-6)
    lines = (folder / "items.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == loaded.items
    assert loaded.items[4] == {"key": "clip004", "source": "videos/v4.mp4", "start": 4.0, "end": 7.2,
                               "caption": CAPTIONS[4]}
    info = json.loads((folder / "index.json").read_text())
    assert info["num_items"] == 40 and info["dims"] == {"vt": 32, "va": 64}
    assert info["weights_hash"] == sha256(world["ckpt"] / "model.safetensors")
    assert info["checkpoint"] == str(world["ckpt"].resolve()) and info["model_name"] == "vatt-tiny"
    assert info["tokenizer_sha256"] == "t" * 64 and isinstance(info["format_version"], int) and info["created"]


def test_build_refuses_to_overwrite_unless_asked(world, tmp_path):
    build(tmp_path / "idx", world["ckpt"], seed=0)
    with pytest.raises(VattError, match="overwrite"):
        build(tmp_path / "idx", world["ckpt"], seed=1)
    np.testing.assert_allclose(RetrievalIndex.load(tmp_path / "idx").matrices["vt"].numpy(), planted(seed=0)[0],
                               atol=1e-6)  # the first index is intact
    vt, va, meta = planted(n=5, seed=1)
    RetrievalIndex.build(tmp_path / "idx", embeddings(vt, va, meta), ckpt=world["ckpt"], tokenizer_sha256=None,
                         model_name="vatt-tiny", overwrite=True)
    assert len(RetrievalIndex.load(tmp_path / "idx")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_other_checkpoint_is_refused_naming_both_hashes(world, tmp_path):
    index, _, _, _ = build(tmp_path / "idx", world["ckpt"])
    index.check_checkpoint(world["ckpt"])
    index.check_checkpoint(world["ckpt"].parent)  # a run folder resolves to the same checkpoint
    with pytest.raises(VattError) as err:
        index.check_checkpoint(world["other"])
    message = str(err.value)
    assert sha256(world["ckpt"] / "model.safetensors") in message
    assert sha256(world["other"] / "model.safetensors") in message and "\n" not in message


def test_missing_index_name_lists_the_available_ones(world, tmp_path):
    home = tmp_path / "indexes"
    with pytest.raises(VattError, match="available: none"):
        RetrievalIndex.load("gamma", home=home)
    for name in ("alpha", "beta"):
        build(home / name, world["ckpt"], n=4)
    with pytest.raises(VattError) as err:
        RetrievalIndex.load("gamma", home=home)
    assert "'gamma'" in str(err.value) and "alpha, beta" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- query files


class Recorder(nn.Module):
    """Stands in for VATT: keeps what it is given, answers a fixed (unnormalised) embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, video=None, audio=None, text=None):
        name, x = ("video", video) if video is not None else ("audio", audio)
        self.seen[name] = x
        return {f"{name}_va": torch.tensor([[3.0, 0.0, 4.0]])}


def test_video_query_reads_the_middle_window_centre_cropped(tmp_path):
    video = make_video(tmp_path / "q.mp4", fps=10.0, duration=3.0, size=(64, 64), audio_rate=16000)
    model = Recorder()
    out = encode_video_file(model, video.path, ClipSpec(frames=8, fps=10.0, size=64, audio_rate=16000))
    np.testing.assert_allclose(out.numpy(), [0.6, 0.0, 0.8], atol=1e-6)  # L2-normalised
    x = model.seen["video"]
    assert x.shape == (1, 3, 8, 64, 64) and x.min() >= -1.0 and x.max() <= 1.0
    frames = ((x[0].permute(1, 2, 3, 0) + 1) / 2 * 255).round().to(torch.uint8).numpy()
    assert [read_counter(f) for f in frames] == list(range(11, 19))  # 3 s video, 0.8 s window from 1.1 s


def test_audio_query_reads_the_middle_window_and_pads_short_files(tmp_path):
    video = make_video(tmp_path / "q.mp4", fps=10.0, duration=3.0, size=(64, 64), audio_rate=16000)
    spec = ClipSpec(frames=8, fps=10.0, size=64, audio_rate=16000)
    model = Recorder()
    encode_audio_file(model, video.path, spec)
    window = model.seen["audio"][0].numpy()
    assert window.shape == (12800,)
    start, peak = audio_time(window, 16000, lo=0.0, hi=2.2)
    assert start == pytest.approx(1.1, abs=0.03) and peak > 0.9
    short = write_tone_file(tmp_path / "short.wav", 16000, 0.5)
    encode_audio_file(model, short, spec)
    window = model.seen["audio"][0].numpy()
    assert window.shape == (12800,) and np.all(window[8000:] == 0) and np.abs(window[:8000]).max() > 0.4
    assert audio_time(window[:8000], 16000, lo=0.0, hi=0.1)[0] == pytest.approx(0.0, abs=1e-3)


# ---------------------------------------------------------------------------------------------- CLI


def run(*args: str, env: dict | None = None):
    app = typer.Typer()
    app.command("retrieve")(retrieve)
    app.callback()(lambda: None)
    return CliRunner().invoke(app, ["retrieve", *args], env=env)


def test_cli_text_query_json_matches_an_independent_ranking(world, tmp_path):
    home = tmp_path / "home"
    _, vt, _, _ = build(home / "indexes" / "toy", world["ckpt"], tokenizer_sha256=sha256(world["tokenizer"]))
    query = "a blue circle moving up"
    result = run(query, "--index", "toy", "--json", "--top-k", "5", env={"VATT_HOME": str(home)})
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    model, tok = load_model(world["ckpt"]), TextTokenizer.load(world["tokenizer"])
    with torch.no_grad():
        emb = model(text=torch.from_numpy(tok.encode([query], max_len=16)))["text_vt"][0].double().numpy()
    order, scores = expected_order(vt, emb)
    assert out["space"] == "vt" and out["query"] == {"text": query}
    assert [r["key"] for r in out["results"]] == [f"clip{i:03d}" for i in order[:5]]
    np.testing.assert_allclose([r["score"] for r in out["results"]], scores[:5], atol=1e-5)
    assert [r["rank"] for r in out["results"]] == [1, 2, 3, 4, 5]
    first = order[0]
    assert out["results"][0]["source"] == f"videos/v{first % 7}.mp4" and out["results"][0]["start"] == first


def test_cli_refuses_two_queries_another_checkpoint_or_tokenizer(world, tmp_path):
    build(tmp_path / "idx", world["ckpt"])  # recorded tokenizer sha256: "ttt...", not the checkpoint's
    result = run("a red square", "--video", str(tmp_path / "x.mp4"), "--index", str(tmp_path / "idx"))
    assert isinstance(result.exception, VattError) and "exactly one" in str(result.exception)
    result = run("a red square", "--index", str(tmp_path / "idx"), "--ckpt", str(world["other"]))
    assert isinstance(result.exception, VattError) and "weights hash" in str(result.exception)
    result = run("a red square", "--index", str(tmp_path / "idx"))
    assert isinstance(result.exception, VattError) and sha256(world["tokenizer"]) in str(result.exception)


def test_cli_builds_an_index_from_shards_and_searches_it(world, tmp_path):
    shards = tmp_path / "shards"
    expected = []
    with ShardWriter(shards, prefix="toy") as writer:
        for i in range(3):
            clip = make_video(tmp_path / f"v{i}.mp4", fps=10.0, duration=1.0 + 0.2 * i, size=(64, 64),
                              audio_rate=16000)
            meta = {"source": f"raw/v{i}.mp4", "start": 2.0 * i, "end": 2.0 * i + clip.duration,
                    "captions": [CAPTIONS[i]], "duration": clip.duration}
            writer.write(f"clip{i}", {"mp4": clip.path.read_bytes(), "json": meta}, clip.duration)
            expected.append({"key": f"clip{i}", "source": f"raw/v{i}.mp4", "start": 2.0 * i,
                             "end": 2.0 * i + clip.duration, "caption": CAPTIONS[i]})
    result = run("--build", "toy", "--data", str(shards), "--ckpt", str(world["ckpt"].parent), "--index-home",
                 str(tmp_path / "indexes"))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "indexes" / "toy"
    info = json.loads((folder / "index.json").read_text())
    assert info["num_items"] == 3 and info["tokenizer_sha256"] == sha256(world["tokenizer"])
    assert info["weights_hash"] == sha256(world["ckpt"] / "model.safetensors")
    assert [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()] == expected
    result = run(CAPTIONS[1], "--index", "toy", "--index-home", str(tmp_path / "indexes"), "--json")
    assert result.exit_code == 0, result.output
    assert sorted(r["key"] for r in json.loads(result.stdout)["results"]) == ["clip0", "clip1", "clip2"]
    for flag in ("--video", "--audio"):
        result = run(flag, str(tmp_path / "v2.mp4"), "--index", str(folder), "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        scores = [r["score"] for r in out["results"]]
        assert out["space"] == "va" and out["query"] == {flag[2:]: str(tmp_path / "v2.mp4")}
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(-1 <= v <= 1 for v in scores)
    table = run(CAPTIONS[1], "--index", str(folder), "--top-k", "2")
    assert table.exit_code == 0, table.output
    assert "rank" in table.stdout and table.stdout.count("raw/v") == 2
