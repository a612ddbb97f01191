"""``vatt export``: one or all towers of a pre-training checkpoint as safetensors (or ONNX) folders."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def export(
    ckpt: Path = typer.Argument(..., help="A checkpoint folder (ckpt-*) or a run folder (its latest checkpoint)."),
    fmt: str = typer.Option("safetensors", "--format", help="safetensors or onnx (needs the onnx extra)."),
    tower: str = typer.Option("all", "--tower", help="video, audio, text or all."),
    out: Path = typer.Option(..., "--out", help="Output folder; each tower goes into OUT/<tower>/."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace tower folders that already exist."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking the weights against the sha256 in the "
                                   "checkpoint's meta.json."),
) -> None:
    """Export towers with the heads that reach the common spaces (video: S_va and S_vt; audio: S_va; text: S_vt).

    Load a safetensors tower with [bold]vattcli.export.load_tower(OUT/<tower>)[/]; it needs only vattcli.core.

    An ONNX tower (OUT/<tower>/model.onnx) takes any batch, clip size and caption length; text is (B, L) int64 ids.
    With onnxruntime installed, each ONNX tower is checked against PyTorch before it is kept."""
    from vattcli.export import export_checkpoint

    for path in export_checkpoint(ckpt, out, fmt=fmt, tower=tower, overwrite=overwrite, verify=not no_verify):
        console.print(f"[green]exported[/] {path}")
