"""``vatt preprocess``: one subcommand per dataset, plus ``tokenizer`` and ``toy``."""

from __future__ import annotations

import io
import json
import math
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vattcli.data.adapters import REGISTRY
from vattcli.errors import ConfigError, DataError

if TYPE_CHECKING:
    from vattcli.data.parts import Part

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                  help="Turn raw datasets (official layouts) into training-ready tar shards; nothing is downloaded.")
console = Console(stderr=True)

# (option, lowest, highest, what): checked before any work, so a typo is one line and exit 2, not a run in which
# every good file is skipped
LIMITS = {
    "fps": ("--fps", 0.1, 240.0, "frames per second"),
    "short_side": ("--short-side/--size", 16, 8192, "pixels"),
    "workers": ("--workers", 1, 1024, "processes"),
    "limit": ("--limit", 1, None, "source files"),
    "audio_rate": ("--audio-rate", 1000, 384_000, "samples per second"),
    "shard_samples": ("--shard-samples", 1, None, "samples per shard"),
    "sample": ("--sample", 1, None, "sources to probe"),
    "parts": ("--parts", 1, 100_000, "parts"),
}
FLAG_NOTES = {"audio_padded": "soundtrack shorter than the video, padded with silence",
              "partial": "kept with --keep-partial although truncated or corrupt"}


def _options(items: list[str] | None) -> dict:
    if not items:
        return {}  # vattcli.config imports torch: seconds of start-up a plain run does not need
    from vattcli.config import parse_overrides

    return parse_overrides(items)


def check_numbers(**values: float | int | None) -> None:
    """Raise ConfigError naming the first option (see LIMITS) whose value is out of range; None means unset."""
    for key, value in values.items():
        if value is None:
            continue
        option, low, high, what = LIMITS[key]
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            expected = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise ConfigError(f"{option}: expected {what} {expected}, got {value:g}")


def resume_command(name: str, params: dict[str, Any]) -> str:
    """The command line that continues a stopped run: the same options (without --overwrite), plus --resume."""
    words = ["vatt", "preprocess", name]
    for key, value in params.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if key == "option":
            words += [w for item in value for w in ("-o", item)]
        else:
            words += [flag] if value is True else [flag, str(value)]
    return shlex.join([*words, "--resume"])


