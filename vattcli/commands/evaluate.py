"""``vatt evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)
RETRIEVAL = ("youcook2", "msrvtt")


def evaluate(
    task: str = typer.Argument(..., help="youcook2 or msrvtt (zero-shot retrieval); a classification task "
                               "(kinetics400, mit, audioset, toy, ...) for a fine-tuned checkpoint; add "
                               "--zero-shot to classify a pre-training checkpoint by text prompts."),
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint folder, or a run folder for its latest."),
    data: Optional[str] = typer.Option(None, "--data", help="Shard folder (default: shards/TASK)."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Classify by the nearest prompt "
                                   "'a video of {label}' in the video-text space (beyond the paper)."),
    template: str = typer.Option("a video of {}", help="Prompt template for --zero-shot."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write every figure as JSON here "
                                       "(default: eval-TASK.json beside the checkpoint)."),
    index: Optional[str] = typer.Option(None, "--index", help="Also save the retrieval embeddings as an index "
                                        "with this name (see `vatt retrieve`)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    workers: int = typer.Option(2, help="Decoding worker processes."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking the weights against the sha256 in the "
                                   "checkpoint's meta.json."),
) -> None:
    """Evaluate a checkpoint with the paper's protocols and show our numbers beside the paper's.

    Retrieval: text->video and video->text, each video the mean of 4 clips; R@1/5/10, MedR, MeanR, pool size and
    missing clips. Classification: 4 windows x 3 crops with logits averaged (video), mAP/AUC/d' (AudioSet)."""
    from vattcli.eval.evaluate import report_table, run_retrieval, run_zero_shot
    from vattcli.checkpoints import find_checkpoint

    verify = not no_verify
    folder = find_checkpoint(ckpt, verify=verify)
    out = out or folder.parent / f"eval-{task}.json"
    if task in RETRIEVAL or (index and not zero_shot):
        run = run_retrieval(task, str(folder), data, out=out, device=device, num_workers=workers, console=console,
                            verify=verify)
        if index:
            from vattcli.retrieval.index import RetrievalIndex, resolve_index

            built = RetrievalIndex.build(resolve_index(index), run["embeddings"], ckpt=folder,
                                         tokenizer_sha256=run["tokenizer"].sha256, model_name=run["model"].config.name,
                                         overwrite=True, verify=verify)
            console.print(f"index saved: {getattr(built, 'folder', index)}")
        result = run["result"]
    elif zero_shot:
        result = run_zero_shot(task, str(folder), data, out=out, device=device, num_workers=workers,
                               template=template, console=console, verify=verify)["result"]
    else:
        from vattcli.train.finetune_eval import evaluate_finetuned

        result = evaluate_finetuned(folder, data, device=device, num_workers=workers, console=console)
        out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        Console().print(report_table(f"{task}: {folder}", result))
        console.print(f"all figures: {out}")
