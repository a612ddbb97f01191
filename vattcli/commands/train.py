"""``vatt pretrain`` and ``vatt finetune``."""

from __future__ import annotations

import shlex
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True)
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}  # exit codes of a run stopped by a signal (design.md, Errors)
OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. [bold]train.steps=1000 data.batch_size=256[/].")
RESUME = typer.Option(None, "--resume", help="Continue a run: 'latest', 'best', 'auto' (latest if any, else "
                      "start afresh: for jobs that restart, torchrun --max-restarts or a requeued Slurm job) or a "
                      "checkpoint folder.")
PRINT = typer.Option(False, "--print-config", help="Print the resolved config and exit.")
OVERWRITE = typer.Option(False, "--overwrite", help="Delete the checkpoints, best.json and metrics of an earlier run "
                         "in the run folder, then start afresh.")
NO_VERIFY = typer.Option(False, "--no-verify", help="Load checkpoints without checking their weights hash.")


def _stopped_by_signal(summary: dict[str, Any], argv: list[str]) -> None:
    """A run stopped by SIGINT/SIGTERM has saved its checkpoint: say where and how to continue, then exit 130/143
    so a job scheduler sees an interrupted job."""
    code = SIGNAL_EXIT.get(summary.get("stopped", ""))
    if code is None:
        return
    if summary.get("checkpoint"):  # the main rank, which saved it
        again = shlex.join(["vatt", *argv, "--resume", "latest"])
        console.print(f"stopped by {summary['stopped']} at step {summary['step']}: checkpoint "
                      f"{escape(summary['checkpoint'])}; continue with: {escape(again)}", highlight=False)
    raise typer.Exit(code)


def _print_result(task: str, summary: dict[str, Any]) -> None:
    """The evaluation figures, one per line; the paper's figure only for the model it was measured with."""
    result, model = summary.get("eval") or {}, summary.get("model", "?")
    if not result:
        return
    console.print(f"[green]evaluation[/] of {model} on {task}:", highlight=False)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            console.print(f"  {key:<20} {value if isinstance(value, int) else f'{value:.2f}'}", highlight=False)
    paper = {k: v for k, v in (result.get("paper") or {}).items() if k != "metric"}
    metric = (result.get("paper") or {}).get("metric", "")
    if model in paper:
        console.print(f"  {'paper (' + metric + ')':<20} {paper[model]}", highlight=False)
    elif paper:
        console.print(f"  paper figure is for {', '.join(paper)}, not comparable with {model}", highlight=False)


def pretrain(
    recipe: str = typer.Option("pretrain/vatt-bbs", "--recipe", "-r",
                               help="A recipe under recipes/ (e.g. pretrain/vatt-mbs) or a YAML path."),
    overrides: Optional[list[str]] = OVERRIDES,
    resume: Optional[str] = RESUME,
    overwrite: bool = OVERWRITE,
    no_verify: bool = NO_VERIFY,
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
    summary = run_pretrain(cfg, resume=resume, overwrite=overwrite, verify=not no_verify, console=console)
    _stopped_by_signal(summary, ["pretrain", "--recipe", recipe, *(overrides or [])])
    if summary.get("checkpoint"):
        console.print(f"[green]done[/]: step {summary['step']}, checkpoint {escape(summary['checkpoint'])}",
                      highlight=False)


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
    overwrite: bool = OVERWRITE,
    no_verify: bool = NO_VERIFY,
    print_config: bool = PRINT,
) -> None:
    """Fine-tune one backbone of a pre-trained VATT on a classification task, then evaluate it [P §4.2].

    Video tasks run at 32 frames x 320 px with the positional tables resampled, no DropToken, and are evaluated on
    4 windows x 3 crops; the result goes to RUN/eval.json beside the paper's number."""
    from vattcli.config import dump_yaml, load_config
    from vattcli.train.config import FinetuneConfig
    from vattcli.train.finetune import run_finetune
    from vattcli.train.probe_task import run_linear_probe
    from vattcli.train.transfer import adopt_checkpoint_model

    items = list(overrides or [])
    if ckpt:
        items.append(f"ckpt={ckpt}")
    if linear_probe:
        items.append("head.linear_probe=true")
    cfg = load_config(FinetuneConfig, recipe or f"finetune/{task}", items)
    if print_config:  # the network actually trained: the checkpoint's when --ckpt is given
        typer.echo(dump_yaml(adopt_checkpoint_model(cfg, console)), nl=False)
        return
    if cfg.head.linear_probe:
        summary = run_linear_probe(cfg, verify=not no_verify, console=console)
    else:
        summary = run_finetune(cfg, resume=resume, overwrite=overwrite, verify=not no_verify, console=console)
    argv = ["finetune", task, *(["--ckpt", ckpt] if ckpt else []), *(["--recipe", recipe] if recipe else []),
            *(overrides or [])]
    _stopped_by_signal(summary, argv)
    _print_result(cfg.task, summary)
