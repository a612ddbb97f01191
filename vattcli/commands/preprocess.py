"""``vatt preprocess``: one subcommand per dataset, plus ``tokenizer`` and ``toy``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from vattcli.data.adapters import REGISTRY

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                  help="Turn raw datasets (official layouts) into training-ready tar shards; nothing is downloaded.")
console = Console(stderr=True)


def _options(items: list[str] | None) -> dict:
    from vattcli.config import parse_overrides

    return parse_overrides(items or [])


def _register(name: str) -> None:
    def command(
        root: Path = typer.Option(..., "--root", help="Folder holding the official annotation files and videos."),
        out: Path = typer.Option(..., "--out", help="Output folder; shards go to OUT/SPLIT/."),
        split: Optional[str] = typer.Option(None, help="Which split to write (default: the first listed)."),
        workers: int = typer.Option(max(1, (os.cpu_count() or 2) - 1), help="Worker processes for transcoding."),
        limit: Optional[int] = typer.Option(None, help="Process at most N source files (a quick look)."),
        resume: bool = typer.Option(False, "--resume", help="Keep finished shards and skip what they hold."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing shards in OUT/SPLIT."),
        fps: Optional[float] = typer.Option(None, help="Frame rate of the stored video (default: the dataset's)."),
        short_side: int = typer.Option(256, help="Resize the short side of stored frames to this many pixels."),
        audio_rate: int = typer.Option(48_000, help="Sample rate of the stored mono FLAC."),
        shard_samples: int = typer.Option(1000, help="Samples per shard (a shard also closes at ~300 MB)."),
        option: Optional[list[str]] = typer.Option(None, "--option", "-o",
                                                   help="Dataset option KEY=VALUE (e.g. num_captions=5)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        from vattcli.data.adapters import get_adapter
        from vattcli.data.preprocess import Settings, run_preprocess, summary_json, summary_table

        adapter = get_adapter(name, **_options(option))
        settings = Settings(fps=fps or adapter.fps, short_side=short_side, audio_rate=audio_rate)
        summary = run_preprocess(adapter, root, out, split or adapter.splits[0], settings=settings, workers=workers,
                                 limit=limit, resume=resume, overwrite=overwrite, max_samples=shard_samples,
                                 console=console)
        if as_json:
            typer.echo(summary_json(summary))
        else:
            Console().print(summary_table(summary))

    command.__doc__ = REGISTRY[name][2]
    app.command(name)(command)


for _name in REGISTRY:
    _register(_name)


@app.command("tokenizer")
def tokenizer(
    captions: list[Path] = typer.Option(..., "--captions", help="Caption text files (one per line) or caption.json."),
    out: Path = typer.Option(..., "--out", help="Output prefix: writes OUT.model and OUT.vocab."),
    vocab_size: int = typer.Option(65_536, help="Vocabulary size (2^16 as the paper) [P §4.1]."),
    lowercase: bool = typer.Option(True, help="Fold case before encoding."),
) -> None:
    """Train the SentencePiece caption tokenizer (id 0 = padding; at most 16 ids per caption when encoding)."""
    from vattcli.data.adapters.base import read_json
    from vattcli.data.text import TrainStats, read_caption_lines, train_tokenizer

    texts: list[str] = []
    undecodable = 0
    for path in captions:
        if path.suffix == ".json":
            data = read_json(path, "caption file")
            texts += [t for entry in data.values() for t in entry.get("text", []) if isinstance(t, str)]
        else:
            lines = read_caption_lines(path)
            texts += lines.lines
            undecodable += lines.num_undecodable
    stats = TrainStats()
    model = train_tokenizer(texts, out, vocab_size, lowercase=lowercase, stats=stats)
    Console().print(f"wrote {model}: vocabulary {stats.vocab_size}, {stats.num_captions} captions, "
                    f"{stats.num_empty} empty and {undecodable} undecodable lines skipped")


@app.command("toy")
def toy(
    out: Path = typer.Option(Path("data/toy"), "--out", help="Output folder (raw media, shards, tokenizer)."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same dataset."),
    workers: int = typer.Option(2, help="Worker processes for transcoding."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Generate the toy dataset (coloured shapes with matching sounds and captions) in the official layouts, then
    preprocess it with the real adapters."""
    from vattcli.data.toy import build_toy

    summary = build_toy(out, seed=seed, workers=workers)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    from rich.table import Table

    table = Table("set", "split", "written", "skipped", "shards", title=f"toy dataset in {out}")
    for name, splits in summary["sets"].items():
        for split, info in splits.items():
            skipped = sum(info["skipped"].values()) if isinstance(info["skipped"], dict) else info["skipped"]
            table.add_row(name, split, str(info["written"]), str(skipped), str(info["shards"]))
    Console().print(table)
    Console().print(f"tokenizer {summary['tokenizer']}, captions {summary['captions']}, "
                    f"built in {summary['seconds']:.1f} s")
