"""The full VATT pre-training step (all three modalities, heads, NCE + MIL-NCE, backward, Adam) with the data already
on the device: samples/s and MFU against the dense bf16 peak (989 TFLOP/s on H100/H200) of today's path and of each
throughput switch (issue 13), measured side by side in one process.

    python bench/bench_pretrain_step.py --model vatt-bbs --batch 64 --device cuda \\
        --variants compiled,eager,step,step+cudnn,step+fp8,step+ckpt@256,step+max-autotune --agree-steps 50
    python bench/bench_pretrain_step.py --model vatt-tiny --device cpu --iters 1 --rounds 1     # CPU smoke

A variant is ``+``-joined words, optionally ``@BATCH``: ``eager``, ``compiled`` (today's trainer: ``torch.compile``
of the model, losses eager) or ``step`` (the trainer's ``compile_step`` on one GPU: model and losses as one graph);
``flash``/``cudnn``/``efficient``/``math`` (``train.attention_backend``); ``max-autotune``/``reduce-overhead``
(``train.compile_mode``); ``fp8`` (``train.fp8``, torchao); ``ckpt`` (``train.activation_checkpointing=blocks``).
The first variant is the baseline: every other one is timed in alternating rounds with it (machines are noisy), and
reported as a ratio. Variants run in the order given until ``--budget-s`` is spent; the JSON is rewritten after each,
so a run cut short keeps what it measured. A variant that runs out of memory or cannot run (fp8 without torchao) is
recorded with its error, and each records the graphs it compiled (1 for a step without breaks, 0 when it reused an
earlier variant's) and inductor's CUDA-graph skips. ``--agree-steps`` trains the baseline and the fastest other
variant at its batch for that many steps from the same weights on the same batches and reports both loss curves
(dropout and DropToken draw differently under inductor, so they agree in distribution, not bit for bit);
``--grad-check`` compares one fp32 step's gradients of a compiled variant with eager, without dropout or DropToken
(a miscompile shows as a large relative error). ``--cost-steps``/``--cost-batch`` print the pre-training cost in
GPU-hours at the fastest measured rate (the paper's recipe: 500k steps at batch 2048 [P §4.1]).

FLOPs come from ``estimate_flops`` (full multiply-add count, training = 3 x forward, DropToken applied; recomputation
by checkpointing is not counted), so MFU is model FLOPs utilisation, not hardware utilisation.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._dynamo.utils import counters

from timing import emit, timed

from vattcli.api import build_model, estimate_flops, model_config
from vattcli.core.losses import PretrainLoss
from vattcli.train.config import OptimConfig, TrainConfig
from vattcli.train.distributed import DistInfo
from vattcli.train.speed import apply_model_switches, attention_context, check_switches, compile_step
from vattcli.train.optim import build_optimizer
from vattcli.train.pretrain import pretrain_step

PEAK = 989e12
ATTENTION = ("flash", "cudnn", "efficient", "math")
MODES = ("max-autotune", "reduce-overhead")


def add_step_args(parser: argparse.ArgumentParser) -> None:
    """The model, batch and timing options of a pre-training step benchmark (also used by bench_finish.py)."""
    parser.add_argument("--model", default="vatt-bbs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--audio", type=int, default=153_600, help="waveform samples (3.2 s at 48 kHz)")
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument("--droptoken", type=float, default=0.5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)


def make_step(model, batch, dtype, compiled: bool):
    """Today's step as one callable (bench_finish.py times it): eager or the model compiled, Adam, fused on CUDA."""
    net = torch.compile(model) if compiled else model
    loss_fn = PretrainLoss()
    opt = build_optimizer(OptimConfig(lr=1e-4, eps=1e-7), model.parameters(), batch["video"].device)

    def step() -> None:
        with torch.autocast(batch["video"].device.type, dtype=dtype, enabled=dtype is not None):
            out = net(video=batch["video"], audio=batch["audio"], text=batch["text"])
            loss = loss_fn(out)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def parse_variant(name: str, default_batch: int) -> dict[str, Any]:
    """``step+cudnn+ckpt@256`` -> the settings it names (see the module docstring)."""
    words, _, batch = name.partition("@")
    spec = {"name": name, "compile": None, "attention": "auto", "mode": "default", "fp8": False, "ckpt": False,
            "batch": int(batch) if batch else default_batch}
    for word in words.split("+"):
        if word in ("eager", "compiled", "step"):
            spec["compile"] = None if word == "eager" else word
        elif word in ATTENTION:
            spec["attention"] = word
        elif word in MODES:
            spec["mode"] = word
        elif word in ("fp8", "ckpt"):
            spec[word] = True
        else:
            raise SystemExit(f"--variants: unknown word {word!r} in {name!r}")
    return spec


