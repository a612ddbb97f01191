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


def finetune(
    task: str = typer.Argument(..., help="kinetics400, kinetics600, kinetics700, mit, audioset, esc50, imagenet, "
                               "ucf101, hmdb51, toy, or any recipe under recipes/finetune."),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help="Pre-training checkpoint (a ckpt-* folder, or a run "
                                       "folder for its latest). Without it the backbone starts from scratch."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe (default: finetune/TASK)."),
    overrides: Optional[list[str]] = OVERRIDES,
    linear_probe: bool = typer.Option(False, "--linear-probe", help="Frozen backbone + low-rank classifier, "
                                      "averaged over the official splits (ucf101, hmdb51, esc50)."),
    resume: Optional[str] = RESUME,
    print_config: bool = PRINT,
) -> None:
    """Fine-tune one backbone of a pre-trained VATT on a classification task, then evaluate it [P §4.2].

    Video tasks run at 32 frames x 320 px with the positional tables resampled, no DropToken, and are evaluated on
    4 windows x 3 crops; the result goes to RUN/eval.json beside the paper's number."""
    from vattcli.config import dump_yaml, load_config
    from vattcli.train.config import FinetuneConfig
    from vattcli.train.finetune import run_finetune
    from vattcli.train.probe_task import run_linear_probe

    items = list(overrides or [])
    if ckpt:
        items.append(f"ckpt={ckpt}")
    if linear_probe:
        items.append("head.linear_probe=true")
    cfg = load_config(FinetuneConfig, recipe or f"finetune/{task}", items)
    if print_config:
        typer.echo(dump_yaml(cfg), nl=False)
        return
    if cfg.head.linear_probe:
        summary = run_linear_probe(cfg, console=console)
    else:
        summary = run_finetune(cfg, resume=resume, console=console)
    result = summary.get("eval") or {}
    if result:
        shown = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        console.print(f"[green]evaluation[/]: {shown}  (paper: {result.get('paper') or 'n/a'})")
