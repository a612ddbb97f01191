"""``vatt convert``: the released TensorFlow checkpoints as vatt checkpoint folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from vattcli.errors import ConfigError

console = Console(stderr=True, soft_wrap=True)

NEXT_STEPS = {
    "pretrain": ["vatt evaluate youcook2 --ckpt {out} --data shards/youcook2 --index youcook2",
                 'vatt retrieve "cut onions" --index youcook2',
                 "vatt finetune kinetics400 --ckpt {out}",
                 "vatt export {out} --tower all --out {out}-export"],
    "classifier": ["vatt evaluate {task} --ckpt {out} --data shards/{task}",
                   "vatt export {out} --out {out}-export"],
}


def _heads(values: list[str]) -> dict[str, int]:
    heads: dict[str, int] = {}
    for value in values:
        tower, _, count = value.partition("=")
        if tower not in ("video", "audio", "text", "shared") or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--heads {value!r}: expected TOWER=N with TOWER video, audio, text or shared "
                              "and N >= 1, e.g. --heads video=12")
        heads[tower] = int(count)
    return heads


def convert(
    ckpt: Path = typer.Argument(..., help="A TensorFlow checkpoint: its prefix (.../ckpt-500000, beside the .index "
                                "and .data files), the .index file, or a folder holding a `checkpoint` file (its "
                                "latest is taken)."),
    out: Path = typer.Option(..., "--out", help="The vatt checkpoint folder to write."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="The DMVR word vocabulary the released models read "
                                         "(howto100m_en.txt in misc_data.tgz); stored as tokenizer.txt."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Class names, one per line in the official class "
                                          "order (fine-tuned classifiers); stored as labels.txt."),
    heads: Optional[list[str]] = typer.Option(None, "--heads", help="Head count per tower, TOWER=N (video, audio, "
                                              "text; shared for VATT-MA). Needed only when d_kv is not 64."),
    task: Optional[str] = typer.Option(None, "--task", help="Task of a fine-tuned classifier (default: from its "
                                       "class count: 400/600/700 Kinetics, 339 MiT, 527 AudioSet)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Convert an official VATT checkpoint (pre-trained BBS/MBS/LBS or MA-Medium; fine-tuned ViT or WaT classifier)
    into a vatt checkpoint folder that every command takes. No TensorFlow needed; every crc32c is verified; every
    size is read from the tensor shapes."""
    from vattcli.convert.run import convert_checkpoint

    summary = convert_checkpoint(ckpt, out, vocab=vocab, labels=labels, heads=_heads(heads or []), task=task,
                                 overwrite=overwrite)
    cfg = summary.model
    table = Table("", "", title=f"converted {ckpt} -> {summary.out}", show_header=False)
    table.add_row("kind", f"{summary.kind} ({cfg.name})")
    if summary.kind == "pretrain-ma":
        towers = [("shared", cfg.video)]
    elif summary.kind == "pretrain-ms":
        towers = [("video", cfg.video), ("audio", cfg.audio), ("text", cfg.text)]
    else:
        towers = [(summary.kind.split("-")[1], cfg.audio if summary.kind.endswith("audio") and not cfg.shared
                   else cfg.video)]
    for name, spec in towers:
        table.add_row(name, f"{spec.num_layers} layers, d_model {spec.d_model}, MLP {spec.d_ff}, "
                            f"{spec.num_heads} heads x {spec.d_kv}")
    if summary.num_classes:
        table.add_row("classes", f"{summary.num_classes} (task {summary.task})")
    else:
        table.add_row("common spaces", f"S_va {cfg.d_va}, S_vt {cfg.d_vt}; vocabulary {cfg.vocab_size} x "
                                       f"{cfg.word_dim}")
    table.add_row("tensors", f"{summary.mapped} mapped, {summary.skipped} skipped (optimizer state, counters)")
    table.add_row("parameters", f"{summary.parameters / 1e6:.1f} M")
    table.add_row("time", f"{summary.seconds:.1f} s")
    Console().print(table)
    steps = NEXT_STEPS["pretrain" if summary.kind.startswith("pretrain") else "classifier"]
    console.print("next: " + "\n      ".join(s.format(out=summary.out, task=summary.task or "TASK") for s in steps),
                  highlight=False, markup=False)
