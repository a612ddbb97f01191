"""The full VATT pre-training step (all three modalities, heads, NCE + MIL-NCE, backward, Adam) with the data already
on the device: samples/s and MFU against the dense bf16 peak (989 TFLOP/s on H100/H200), eager and compiled, measured
side by side in one process.

    python bench/bench_pretrain_step.py --model vatt-bbs --batch 64 --device cuda      # the GPU check
    python bench/bench_pretrain_step.py --model vatt-tiny --batch 8 --frames 8 --size 64 --audio 12800   # CPU smoke

FLOPs come from ``estimate_flops`` (full multiply-add count, training = 3 x forward, DropToken applied), so MFU is
model FLOPs utilisation, not hardware utilisation.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from timing import emit, timed

from vattcli.api import build_model, estimate_flops, model_config
from vattcli.core.losses import PretrainLoss

PEAK = 989e12


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
    net = torch.compile(model) if compiled else model
    loss_fn = PretrainLoss()
    fused = {"fused": True} if batch["video"].is_cuda else {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7, **fused)

    def step() -> None:
        with torch.autocast(batch["video"].device.type, dtype=dtype, enabled=dtype is not None):
            out = net(video=batch["video"], audio=batch["audio"], text=batch["text"])
            loss = loss_fn(out)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_args(parser)
    parser.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else None
    cfg = model_config(args.model, droptoken_rate=args.droptoken)
    batch = {"video": torch.rand(args.batch, 3, args.frames, args.size, args.size, device=device) * 2 - 1,
             "audio": torch.rand(args.batch, args.audio, device=device) * 2 - 1,
             "text": torch.randint(1, cfg.vocab_size, (args.batch, args.captions, 16), device=device)}
    flops = estimate_flops(cfg, video_shape=(args.frames, args.size, args.size), audio_samples=args.audio,
                           text_len=16, num_captions=args.captions, droptoken=True, training=True).total
    steps = {}
    for mode in args.modes.split(","):
        model = build_model(cfg, device=device).train()
        steps[mode] = make_step(model, batch, dtype, compiled=mode == "compiled")
        timed(steps[mode], device, args.warmup)
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(args.rounds):
        for mode, step in steps.items():
            times[mode].append(timed(step, device, args.iters))
    result = {"model": args.model, "batch": args.batch, "device": torch.cuda.get_device_name(device)
              if device.type == "cuda" else "cpu", "train_gflops_per_sample": flops / 1e9}
    for mode, t in times.items():
        sec = statistics.median(t)
        result[mode] = {"step_s": sec, "samples_per_s": args.batch / sec,
                        "mfu": flops * args.batch / sec / PEAK if device.type == "cuda" else None}
    if "eager" in result and "compiled" in result:
        result["compiled_speedup"] = result["eager"]["step_s"] / result["compiled"]["step_s"]
    emit(result, args.json)


if __name__ == "__main__":
    main()