def make_batch(cfg, args, device: torch.device, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Random inputs drawn on the device (so a 50-step run sees fresh batches at no host cost); one sample in eight
    has no captions (an AudioSet clip), as in the HowTo100M + AudioSet mixture."""
    g = torch.Generator(device).manual_seed(seed)
    text = torch.randint(1, cfg.vocab_size, (batch, args.captions, 16), device=device, generator=g)
    text[:, :, 12:] = 0
    has_text = torch.arange(batch, device=device) % 8 != 7
    text[~has_text] = 0
    return {"video": torch.rand(batch, 3, args.frames, args.size, args.size, device=device, generator=g) * 2 - 1,
            "audio": torch.rand(batch, args.audio, device=device, generator=g) * 2 - 1, "text": text,
            "has_text": has_text}


@dataclass
class Variant:
    spec: dict[str, Any]
    model: torch.nn.Module | None
    forward_backward: Callable[[], torch.Tensor] | None  # loss, gradients left in .grad
    step: Callable[[], torch.Tensor] | None  # forward_backward, then the optimiser step
    data: dict[str, dict[str, torch.Tensor]]  # "batch": what the next step reads
    optimizer: torch.optim.Optimizer | None

    def restart(self, init: dict[str, torch.Tensor]) -> None:
        """Back to the initial weights with a fresh optimiser state (Adam's moments and step count)."""
        self.model.load_state_dict(init)
        self.optimizer.state.clear()


def build_variant(spec: dict[str, Any], cfg, init: dict[str, torch.Tensor], args, device: torch.device,
                  dtype: torch.dtype | None) -> Variant:
    """The trainer's own pieces (``apply_model_switches``, ``compile_step``, ``attention_context``,
    ``build_optimizer``) around a fresh model holding ``init``. The attention context sits inside the compiled
    function: dynamo traces it, so the kernel choice is part of each variant's graph (the choice is not guarded on:
    a context outside would let a later variant reuse an earlier one's kernels)."""
    train = TrainConfig(compile=spec["compile"] is not None, compile_mode=spec["mode"],
                        attention_backend=spec["attention"], fp8=spec["fp8"],
                        activation_checkpointing="blocks" if spec["ckpt"] else "none")
    check_switches(train, device)
    model = build_model(cfg, device=device).train()
    model.load_state_dict(init)
    apply_model_switches(model, train)
    opt = build_optimizer(OptimConfig(lr=1e-4, eps=1e-7), model.parameters(), device)
    loss_fn = pretrain_step(PretrainLoss())

    def attended(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with attention_context(spec["attention"]):
            return loss_fn(net, batch)

    if spec["compile"] == "compiled":  # today: the model compiled, the losses eager
        net = torch.compile(model)
        run = lambda _model, batch: attended(net, batch)
    else:
        run = compile_step(attended, model, train, DistInfo(device=device), whole=True)
    data = {"batch": make_batch(cfg, args, device, spec["batch"], 0)}

    def forward_backward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = run(model, data["batch"])
        out["loss"].backward()
        return out["loss"].detach().clone()  # CUDA graphs reuse the output's memory at the next replay

    def step() -> torch.Tensor:
        loss = forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return Variant(spec, model, forward_backward, step, data, opt)


def free(variant: Variant | None) -> None:
    """Drop a variant's model, optimiser and compiled step, and return its memory to the GPU."""
    if variant is not None:
        variant.model = variant.forward_backward = variant.step = variant.optimizer = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def warm(variant: Variant, device: torch.device, steps: int) -> float:
    """Seconds of the first ``steps`` steps: compilation (and autotuning) included."""
    started = time.perf_counter()
    timed(variant.step, device, steps)
    return time.perf_counter() - started


def measure_pair(base: Variant, other: Variant, device: torch.device, args) -> tuple[float, float]:
    """Median seconds per step of ``base`` and ``other`` over alternating rounds."""
    times: dict[str, list[float]] = {"base": [], "other": []}
    for _ in range(args.rounds):
        times["base"].append(timed(base.step, device, args.iters))
        times["other"].append(timed(other.step, device, args.iters))
    return statistics.median(times["base"]), statistics.median(times["other"])


def figures(step_s: float, batch: int, flops: float, cuda: bool) -> dict[str, Any]:
    return {"batch": batch, "step_s": step_s, "samples_per_s": batch / step_s,
            "mfu": flops * batch / step_s / PEAK if cuda else None}


def agreement(base: Variant, best: Variant, cfg, init, args, device: torch.device) -> dict[str, Any]:
    """Both variants from ``init`` and the same seed over ``args.agree_steps`` fresh batches: their loss curves."""
    curves: dict[str, list[float]] = {}
    for v in (base, best):
        v.restart(init)
        torch.manual_seed(1234)
        losses = []
        for i in range(args.agree_steps):
            v.data["batch"] = make_batch(cfg, args, device, v.spec["batch"], 1000 + i)
            losses.append(float(v.step()))
        curves[v.spec["name"]] = losses
    a, b = curves.values()
    diff = [abs(x - y) for x, y in zip(a, b)]
    tail = max(1, len(a) // 5)
    return {"variants": list(curves), "losses": curves, "max_abs_diff": max(diff),
            "mean_abs_diff": statistics.mean(diff), "first": [a[0], b[0]],
            "last_fifth_mean": [statistics.mean(a[-tail:]), statistics.mean(b[-tail:])]}


def grad_check(name: str, args, device: torch.device) -> dict[str, Any]:
    """One fp32 forward/backward (TF32 off) of variant ``name`` against eager, on vatt-tiny (VATT's structure at a
    size that compiles in seconds) without dropout or DropToken: the largest gradient error relative to the largest
    gradient. A miscompile shows as ~1 (torch 2.13's CPU inductor gets the losses' backward wrong this way)."""
    cfg = model_config("vatt-tiny", dropout=0.0, droptoken_rate=0.0)
    small = argparse.Namespace(**{**vars(args), "frames": 8, "size": 64, "audio": 12_800})
    init = build_model(cfg, device=device).state_dict()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    grads = []
    try:
        for spec in (parse_variant("eager", 8), {**parse_variant(name, 8), "fp8": False}):
            v = build_variant(spec, cfg, init, small, device, None)
            v.forward_backward()
            grads.append({n: p.grad.detach().clone() for n, p in v.model.named_parameters() if p.grad is not None})
            free(v)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    scale = max(float(g.abs().max()) for g in grads[0].values())
    error = max(float((grads[1][n] - g).abs().max()) for n, g in grads[0].items())
    return {"variant": name, "grad_max": scale, "relative_error": error / scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_args(parser)
    parser.add_argument("--variants", default="compiled,eager,step", help="comma list; the first is the baseline")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no variant after this long")
    parser.add_argument("--agree-steps", type=int, default=0)
    parser.add_argument("--grad-check", default="", help="a compiled variant to check against eager, e.g. step")
    parser.add_argument("--cost-steps", type=int, default=500_000)
    parser.add_argument("--cost-batch", type=int, default=2048)
    parser.add_argument("--fit-batch", action="store_true", help="halve --batch until the baseline fits in memory")
    run(parser.parse_args())


def start_baseline(spec: dict[str, Any], cfg, init, args, device, dtype, fit: bool) -> tuple[Variant, float]:
    """The baseline, compiled and warm; with ``fit``, at half the batch after each out-of-memory (down to 8)."""
    while True:
        variant = None
        try:
            variant = build_variant(spec, cfg, init, args, device, dtype)
            return variant, warm(variant, device, args.warmup)
        except torch.OutOfMemoryError:
            free(variant)
            if not fit or spec["batch"] <= 8:
                raise
            spec["batch"] //= 2


def run(args) -> dict[str, Any]:
    started = time.monotonic()
    torch._dynamo.config.cache_size_limit = 64  # every variant compiles the same step code for another model
    torch._dynamo.config.automatic_dynamic_shapes = False  # a variant at another batch: static, as in training
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = cuda
    dtype = torch.bfloat16 if cuda else None
    cfg = model_config(args.model, droptoken_rate=args.droptoken)
    init = {k: v.clone() for k, v in build_model(cfg, device=device).state_dict().items()}
    flops = estimate_flops(cfg, video_shape=(args.frames, args.size, args.size), audio_samples=args.audio,
                           text_len=16, num_captions=args.captions, droptoken=True, training=True).total
    result: dict[str, Any] = {"model": args.model, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                              "torch": torch.__version__, "train_gflops_per_sample": flops / 1e9,
                              "peak_tflops": PEAK / 1e12, "variants": {}}
    names = [n for n in args.variants.split(",") if n]
    base_spec = parse_variant(names[0], args.batch)
    base, result["baseline_first_steps_s"] = start_baseline(base_spec, cfg, init, args, device, dtype, args.fit_batch)
    result["baseline"] = names[0]
    write(result, args.json)
    best, best_speedup = None, 0.0  # the fastest other variant at the baseline's batch: for the loss agreement
    for name in names[1:]:
        if time.monotonic() - started > args.budget_s:
            result["variants"][name] = {"skipped": f"budget of {args.budget_s:.0f} s spent"}
            continue
        spec, variant = parse_variant(name, base_spec["batch"]), None
        result["variants"][name] = {"cut": "still compiling or running when the run ended"}
        write(result, args.json)
        graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
        try:
            variant = build_variant(spec, cfg, init, args, device, dtype)
            first_s = warm(variant, device, args.warmup)
            graphs, skips = counters["stats"]["unique_graphs"] - graphs, counters["inductor"]["cudagraph_skips"] - skips
            base_s, other_s = measure_pair(base, variant, device, args)
        except Exception as e:  # noqa: BLE001 - out of memory, no torchao, a kernel this GPU lacks: recorded
            free(variant)
            result["variants"][name] = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}
            write(result, args.json)
            continue
        entry = {**figures(other_s, spec["batch"], flops, cuda), "first_steps_s": first_s,
                 "new_graphs": graphs, "cudagraph_skips": skips,  # graphs: 1 for a break-free compiled step
                 "baseline": figures(base_s, base_spec["batch"], flops, cuda)}
        entry["speedup"] = entry["samples_per_s"] / entry["baseline"]["samples_per_s"]
        result["variants"][name] = entry
        if spec["batch"] == base_spec["batch"] and entry["speedup"] > best_speedup:
            free(best)
            best, best_speedup = variant, entry["speedup"]
        else:
            free(variant)
        write(result, args.json)
    summarise(result, base, best, cfg, init, args, device, cuda)
    emit(result, args.json)
    return result


def summarise(result: dict[str, Any], base: Variant, best: Variant | None, cfg, init, args, device,
              cuda: bool) -> None:
    """Baseline figures, the loss agreement, the gradient check, and the pre-training cost at the fastest rate
    (the baseline's median rate times each variant's side-by-side speedup)."""
    paired = [v["baseline"]["step_s"] for v in result["variants"].values() if "baseline" in v]
    step_s = statistics.median(paired) if paired else timed(base.step, device, args.iters)
    result["baseline_figures"] = figures(step_s, base.spec["batch"], result["train_gflops_per_sample"] * 1e9, cuda)
    speedups = {result["baseline"]: 1.0, **{k: v["speedup"] for k, v in result["variants"].items() if "speedup" in v}}
    rates = {k: result["baseline_figures"]["samples_per_s"] * x for k, x in speedups.items()}
    result["fastest"] = fastest = max(rates, key=rates.get)
    if args.agree_steps and best is not None:
        result["agreement"] = agreement(base, best, cfg, init, args, device)
    free(best)
    if args.grad_check:
        result["grad_check"] = grad_check(args.grad_check, args, device)
    hours = {k: args.cost_steps * args.cost_batch / r / 3600 for k, r in rates.items()}
    result["cost"] = {"steps": args.cost_steps, "batch": args.cost_batch, "gpu_hours": hours}
    print(f"{args.model} pre-training, {args.cost_steps} steps x batch {args.cost_batch} on one "
          f"{result['device']}: {hours[fastest]:.0f} GPU-hours at {rates[fastest]:.1f} samples/s ({fastest}); "
          f"baseline {result['baseline']}: {hours[result['baseline']]:.0f} GPU-hours", flush=True)


def write(result: dict[str, Any], path: str | None) -> None:
    """The results so far, replaced atomically (a run cut short by its time limit keeps them)."""
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
