"""The training loop: learning, checkpoints, preemption and resume, and multi-process equivalence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vattcli.config import load_config
from vattcli.train.config import OptimConfig, PretrainConfig
from vattcli.train.optim import learning_rate
from vattcli.train.pretrain import run_pretrain

SYNTH = ["data.train={s: synthetic}", "data.batch_size=8", "train.log_every=1"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vattcli.cli", *args]


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    latest = sorted(run.glob("ckpt-*"))[-1]
    return load_file(str(latest / "model.safetensors"))


def test_schedule_is_linear_warmup_then_half_cosine_to_end_lr():
    cfg = OptimConfig(lr=1e-4, end_lr=5e-5, warmup_steps=5000)
    assert learning_rate(cfg, 0, 500_000) == 0.0
    assert learning_rate(cfg, 2500, 500_000) == pytest.approx(5e-5)
    assert learning_rate(cfg, 5000, 500_000) == pytest.approx(1e-4)
    # half-way through the cosine: the mean of the two levels [C StepwiseCosineDecayLearningRate]
    assert learning_rate(cfg, 5000 + 495_000 // 2, 500_000) == pytest.approx(7.5e-5, rel=1e-4)
    assert learning_rate(cfg, 500_000, 500_000) == pytest.approx(5e-5)


def test_pretrain_synthetic_loss_decreases_and_checkpoint_has_every_file(tmp_path):
    overrides = [*SYNTH, "data.train={s: 'synthetic:16'}", f"train.run_dir={tmp_path}", "train.steps=30", "train.ckpt_every=15",
                 "model.droptoken_rate=0.0", "optim.warmup_steps=5", "data.batch_size=16",
                 # the same 16 samples every step, so the contrastive loss must fall
                 "data.frames=4", "data.size=32", "model.video_grid=[1, 2, 2]"]
    cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", overrides)
    summary = run_pretrain(cfg)
    assert summary["step"] == 30 and summary["stopped"] == "finished"
    losses = [m["loss"] for m in read_metrics(tmp_path)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    ckpt = Path(summary["checkpoint"])
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "config.yaml", "train_state.pt", "meta.json"}
    assert (tmp_path / "config.yaml").is_file()
    state = torch.load(ckpt / "train_state.pt", weights_only=True)
    assert state["step"] == 30 and "optimizer" in state and "data" in state


def _start(run: Path, steps: int, data: list[str], resume: bool = False) -> subprocess.Popen:
    args = cli("pretrain", "-r", "pretrain/vatt-tiny", *data, f"train.run_dir={run}", f"train.steps={steps}",
               "train.ckpt_every=1000", "train.log_every=1")
    if resume:
        args.append("--resume=latest")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_then_resume_latest_gives_bit_identical_weights(toy_data, tmp_path):
    """Real toy shards read by a DataLoader worker with augmentation: data order, DropToken, dropout and the optimiser
    all continue exactly where the stopped run left them."""
    from conftest import toy_overrides

    steps = 10
    data = [*toy_overrides(toy_data, tmp_path / "unused")[:2], "data.batch_size=8", "data.num_workers=1",
            "data.shuffle_buffer=16", "model.dropout=0.1"]
    straight = _start(tmp_path / "straight", steps, data)
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out

    interrupted = tmp_path / "interrupted"
    proc = _start(interrupted, steps, data)
    deadline = time.time() + 120
    while len(read_metrics(interrupted)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out  # stopped by SIGTERM, after saving
    stopped_at = json.loads((sorted(interrupted.glob("ckpt-*"))[-1] / "meta.json").read_text())["step"]
    assert 3 <= stopped_at < steps, f"stopped at {stopped_at}: the signal came too late to test resuming"

    resumed = _start(interrupted, steps, data, resume=True)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    a, b = final_weights(tmp_path / "straight"), final_weights(interrupted)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    losses_a = [m["loss"] for m in read_metrics(tmp_path / "straight")]
    losses_b = [m["loss"] for m in read_metrics(interrupted)]
    assert losses_a == losses_b  # the same data, dropout and DropToken draws at every step


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """DDP with global negatives and a synchronised batch norm: the loss curve of 2 processes x 4 samples equals
    1 process x 8 samples (dropout and DropToken off, since their random draws differ per process; SGD, since
    Adam divides by the root of tiny second moments and so magnifies the last-bit differences of summation order)."""
    common = [*SYNTH, "train.steps=4", "train.ckpt_every=1000", "model.dropout=0.0", "model.droptoken_rate=0.0",
              "optim.warmup_steps=0", "optim.name=sgd", "optim.lr=0.05", "optim.end_lr=0.05"]
    single = subprocess.run(cli("pretrain", "-r", "pretrain/vatt-tiny", *common, f"train.run_dir={tmp_path / 'one'}"),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29517", "-m", "vattcli.cli", "pretrain", "-r", "pretrain/vatt-tiny",
                             *common, f"train.run_dir={tmp_path / 'two'}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert double.returncode == 0, double.stdout + double.stderr
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [m["step"] for m in one] == [m["step"] for m in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in ("loss", "loss_va", "loss_vt"):
            assert a[key] == pytest.approx(b[key], abs=5e-4), (a, b)
    assert one[-1]["loss"] != one[0]["loss"]  # it trained: a curve, not one repeated value


def test_non_finite_losses_skip_the_update_then_stop(tmp_path):
    """A NaN loss skips the optimiser step (weights unchanged) and several in a row stop training with a clear error."""
    from vattcli.train.config import TrainConfig
    from vattcli.train.distributed import DistInfo
    from vattcli.train.loop import Trainer, TrainingError

    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()

    def step_fn(m, batch):
        return {"loss": m(batch).sum() * float("nan")}

    loader = [torch.ones(4, 2)] * 10
    trainer = Trainer(model=model, step_fn=step_fn, loader=loader, train=TrainConfig(run_dir=str(tmp_path), steps=10,
                      max_bad_steps=3), optim=OptimConfig(name="sgd", lr=0.1, warmup_steps=0), info=DistInfo(),
                      config_yaml="{}")
    with pytest.raises(TrainingError, match="3 steps in a row"):
        trainer.fit()
    assert torch.equal(model.weight, before)


def test_clips_finished_on_the_device_train_like_clips_finished_in_workers(toy_data, tmp_path):
    """data.augment_on=device (workers ship uint8 + colour rows, the loop jitters the batch) against the workers
    doing it all: the same samples, crops and colours, so the same losses up to float rounding."""
    from conftest import toy_overrides

    runs = {}
    for where in ("workers", "device"):
        overrides = [*toy_overrides(toy_data, tmp_path / where), "train.steps=3", "data.color_jitter=true",
                     "data.crop=inception", f"data.augment_on={where}", "model.droptoken_rate=0.0"]
        run_pretrain(load_config(PretrainConfig, "pretrain/vatt-tiny", overrides))
        runs[where] = [m["loss"] for m in read_metrics(tmp_path / where)]
    assert len(runs["device"]) == 3
    assert runs["device"] == pytest.approx(runs["workers"], abs=1e-4)


def test_raw_training_samples_are_uint8_and_finish_to_the_worker_result(toy_data):
    from torch.utils.data import default_collate

    from vattcli.data.pipeline import ClipSpec, PretrainDecoder, finish_batch
    from vattcli.data.reader import ShardDataset
    from vattcli.data.text import TextTokenizer
    from vattcli.data.folders import shard_urls

    tokenizer = TextTokenizer.load(toy_data / "tokenizer.model")
    urls = shard_urls(toy_data / "shards/howto100m")
    spec = ClipSpec(frames=8, size=32, crop="inception")
    raw_spec = ClipSpec(frames=8, size=32, crop="inception", raw_video=True)
    done = list(ShardDataset(urls, decode=PretrainDecoder(spec, tokenizer), epochs=1))
    raw = list(ShardDataset(urls, decode=PretrainDecoder(raw_spec, tokenizer), epochs=1))
    assert raw[0]["video"].dtype == torch.uint8 and raw[0]["video"].shape == (8, 32, 32, 3)
    assert len(raw) == len(done) > 1 and any(bool(r["video_color"][0]) for r in raw)  # some clips are jittered
    batch = finish_batch(default_collate(raw))
    assert "video_color" not in batch and batch["video"].dtype == torch.float32
    torch.testing.assert_close(batch["video"], torch.stack([d["video"] for d in done]), atol=1e-5, rtol=0)
    assert torch.equal(batch["audio"], torch.stack([d["audio"] for d in done]))
