"""The pre-training step compiles as one graph (issue 13), and the throughput switches of ``TrainConfig``: each
gives the unswitched step's loss and gradients where it can run here, and is refused in one line where it cannot.

``fullgraph=True`` makes any graph break an error. Breaks are a property of dynamo's trace, so the default test uses
the ``aot_eager`` backend (seconds); inductor itself runs in the slow test.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vattcli.api import build_model, model_config
from vattcli.config import load_config
from vattcli.core import layers
from vattcli.core.layers import set_activation_checkpointing
from vattcli.core.losses import PretrainLoss
from vattcli.errors import ConfigError
from vattcli.train.config import PretrainConfig, TrainConfig
from vattcli.train.speed import FP8_NEEDS, attention_context, check_switches
from vattcli.train.pretrain import pretrain_step, run_pretrain

VATT = Path(sys.executable).parent / "vatt"
SYNTH = ["data.train={s: synthetic}", "data.batch_size=4", "train.log_every=1", "train.steps=2",
         "train.device=cpu"]  # also on a GPU machine: fp32, and the CPU-only refusals below


def tiny_batch(batch: int = 4) -> dict[str, torch.Tensor]:
    """vatt-tiny inputs at its own size (no positional resampling), one sample without captions (an AudioSet clip)
    so MIL-NCE masks."""
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 512, (batch, 5, 16), generator=g)
    text[:, :, 9:] = 0
    text[2] = 0
    return {"video": torch.rand(batch, 3, 8, 64, 64, generator=g) * 2 - 1,
            "audio": torch.rand(batch, 12800, generator=g) * 2 - 1, "text": text,
            "has_text": torch.tensor([True, True, False, True])}


def run_step(model: torch.nn.Module, step, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """One training step from a fixed RNG state (DropToken and dropout draw the same): loss and gradients."""
    torch.manual_seed(5)
    out = step(model, batch)
    out["loss"].backward()
    return float(out["loss"].detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(got: tuple[float, dict], want: tuple[float, dict], tol: float) -> None:
    assert got[0] == pytest.approx(want[0], abs=tol)
    assert got[1].keys() == want[1].keys()
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=tol, rtol=0, msg=name)


@pytest.fixture()
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(model_config("vatt-tiny")).train()  # dropout 0.1, DropToken 50 %


def test_pretraining_step_compiles_as_one_graph_with_the_eager_loss_and_gradients(tiny):
    step = pretrain_step(PretrainLoss())
    batch = tiny_batch()
    eager = run_step(copy.deepcopy(tiny), step, batch)
    torch._dynamo.reset()
    compiled = run_step(tiny, torch.compile(step, fullgraph=True, backend="aot_eager"), batch)
    assert compiled[1]["video.tokenizer.proj.weight"].abs().sum() > 0  # the backward reached the first layer
    assert_same_step(compiled, eager, 1e-6)


@pytest.mark.slow
def test_checkpointed_step_compiles_as_one_graph(tiny):
    step = pretrain_step(PretrainLoss())
    eager = run_step(copy.deepcopy(tiny), step, tiny_batch())
    set_activation_checkpointing(tiny, True)
    torch._dynamo.reset()
    assert_same_step(run_step(tiny, torch.compile(step, fullgraph=True, backend="aot_eager"), tiny_batch()), eager,
                     1e-6)


@pytest.mark.slow
def test_inductor_compiles_the_step_as_one_graph_with_the_eager_loss(tiny, monkeypatch):
    """Inductor (about a minute on 2 cores). Gradients are compared on CUDA by bench/bench_pretrain_step.py: torch
    2.13's vectorised C++ (CPU) code computes this graph's backward wrongly, which is why the trainer compiles the
    model alone on the CPU (``compile_step``)."""
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # eager's random draws
    step = pretrain_step(PretrainLoss())
    eager, _ = run_step(copy.deepcopy(tiny), step, tiny_batch())
    torch._dynamo.reset()
    compiled, _ = run_step(tiny, torch.compile(step, fullgraph=True), tiny_batch())
    assert compiled == pytest.approx(eager, abs=1e-5)


def test_checkpointed_blocks_recompute_to_the_same_loss_and_gradients(tiny, monkeypatch):
    calls = []
    original = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    step = pretrain_step(PretrainLoss())
    plain = run_step(copy.deepcopy(tiny), step, tiny_batch())
    assert set_activation_checkpointing(tiny, True) == 3  # video, audio, text stacks
    assert_same_step(run_step(tiny, step, tiny_batch()), plain, 1e-6)
    assert len(calls) == 6  # 2 blocks in each of the 3 towers


def test_math_attention_gives_the_loss_and_gradients_of_the_default_kernel():
    """Without dropout the CPU's default is its flash kernel, which sums in another order: both are within ~1e-5
    (relative) of a float64 step, so they agree to float32 rounding, not bit for bit."""
    torch.manual_seed(0)
    model = build_model(model_config("vatt-tiny"), dropout=0.0).train()
    step = pretrain_step(PretrainLoss())
    auto = run_step(copy.deepcopy(model), step, tiny_batch())
    with attention_context("math"):
        math = run_step(model, step, tiny_batch())
    assert math[0] == pytest.approx(auto[0], abs=1e-5)
    scale = max(float(grad.abs().max()) for grad in auto[1].values())  # ~30: a tensor near 0 has only rounding
    assert_same_step((auto[0], math[1]), auto, 1e-4 * scale)


def test_trainer_with_math_attention_and_checkpointing_logs_the_plain_losses(tmp_path, monkeypatch):
    calls = []
    original = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    losses = {}
    for name, extra in (("plain", []), ("switched", ["train.attention_backend=math",
                                                     "train.activation_checkpointing=blocks"])):
        run = tmp_path / name
        cfg = load_config(PretrainConfig, "pretrain/vatt-tiny", [*SYNTH, f"train.run_dir={run}", *extra])
        assert run_pretrain(cfg)["step"] == 2
        losses[name] = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses["plain"]) == 2
    assert losses["switched"] == pytest.approx(losses["plain"], abs=2e-5)  # math vs the CPU flash kernel (dropout 0)
    assert calls  # the trainer turned checkpointing on


@pytest.mark.parametrize("changes, key", [({"compile_mode": "fast"}, "train.compile_mode"),
                                          ({"attention_backend": "sdpa"}, "train.attention_backend"),
                                          ({"activation_checkpointing": "all"}, "train.activation_checkpointing")])
def test_switch_choices_built_in_python_are_checked(changes, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        check_switches(TrainConfig(**changes), torch.device("cpu"))


@pytest.mark.parametrize("override, first_line", [
    ("train.fp8=true", f"error: {FP8_NEEDS}"),
    ("train.attention_backend=cudnn",
     "error: train.attention_backend=cudnn needs a CUDA device; use auto or math on cpu"),
    ("train.compile_mode=fast",
     "train.compile_mode: expected one of 'default', 'max-autotune', 'reduce-overhead', got str 'fast'"),
    ("train.activation_checkpointing=layers",
     "train.activation_checkpointing: expected one of 'none', 'blocks', got str 'layers'"),
])
def test_cli_refuses_a_switch_in_one_line_and_leaves_nothing(tmp_path, override, first_line):
    run = tmp_path / "run"
    proc = subprocess.run([str(VATT), "pretrain", "-r", "pretrain/vatt-tiny", *SYNTH, f"train.run_dir={run}",
                           override], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert first_line in proc.stderr.splitlines()[0]
    assert list(tmp_path.iterdir()) == []
