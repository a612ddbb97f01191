"""One training step (forward, backward, AdamW) of a VATT encoder stack against an equal-shape stack of
``torch.nn.TransformerEncoderLayer(norm_first=True)``, timed side by side in one process.

Prints the ratio ours / baseline (lower is better; <= 1.0 means we are not slower). The two stacks are timed in
alternating rounds so machine noise hits both alike; the median round is reported.

    python bench/bench_backbone.py                       # CPU: Base at 785 tokens (DropToken 50 %), batch 1
    python bench/bench_backbone.py --device cuda --batch 64 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from timing import emit, timed

from vattcli.core.layers import Encoder
from vattcli.core.model import SIZES


def baseline_stack(spec, dropout: float) -> nn.Module:
    layer = nn.TransformerEncoderLayer(spec.d_model, spec.num_heads, spec.d_ff, dropout=dropout, activation="gelu",
                                       layer_norm_eps=1e-6, batch_first=True, norm_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, spec.num_layers, enable_nested_tensor=False),
                         nn.LayerNorm(spec.d_model, eps=1e-6), nn.Dropout(dropout))


def make_step(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", choices=sorted(SIZES))
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (quicker CPU runs)")
    parser.add_argument("--tokens", type=int, default=785, help="sequence length incl. AGG (785 = 50%% DropToken)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile both stacks")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    spec = SIZES[args.size]
    if args.layers:
        spec = type(spec)(args.layers, spec.d_model, spec.d_ff, spec.num_heads, spec.d_kv)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    x = torch.randn(args.batch, args.tokens, spec.d_model, device=device)
    ours = Encoder(spec.num_layers, spec.d_model, spec.d_ff, spec.num_heads, d_kv=spec.d_kv).to(device).train()
    base = baseline_stack(spec, 0.1).to(device).train()
    if args.compile:
        ours, base = torch.compile(ours), torch.compile(base)
    steps = {"ours": make_step(ours, x, dtype), "baseline": make_step(base, x, dtype)}
    for step in steps.values():  # warm-up (and compilation)
        timed(step, device, 2)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, device, args.iters))
    med = {name: statistics.median(t) for name, t in times.items()}
    result = {"size": args.size, "layers": spec.num_layers, "tokens": args.tokens, "batch": args.batch,
              "device": str(device), "dtype": args.dtype, "compile": args.compile,
              "ours_s": med["ours"], "baseline_s": med["baseline"], "ratio": med["ours"] / med["baseline"]}
    emit(result, args.json)
    print(f"ours / nn.TransformerEncoderLayer(norm_first=True): {result['ratio']:.3f} "
          f"(median of {args.rounds} rounds; < 1 is faster)")


if __name__ == "__main__":
    main()
