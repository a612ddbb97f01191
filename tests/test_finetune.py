"""Fine-tuning and linear probing end to end on toy data, and the checkpoint-fit checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vattcli.config import load_config
from vattcli.core.tokenizers import resample_table
from vattcli.errors import CheckpointError
from vattcli.eval.classify import inverse_occurrence_sigmoid_loss, softmax_loss
from vattcli.train.config import FinetuneConfig
from vattcli.train.finetune import build_classifier, run_finetune
from vattcli.train.probe_task import run_linear_probe


def finetune_cfg(toy: Path, run: Path, *extra: str) -> FinetuneConfig:
    shards = toy / "shards/kinetics"
    return load_config(FinetuneConfig, "finetune/toy", [
        f"data.train={{toy: {shards}}}", f"data.val={shards}", f"train.run_dir={run}", "train.steps=3",
        "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=8", "train.log_every=1", *extra])


def test_video_finetune_from_pretrained_tower_runs_and_evaluates_all_views(toy_data, toy_ckpt, tmp_path):
    cfg = finetune_cfg(toy_data, tmp_path, f"ckpt={toy_ckpt}", "data.eval_windows=2", "data.eval_crops=3",
                       "data.augment_on=device", "data.color_jitter=true")  # raw clips jittered by the loop
    summary = run_finetune(cfg)
    assert summary["stopped"] == "finished" and summary["step"] == 3
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["count"] == 12 and result["missing"] == 0  # one validation clip per toy class
    assert 0.0 <= result["top1"] <= result["top5"] <= 100.0
    assert (Path(summary["checkpoint"]) / "model.safetensors").is_file()
    assert (tmp_path / "config.yaml").is_file()  # the resolved config beside the run, as for pre-training
    # `vatt evaluate` on the saved checkpoint rebuilds the classifier from its stored config: same figures
    from vattcli.cli import main

    out = tmp_path / "again.json"
    assert main(["evaluate", "toy", "--ckpt", str(tmp_path), "--data", str(toy_data / "shards/kinetics"),
                 "--out", str(out), "--workers", "0"]) == 0
    again = json.loads(out.read_text())
    assert again["count"] == 12 and again["top1"] == result["top1"] and again["top5"] == result["top5"]


def test_finetune_starts_from_the_checkpoint_weights(toy_data, toy_ckpt):
    """The backbone's tensors equal the pre-training checkpoint's video tower (positions resampled where needed)."""
    from safetensors.torch import load_file

    cfg = finetune_cfg(toy_data, Path("/tmp/unused"), f"ckpt={toy_ckpt}", "model.video_grid=[2, 6, 6]")
    from vattcli.train.transfer import adopt_checkpoint_model
    from rich.console import Console

    cfg = adopt_checkpoint_model(cfg, Console(quiet=True))
    model = build_classifier(cfg, 12, ckpt=str(toy_ckpt))
    saved = load_file(str(toy_ckpt / "model.safetensors"))
    own = model.backbone.state_dict()
    torch.testing.assert_close(own["encoder.layers.0.attn.qkv.weight"], saved["video.encoder.layers.0.attn.qkv.weight"])
    torch.testing.assert_close(own["positions.tables.0"], saved["video.positions.tables.0"])  # 2 rows both
    torch.testing.assert_close(own["positions.tables.1"], resample_table(saved["video.positions.tables.1"], 6))


def test_audio_finetune_with_mixup_and_linear_probe_run(toy_data, toy_ckpt, tmp_path):
    cfg = finetune_cfg(toy_data, tmp_path / "audio", f"ckpt={toy_ckpt}", "modality=audio", "head.mixup=true",
                       "model.audio_buckets=100")
    summary = run_finetune(cfg)
    assert summary["stopped"] == "finished" and "top1" in summary["eval"]
    probe = finetune_cfg(toy_data, tmp_path / "probe", f"ckpt={toy_ckpt}", "head.linear_probe=true",
                         "train.steps=30")
    result = run_linear_probe(probe)["eval"]
    assert list(result["splits"]) == ["val"] and 0.0 <= result["top1_mean"] <= 100.0


def test_mismatched_checkpoint_is_one_clear_error_naming_the_tensor(toy_data, toy_ckpt):
    cfg = finetune_cfg(toy_data, Path("/tmp/unused"), "model.video.d_model=32")  # not the checkpoint's width
    with pytest.raises(CheckpointError) as e:
        build_classifier(cfg, 12, ckpt=str(toy_ckpt))
    assert "tokenizer.proj.weight" in str(e.value) and "(64, 3072)" in str(e.value) and "\n" not in str(e.value)


def test_softmax_loss_with_label_smoothing_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)[0]
    eps = 0.1
    expected = -((1 - eps) * logp[0] + eps / 3 * logp.sum())
    assert softmax_loss(logits, torch.tensor([0]), eps).item() == pytest.approx(expected.item(), rel=1e-6)
    soft = torch.tensor([[1.0, 0.0, 0.0]])
    assert softmax_loss(logits, soft, eps).item() == pytest.approx(expected.item(), rel=1e-6)


def test_inverse_label_occurrence_weights_match_a_loop():
    """Each sample weighted by sum_c y_c / count_c over its labels, divided by its label count [C audio/factory.py]."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float64)
    total = 0.0
    for i in range(4):
        counts = [sum(y[j, c] for j in range(4)) for c in range(3)]
        labels = [c for c in range(3) if y[i, c] == 1]
        weight = sum(1.0 / float(counts[c]) for c in labels) / len(labels)
        bce = sum(torch.nn.functional.binary_cross_entropy_with_logits(logits[i, c], y[i, c]) for c in range(3))
        total += weight * float(bce)
    assert inverse_occurrence_sigmoid_loss(logits, y).item() == pytest.approx(total / 4, rel=1e-6)


def test_image_finetune_repeats_each_image_into_one_temporal_patch(toy_ckpt, tmp_path):
    """ImageNet layout -> shards -> the video tower on images repeated 4x in time (grid 1x4x4 from the checkpoint's
    2x4x4 tables) [P §4.2.3]."""
    import numpy as np

    from vattcli.data.adapters import get_adapter
    from vattcli.data.media_write import write_image
    from vattcli.data.preprocess import Settings, run_preprocess

    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        for wnid, colour in (("n01440764", (200, 30, 30)), ("n01443537", (30, 30, 200))):
            for i in range(count):
                image = np.clip(rng.normal(colour, 20, size=(72, 80, 3)), 0, 255).astype(np.uint8)
                (tmp_path / "imagenet" / split / wnid).mkdir(parents=True, exist_ok=True)
                write_image(tmp_path / "imagenet" / split / wnid / f"img{i}.JPEG", image)
    for split in ("train", "val"):
        summary = run_preprocess(get_adapter("imagenet"), tmp_path / "imagenet", tmp_path / "shards", split,
                                 settings=Settings(fps=25.0))
        assert summary["written"] == (6 if split == "train" else 2)
    cfg = load_config(FinetuneConfig, "finetune/toy", [
        f"data.train={{imagenet: {tmp_path / 'shards'}}}", f"data.val={tmp_path / 'shards'}", "modality=image",
        f"ckpt={toy_ckpt}", "model.video_grid=[1, 4, 4]", f"train.run_dir={tmp_path / 'run'}", "train.steps=2",
        "data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=4",
        "data.augment_on=device"])  # raw uint8 images, finished by the loop
    summary = run_finetune(cfg)
    assert summary["stopped"] == "finished" and summary["eval"]["count"] == 2