def _register(name: str) -> None:
    def command(
        root: Path = typer.Option(..., "--root", help="Folder holding the official annotation files and videos."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder; shards go to OUT/SPLIT/ (required "
                                                                "unless --estimate)."),
        split: Optional[str] = typer.Option(None, help="Which split to write (default: the first listed)."),
        workers: int = typer.Option(max(1, (os.cpu_count() or 2) - 1), help="Worker processes for transcoding."),
        limit: Optional[int] = typer.Option(None, help="Process at most N source files (a quick look)."),
        resume: bool = typer.Option(False, "--resume", help="Keep finished shards and skip what they hold."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing shards in OUT/SPLIT."),
        fps: Optional[float] = typer.Option(None, help="Frame rate of the stored video (default: the dataset's)."),
        short_side: int = typer.Option(256, "--short-side", "--size",
                                       help="Resize the short side of stored frames to this many pixels."),
        audio_rate: int = typer.Option(48_000, help="Sample rate of the stored mono FLAC."),
        shard_samples: int = typer.Option(1000, help="Samples per shard (a shard also closes at ~300 MB)."),
        keep_partial: bool = typer.Option(False, "--keep-partial",
                                          help="Keep the decodable part of truncated or corrupt videos (marked "
                                               "partial: true) instead of skipping them."),
        option: Optional[list[str]] = typer.Option(None, "--option", "-o",
                                                   help="Dataset option KEY=VALUE (e.g. num_captions=5)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        part: Optional[str] = typer.Option(None, "--part", metavar="I/N",
                                           help="Write only part I of N (I counts from 1), e.g. 3/16; default: from "
                                                "SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX. Then `vatt preprocess "
                                                "merge OUT`."),
        parts: Optional[int] = typer.Option(None, "--parts", help="Number of parts for a Kubernetes indexed Job "
                                            "(its completions; or set VATT_PARTS)."),
        estimate: bool = typer.Option(False, "--estimate", help="Probe a sample of the sources and print media "
                                      "hours, core-hours at this machine's measured rate and output size; writes "
                                      "nothing."),
        sample: int = typer.Option(20, "--sample", help="Sources probed by --estimate."),
    ) -> None:
        from vattcli.data.adapters import get_adapter
        from vattcli.data.preprocess import Settings

        check_numbers(fps=fps, short_side=short_side, workers=workers, limit=limit, audio_rate=audio_rate,
                      shard_samples=shard_samples, sample=sample, parts=parts)
        if out is None and not estimate:
            raise ConfigError("--out: expected the output folder (shards go to OUT/SPLIT/)")
        chosen = None if estimate else _part(part, parts)
        adapter = get_adapter(name, **_options(option))
        split = split or adapter.splits[0]
        settings = Settings(fps=fps or adapter.fps, short_side=short_side, audio_rate=audio_rate,
                            keep_partial=keep_partial)
        if estimate:
            _estimate(adapter, root, split, settings, sample, limit, as_json)
            return
        again = resume_command(name, {"root": root, "out": out, "split": split, "workers": workers, "limit": limit,
                                      "fps": fps, "short_side": short_side, "audio_rate": audio_rate,
                                      "shard_samples": shard_samples, "keep_partial": keep_partial,
                                      "option": option, "part": str(chosen) if chosen else None})
        summary = _run(adapter, root, out, split, settings=settings, workers=workers, limit=limit, resume=resume,
                       overwrite=overwrite, max_samples=shard_samples, resume_command=again, part=chosen)
        if as_json:
            typer.echo(summary_json(summary))
        else:
            Console().print(summary_table(summary))
            Console(soft_wrap=True, highlight=False).print("\n".join(summary_lines(summary)), markup=False)
        check_written(summary, root)

    command.__doc__ = REGISTRY[name][2]
    app.command(name)(command)


def _part(text: str | None, parts: int | None) -> Part | None:
    """The part this run writes (``--part``, else the scheduler's environment), announced on the first line."""
    from vattcli.data.parts import describe, resolve_part

    chosen = resolve_part(text, parts, os.environ)
    if chosen is not None:
        console.print(describe(chosen), markup=False, highlight=False, soft_wrap=True)
    return chosen


def _run(adapter: Any, root: Path, out: Path, split: str, **kwargs: Any) -> dict[str, Any]:
    from vattcli.data.preprocess import run_preprocess

    return run_preprocess(adapter, root, out, split, console=console, **kwargs)


def _estimate(adapter: Any, root: Path, split: str, settings: Any, sample: int, limit: int | None,
              as_json: bool) -> None:
    from vattcli.data.estimate import estimate_lines, estimate_run

    result = estimate_run(adapter, root, split, settings=settings, sample=sample, limit=limit)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        Console(soft_wrap=True, highlight=False).print("\n".join(estimate_lines(result)), markup=False)


for _name in REGISTRY:
    _register(_name)


@app.command("merge")
def merge(
    out: Path = typer.Argument(..., help="The --out of the part runs."),
    split: Optional[str] = typer.Option(None, help="Which split to merge (default: the only one with parts)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Check that every part of a split run (`--part I/N`) is there and complete and that no sample key occurs
    twice, then write the dataset manifest the readers use (totals, skip counts by reason, hours)."""
    from vattcli.data.parts import merge_parts

    summary = merge_parts(out, split)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(summary["skipped"].items())) or "none"
    Console(soft_wrap=True, highlight=False).print(
        f"merged {summary['parts']} parts in {summary['folder']}: {summary['written']} samples in "
        f"{summary['shards']} shards, {summary['hours']:.3f} hours; skipped: {skipped}\n"
        f"manifest: {summary['manifest']}", markup=False)


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

    check_numbers(workers=workers)
    summary = build_toy(out, seed=seed, workers=workers)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    table = Table("set", "split", "written", "skipped", "shards", title=f"toy dataset in {out}")
    for name, splits in summary["sets"].items():
        for split, info in splits.items():
            skipped = sum(info["skipped"].values()) if isinstance(info["skipped"], dict) else info["skipped"]
            table.add_row(name, split, str(info["written"]), str(skipped), str(info["shards"]))
    Console().print(table)
    Console().print(f"tokenizer {summary['tokenizer']}, captions {summary['captions']}, "
                    f"built in {summary['seconds']:.1f} s")


def check_written(summary: dict[str, Any], root: Path) -> None:
    """Raise DataError when a run wrote no sample at all ("0 of N written" is a failure, not a success). A part
    whose share of a dataset with inputs is empty (more parts than sources) is a success: merge needs its manifest."""
    if summary["written"] or summary["already_done"]:
        return
    total = sum(summary["skipped"].values())
    if summary.get("part") and not total and summary["dataset_inputs"]:
        return
    where = f"{summary['dataset']}/{summary['split']}" + (f" part {summary['part']}" if summary.get("part") else "")
    if not total:
        raise DataError(f"0 of 0 written: {where} found no inputs under {root}")
    if summary["top_skips"]:
        top = summary["top_skips"][0]
        reason = f"top skip reason: {top['reason']} ({top['count']}), e.g. {_example(top)}"
    else:
        reason = "see the skip reasons"
    raise DataError(f"0 of {total} written for {where}: every input was skipped; {reason}; "
                    f"manifest {summary['manifest']}")


def _example(top: dict[str, Any]) -> str:
    return top["message"] if top["item"] in top["message"] else f"{top['item']}: {top['message']}"


def summary_table(summary: dict[str, Any]) -> Table:
    part = f" part {summary['part']}" if summary.get("part") else ""
    table = Table(title=f"{summary['dataset']} / {summary['split']}{part} -> {summary['out']}", show_header=False)
    table.add_row("written", str(summary["written"]))
    if summary["already_done"]:
        table.add_row("already done (resume)", str(summary["already_done"]))
    for reason, count in sorted(summary["skipped"].items()):
        table.add_row(f"skipped: {reason}", str(count))
    for flag, count in sorted(summary["flagged"].items()):
        table.add_row(f"flagged: {flag}", str(count))
    table.add_row("hours of media", f"{summary['hours']:.3f}")
    table.add_row("time", f"{summary['seconds']:.1f} s ({summary['realtime_per_core']:.1f}x real time per core)")
    return table


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Plain lines printed under the table: the top skip reasons with one example each, the flags, the manifest."""
    lines = []
    if summary["top_skips"]:
        lines.append("top skip reasons:")
        lines += [f"  {t['reason']} ({t['count']}), e.g. {_example(t)}" for t in summary["top_skips"]]
    lines += [f"flagged {flag} ({count}): {FLAG_NOTES.get(flag, flag)}" for flag, count in
              sorted(summary["flagged"].items())]
    lines.append(f"manifest: {summary['manifest']}")
    return lines


def summary_json(summary: dict[str, Any]) -> str:
    buf = io.StringIO()
    json.dump(summary, buf, indent=2)
    return buf.getvalue()
