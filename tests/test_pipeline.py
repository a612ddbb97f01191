"""The demo pipeline through the CLI at a small size: evaluate (retrieval + index), retrieve, export, zero-shot.
The full-size learning check (R@1 at least 5x chance after the demo's pre-training) is marked slow."""

from __future__ import annotations

import json

import pytest

from vattcli.cli import main


def run_cli(capsys, *args: str) -> str:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_evaluate_retrieve_export_through_the_cli(toy_data, toy_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VATT_HOME", str(tmp_path / "home"))
    out = tmp_path / "eval.json"
    printed = json.loads(run_cli(capsys, "evaluate", "youcook2", "--ckpt", str(toy_ckpt), "--data",
                                 str(toy_data / "shards/youcook2"), "--index", "toy", "--out", str(out), "--json",
                                 "--workers", "0"))
    assert printed["pool"] == 12 and printed["missing"] == 0  # 4 videos x 3 segments in the small toy
    assert printed["chance_R@1"] == pytest.approx(100 / 12)
    t2v = printed["t2v"]
    assert 0 <= t2v["R@1"] <= t2v["R@5"] <= t2v["R@10"] <= 100.0 and 1 <= t2v["MedR"] <= 12
    assert json.loads(out.read_text())["weights_hash"] == printed["weights_hash"]
    assert (tmp_path / "home/indexes/toy/embeddings.safetensors").is_file()

    hits = json.loads(run_cli(capsys, "retrieve", "a red circle moving left", "--index", "toy", "--top-k", "3",
                              "--json"))["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    export_dir = tmp_path / "export"
    run_cli(capsys, "export", str(toy_ckpt), "--format", "safetensors", "--tower", "all", "--out", str(export_dir))
    assert {p.name for p in export_dir.iterdir()} >= {"video", "audio", "text"}


def test_zero_shot_prompt_classification_reports_chance(toy_data, toy_ckpt, tmp_path, capsys):
    printed = json.loads(run_cli(capsys, "evaluate", "toy", "--zero-shot", "--ckpt", str(toy_ckpt), "--data",
                                 str(toy_data / "shards/kinetics"), "--out", str(tmp_path / "zs.json"), "--json",
                                 "--workers", "0"))
    assert printed["count"] == 12 and printed["chance_top1"] == pytest.approx(100 / 12)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["evaluate", "youcook2", "--ckpt", str(tmp_path / "nothing")]) == 2
    assert main(["preprocess", "kinetics400", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 2


@pytest.mark.slow
def test_demo_pretraining_lifts_retrieval_r1_to_5x_chance(tmp_path):
    """The demo's recipe on the full toy set: zero-shot text-to-video R@1 on the 48-clip pool >= 5 x chance."""
    from vattcli.config import load_config
    from vattcli.data.toy import build_toy
    from vattcli.eval.evaluate import run_retrieval
    from vattcli.train.config import PretrainConfig
    from vattcli.train.pretrain import run_pretrain

    toy = tmp_path / "toy"
    build_toy(toy, seed=0, workers=2)
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", [
        f"data.train={{howto100m: {toy / 'shards/howto100m'}}}", f"data.tokenizer={toy / 'tokenizer.model'}",
        f"train.run_dir={tmp_path / 'run'}"])
    run_pretrain(cfg)
    result = run_retrieval("youcook2", str(tmp_path / "run"), str(toy / "shards/youcook2"), out=None)["result"]
    assert result["pool"] == 48
    assert result["t2v"]["R@1"] >= 5 * result["chance_R@1"], result["t2v"]


def test_tokenizer_command_trains_from_caption_files_and_caption_json(tmp_path, capsys):
    from vattcli.data.text import TextTokenizer

    lines = tmp_path / "captions.txt"
    lines.write_bytes(b"cut the onions\nfry the onions\n\xff\xfe broken\nadd salt\n\n")  # one bad, one empty
    caption_json = tmp_path / "caption.json"
    caption_json.write_text(json.dumps({"v1": {"start": [0], "end": [2], "text": ["stir the soup"]}}))
    out = run_cli(capsys, "preprocess", "tokenizer", "--captions", str(lines), "--captions", str(caption_json),
                  "--out", str(tmp_path / "tok"), "--vocab-size", "24")
    assert "1 undecodable" in out and "1 empty" in out
    tok = TextTokenizer.load(tmp_path / "tok.model")
    ids = tok.encode(["Stir the onions"], max_len=16)
    assert ids.shape == (1, 16) and (ids[0, :3] != 0).all() and tok.decode(ids[0]).strip() == "stir the onions"


def test_preprocess_resume_skips_finished_shards_and_limit_caps_sources(toy_data, tmp_path, capsys):
    raw = toy_data / "raw/kinetics"
    first = json.loads(run_cli(capsys, "preprocess", "kinetics400", "--root", str(raw), "--out", str(tmp_path),
                               "--split", "train", "--workers", "1", "--limit", "5", "--shard-samples", "2",
                               "--short-side", "64", "--json"))
    assert first["written"] == 5 and first["already_done"] == 0
    again = json.loads(run_cli(capsys, "preprocess", "kinetics400", "--root", str(raw), "--out", str(tmp_path),
                               "--split", "train", "--workers", "1", "--shard-samples", "2", "--short-side", "64",
                               "--resume", "--json"))
    # the two full shards (4 samples) are kept; the fifth sample was in the last, smaller shard, also finished
    assert again["already_done"] == 5 and again["written"] == 12  # 12 classes x 1 training clip in the small toy
    assert main(["preprocess", "kinetics400", "--root", str(raw), "--out", str(tmp_path), "--split", "train"]) == 2
