"""What finishing raw training clips on the GPU costs (``data.augment_on=device``, the default on CUDA), measured side
by side in one process against the VATT pre-training step that consumes them:

  (1) the full pre-training step (``bench_pretrain_step.make_step``, eager, bf16, data on the device);
  (2) a raw batch: uint8 (B, 32, 224, 224, 3) from pinned memory to the GPU, then ``finish_video`` (colour jitter at
      p = 0.8 and [-1, 1] scaling, float32 (B, 3, 32, 224, 224));
  (3) what the workers-finished path copies instead: the float32 batch from pinned memory to the GPU.

Also checks ``finish_video`` on the GPU against the same op on the CPU.

    python bench/bench_finish.py --model vatt-bbs --batch 64          # on a GPU machine
    python bench/bench_finish.py --model vatt-tiny --batch 4 --frames 8 --size 64 --audio 12800 --device cpu
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench_pretrain_step import add_step_args, make_step
from timing import emit, timed

from vattcli.api import build_model, model_config
from vattcli.data.color import ColorParams, finish_video


def color_rows(batch: int, seed: int = 0) -> torch.Tensor:
    """Colour rows as the decoders draw them: applied with p = 0.8, DMVR's ranges."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        u = torch.rand(5, generator=g).tolist()
        rows.append(ColorParams(u[0] < 0.8, (2 * u[1] - 1) * 32 / 255, 0.6 + 0.8 * u[2], 0.6 + 0.8 * u[3],
                                (2 * u[4] - 1) * 0.2).as_tensor())
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_args(parser)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else None
    b, t, s = args.batch, args.frames, args.size
    raw = torch.randint(0, 256, (b, t, s, s, 3), dtype=torch.uint8)
    colors = color_rows(b)
    finished_host = finish_video(raw, colors)  # the float batch the workers would have sent
    if cuda:
        raw, finished_host = raw.pin_memory(), finished_host.pin_memory()

    check = slice(0, min(4, b))
    gpu = finish_video(raw[check].to(device), colors[check].to(device)).cpu()
    max_diff = float((gpu - finished_host[check]).abs().max())

    cfg = model_config(args.model, droptoken_rate=args.droptoken)
    batch = {"video": finished_host.to(device), "audio": torch.rand(b, args.audio, device=device) * 2 - 1,
             "text": torch.randint(1, cfg.vocab_size, (b, args.captions, 16), device=device)}
    step = make_step(build_model(cfg, device=device).train(), batch, dtype, compiled=False)

    def raw_path() -> None:
        finish_video(raw.to(device, non_blocking=True), colors.to(device, non_blocking=True))

    def float_copy() -> None:
        finished_host.to(device, non_blocking=True)

    parts = {"step": step, "raw_copy_and_finish": raw_path, "float_copy": float_copy}
    for fn in parts.values():
        timed(fn, device, 2)
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(args.rounds):
        for name, fn in parts.items():
            times[name].append(timed(fn, device, args.iters))
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    result = {"model": args.model, "batch": b, "clip": [t, s, s],
              "device": torch.cuda.get_device_name(device) if cuda else "cpu",
              "ms": {k: round(v, 2) for k, v in ms.items()},
              "raw_finish_share_of_step": ms["raw_copy_and_finish"] / ms["step"],
              "raw_vs_float_copy": ms["raw_copy_and_finish"] / ms["float_copy"],
              "gpu_vs_cpu_finish_max_abs_diff": max_diff}
    emit(result, args.json)


if __name__ == "__main__":
    main()
