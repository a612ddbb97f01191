"""A converted official checkpoint goes through every command that takes a checkpoint: zero-shot evaluation with an
index, text search in that index, fine-tuning from its video tower, export of its towers (CLI, in subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from vattcli.api import load_model, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "official-vatt"
VATT = str(Path(sys.executable).parent / "vatt")
# small clips for the small fixture model (patch 2x4x4, 2x4x4 tables): the commands read the clip from config.yaml
SMALL_CLIP = {"frames": 4, "fps": 10.0, "size": 16, "audio_rate": 16000, "text_len": 16, "eval_windows": 2}


def vatt(*args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VATT_HOME": str(home)}
    return subprocess.run([VATT, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conv-cmd")
    src = FIXTURES / "tx_fac-small"
    proc = vatt("convert", src, "--out", root / "tx", "--vocab", src / "vocab.txt", "--heads", "video=4",
                "--heads", "audio=4", home=root)
    assert proc.returncode == 0, proc.stderr
    config_path = root / "tx" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["data"].update(SMALL_CLIP)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))  # not hashed: only the weights are
    return root / "tx"


def test_zero_shot_evaluation_builds_an_index_that_text_search_reads(converted, toy_data, tmp_path):
    shards = toy_data / "shards" / "youcook2"
    proc = vatt("evaluate", "youcook2", "--ckpt", converted, "--data", shards, "--index", "conv", "--workers", "0",
                "--out", tmp_path / "eval.json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["pool"] == 12 and result["missing"] == 0 and {"R@1", "R@10", "MedR"} <= set(result["t2v"])
    index = tmp_path / "indexes" / "conv"
    info = json.loads((index / "index.json").read_text())
    meta = json.loads((converted / "meta.json").read_text())
    assert info["weights_hash"] == meta["weights_hash"]

    query = "w00010 w00020 w00030"
    proc = vatt("retrieve", query, "--index", "conv", "--json", "--top-k", "3", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    model, tok = load_model(converted), load_tokenizer(converted)
    with torch.no_grad():
        q = F.normalize(model(text=torch.from_numpy(tok.encode([query])))["text_vt"], dim=-1)[0].double().numpy()
    scores = load_file(str(index / "embeddings.safetensors"))["video_vt"].double().numpy() @ q
    np.testing.assert_allclose([r["score"] for r in results], np.sort(scores)[::-1][:3], atol=1e-5)

    env = {**os.environ, "VATT_HOME": str(tmp_path)}  # a query whose bytes are not UTF-8 (a mis-encoded file name)
    proc = subprocess.run([VATT.encode(), b"retrieve", b"w00010 \xff\xfe", b"--index", b"conv"], capture_output=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and b"not valid UTF-8" in proc.stderr.splitlines()[0], proc.stderr


def test_finetuning_starts_from_the_converted_video_tower(converted, toy_data, tmp_path):
    kinetics = toy_data / "shards" / "kinetics"
    proc = vatt("finetune", "toy", "--ckpt", converted, f"data.train={{toy: {kinetics}}}", f"data.val={kinetics}",
                f"train.run_dir={tmp_path / 'run'}", "train.steps=2", "data.batch_size=4", "data.num_workers=0",
                "data.frames=4", "data.size=16", "data.eval_windows=1", "data.eval_crops=1", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["count"] > 0


def test_export_writes_each_tower(converted, tmp_path):
    proc = vatt("export", converted, "--tower", "all", "--out", tmp_path / "export", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for tower in ("video", "audio", "text"):
        assert (tmp_path / "export" / tower / "model.safetensors").is_file()
    assert (tmp_path / "export" / "text" / "tokenizer.txt").is_file()



def test_onnx_without_the_extra_names_it_intact(converted, tmp_path):
    try:
        import onnx  # noqa: F401
        pytest.skip("onnx is installed here")
    except ImportError:
        pass
    proc = vatt("export", converted, "--format", "onnx", "--out", tmp_path / "onnx", home=tmp_path)
    assert proc.returncode == 2 and "pip install 'vattcli[onnx]'" in proc.stderr.splitlines()[0], proc.stderr
    assert not (tmp_path / "onnx").exists()


@pytest.fixture(scope="module")
def classifier(toy_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """A 12-class ViT classifier in the official layout (random weights, d_model 64 with --heads video=4), task toy."""
    from tfckpt import official_keys, write_checkpoint
    from vattcli.data.folders import manifest_classes

    root = tmp_path_factory.mktemp("conv-cls")
    keys = official_keys("classifier-video", video=(1, 64, 128), patch=(2, 4, 4), grid=(2, 4, 4), num_classes=12)
    write_checkpoint(root / "src" / "ckpt-100", keys)
    classes = manifest_classes(toy_data / "shards" / "kinetics", "train")
    assert classes is not None and len(classes) == 12
    return root, classes


@pytest.mark.parametrize("order", ["official", "shuffled"])
def test_converted_classifier_evaluates_on_shards_numbered_like_its_labels(classifier, toy_data, tmp_path, order):
    root, classes = classifier
    labels = tmp_path / "labels.txt"
    names = classes if order == "official" else classes[1:] + classes[:1]
    labels.write_text("\n".join(n.replace(" ", "_").upper() for n in names) + "\n")  # same names, other spelling
    proc = vatt("convert", root / "src", "--out", tmp_path / "cls", "--heads", "video=4", "--labels", labels,
                "--task", "toy", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    kinetics = toy_data / "shards" / "kinetics"
    proc = vatt("evaluate", "toy", "--ckpt", tmp_path / "cls", "--data", kinetics, "--workers", "0", "--json",
                "--out", tmp_path / "eval.json", home=tmp_path)
    if order == "official":
        assert proc.returncode == 0, proc.stderr
        result = json.loads((tmp_path / "eval.json").read_text())
        assert result["count"] == 12 and 0.0 <= result["top1"] <= 100.0
    else:
        assert proc.returncode == 2
        assert f"class 0 is {classes[0]!r}" in proc.stderr.strip().splitlines()[0]
