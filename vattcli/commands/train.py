"""``vatt pretrain`` and ``vatt finetune``."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)
OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. [bold]train.steps=1000 data.batch_size=256[/].")
RESUME = typer.Option(None, "--resume", help="Continue a run: 'latest', 'best', 'auto' (latest if any, else "
                      "start afresh) or a checkpoint folder.")
PRINT = typer.Option(False, "--print-config", help="Print the resolved config and exit.")


def pretrain(
    recipe: str = typer.Option("pretrain/vatt-bbs", "--recipe", "-r",
                               help="A recipe under recipes/ (e.g. pretrain/vatt-mbs) or a YAML path."),
    overrides: Optional[list[str]] = OVERRIDES,
    resume: Optional[str] = RESUME,
    print_config: bool = PRINT,
) -> None:
    """Pre-train VATT on HowTo100M + AudioSet shards with NCE + MIL-NCE and DropToken [P §3-4].

    Launch several processes with torchrun (or srun) for DDP; the global batch is split evenly over them."""
    from vattcli.config import dump_yaml, load_config
    from vattcli.train.config import PretrainConfig
    from vattcli.train.pretrain import run_pretrain

    cfg = load_config(PretrainConfig, recipe, overrides or [])
    if print_config:
        typer.echo(dump_yaml(cfg), nl=False)
        return
    summary = run_pretrain(cfg, resume=resume, console=console)
    if summary.get("checkpoint"):
        console.print(f"[green]done[/]: step {summary['step']} ({summary['stopped']}), checkpoint "
                      f"{summary['checkpoint']}")
