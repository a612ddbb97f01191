"""``vatt index``: build a searchable index from folders of raw media (or shards), add to it, merge the parts of a
cluster build, and list, describe or remove the indexes under ``$VATT_HOME/indexes``."""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from vattcli.commands.index_admin import register_admin
from vattcli.errors import ConfigError, VattError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                  help="Index your own videos and audio for [bold]vatt retrieve[/] and [bold]vatt serve[/].")
err = Console(stderr=True, soft_wrap=True, highlight=False)

HOME_HELP = "Where index names live (default: $VATT_HOME/indexes, with VATT_HOME defaulting to ~/.vatt)."
SEARCH_HELP = ("exact (one matmul), approximate (a FAISS index tuned to recall@10 >= 0.95; needs the faiss extra) or "
               "auto: exact below 30k windows (where one matmul stays under 5 ms), approximate above.")


def _parse_bytes(text: str | None) -> int | None:
    """``"8GB"``, ``"512MB"``, ``"2e9"`` -> bytes."""
    if text is None:
        return None
    units = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "b": 1, "": 1}
    value = text.strip().lower()
    unit = next(u for u in sorted(units, key=len, reverse=True) if value.endswith(u))
    try:
        number = float(value[: len(value) - len(unit)] if unit else value)
    except ValueError:
        number = -1
    if not 0 < number < math.inf:
        raise ConfigError(f"--memory-budget {text}: expected a size such as 4GB or 512MB")
    return int(number * units[unit])


def _check_search(search: str) -> None:
    """Before any work: the index writer checks it too, but only once every file is indexed."""
    from vattcli.retrieval.index import SEARCH_CHOICES

    if search not in SEARCH_CHOICES:
        raise ConfigError(f"--search {search}: expected one of {', '.join(SEARCH_CHOICES)}")


def _part(part: str | None) -> Any:
    """The part this process indexes: ``--part I/N``; under torchrun, rank r of WORLD_SIZE as part r+1 (both:
    refused); else the whole list."""
    from vattcli.data.parts import Part, parse_part

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if part is not None:
            raise ConfigError("--part: not under torchrun (each rank takes its part from RANK and WORLD_SIZE)")
        return parse_part(f"{int(os.environ['RANK']) + 1}/{os.environ['WORLD_SIZE']}", "torchrun RANK")
    return parse_part(part) if part is not None else Part(1, 1)


def _check(window: float | None, stride: float | None, batch: int, workers: int, commit_every: int = 1) -> None:
    for option, value, low in (("--window", window, 0.1), ("--stride", stride, 0.1), ("--batch", batch, 1),
                               ("--workers", workers, 0), ("--commit-every", commit_every, 1)):
        if value is not None and not value >= low:
            raise ConfigError(f"{option}: expected at least {low:g}, got {value:g}")


def _files(videos: Path | None, files: Path | None) -> tuple[list[Path], Path | None]:
    from vattcli.data.walk import find_media, read_file_list

    if (videos is None) == (files is None):
        raise ConfigError("give one of --videos DIR or --files LIST (or --data SHARDS)")
    if videos is not None:
        root = videos.expanduser().resolve()
        found = find_media(root)
        if not found:
            raise ConfigError(f"{videos}: no media files found (looked for video and audio container suffixes)")
        return [p.resolve() for p in found], root
    listed = read_file_list(files)
    if not listed:
        raise ConfigError(f"{files}: lists no media files")
    return [p.resolve() for p in listed], None


def _model(ckpt: Path, device: str, verify: bool) -> tuple[Any, Any, Path, str | None, Any]:
    import torch

    from vattcli.api import VATT, load_model, load_tokenizer
    from vattcli.checkpoints import find_checkpoint, tokenizer_path
    from vattcli.eval.query import clip_spec_from_checkpoint

    folder = find_checkpoint(ckpt, verify=verify)
    spec = clip_spec_from_checkpoint(folder)
    model = load_model(folder, device=device, verify=verify)
    if not isinstance(model, VATT):
        raise ConfigError(f"{folder}: a fine-tuned classifier has no common spaces to search; use a pre-training "
                          "checkpoint")
    tok = load_tokenizer(folder, verify=verify).sha256 if tokenizer_path(folder) is not None else None
    return model, spec, folder, tok, torch.device(device)


def _command(words: list[str], index_home: Path | None = None, part: str | None = None) -> str:
    """The command line that repeats this one (resume hints): the options that pick the index and the part too."""
    words = [*words, *(["--index-home", str(index_home)] if index_home is not None else []),
             *(["--part", part] if part is not None else [])]
    return shlex.join(["vatt", "index", *words])


def _run(target: Path, files: list[Path], root: Path | None, *, ckpt: Path, window: float | None, stride: float | None,
         batch: int, workers: int, device: str, part: Any, resume: bool, overwrite: bool, search: str,
         budget: int | None, verify: bool, command: str, base: Any = None, commit_every: int = 4096) -> None:
    from vattcli.checkpoints import weights_hash
    from vattcli.indexing.build import BuildSettings
    from vattcli.indexing.run import Job, describe_search, recall_warnings, run_job

    model, spec, folder, tok, dev = _model(ckpt, device, verify)
    window = window or spec.seconds
    stride = stride or window / 2
    recorded = {"weights_hash": weights_hash(folder), "window": window, "stride": stride,
                "root": str(root) if root else None, "files": len(files), "parts": part.count,
                "extends": str(base.folder) if base is not None else None}
    settings = BuildSettings(window=window, stride=stride, batch=batch, workers=workers, chunk_windows=commit_every)
    if part.count > 1:
        err.print(f"part {part} from {part.source}", markup=False)
    clip = {"frames": spec.frames, "fps": spec.fps, "size": spec.size, "audio_rate": spec.audio_rate}
    write = dict(dims={"vt": model.config.d_vt, "va": model.config.d_va}, ckpt=str(folder), tokenizer_sha256=tok,
                 model_name=model.config.name, search=search, memory_budget=budget,
                 settings={"window": window, "stride": stride, "root": recorded["root"], "clip": clip,
                           "search": search, "memory_budget": budget})
    from_torchrun = part.source.startswith("torchrun")
    job = Job(target, files, settings, part, from_torchrun, resume, overwrite, base, recorded, command, write)
    index, report = run_job(job, model, spec, device=dev, console=err)
    if index is None:
        then = ("rank 0 merges the parts" if from_torchrun
                else f"when every part is done: {_command(['merge', str(target)])}")
        err.print(f"part {part} done ({report.files} files, {report.windows} windows); {then}", markup=False)
        return
    err.print(f"built index {index.folder}: {len(index)} windows from {index.info['num_sources']} files "
              f"({describe_search(index)})", markup=False)
    for line in recall_warnings(index):
        err.print(line, markup=False)


@app.command("build")
def build(
    name: str = typer.Argument(..., help="Index name (under the index home) or folder."),
    videos: Optional[Path] = typer.Option(None, "--videos", help="Folder of videos and audio files (recursive; "
                                          "any container FFmpeg reads)."),
    files: Optional[Path] = typer.Option(None, "--files", help="A text file listing media files, one per line."),
    data: Optional[Path] = typer.Option(None, "--data", help="Shards from `vatt preprocess` instead of raw media "
                                        "(one entry per clip, views averaged)."),
    ckpt: Path = typer.Option(..., "--ckpt", help="Pre-training checkpoint (or `vatt convert` output) to embed with."),
    window: Optional[float] = typer.Option(None, "--window", help="Window length in seconds (default: the "
                                           "checkpoint's clip, 3.2 s for VATT)."),
    stride: Optional[float] = typer.Option(None, "--stride", help="Seconds between window starts (default: half a "
                                           "window)."),
    batch: int = typer.Option(16, "--batch", help="Windows per forward pass."),
    workers: int = typer.Option(max(1, min(8, (os.cpu_count() or 2) - 1)), "--workers",
                                help="Decoding processes."),
    commit_every: int = typer.Option(4096, "--commit-every", help="Save finished files at least every N windows "
                                     "(and every minute): what a crash can cost."),
    device: str = typer.Option("cpu", "--device", help="Torch device (cpu, cuda, cuda:1). Under torchrun: "
                               "cuda:LOCAL_RANK when cuda is given."),
    part: Optional[str] = typer.Option(None, "--part", metavar="I/N", help="Index only part I of N (separate jobs; "
                                       "then `vatt index merge NAME`)."),
    resume: bool = typer.Option(False, "--resume", help="Go on with a build that stopped (finished files are kept)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index or unfinished build."),
    search: str = typer.Option("auto", "--search", help=SEARCH_HELP),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="Memory for the approximate index "
                                                "(e.g. 8GB): picks a compressed code when full vectors do not fit."),
    index_home: Optional[Path] = typer.Option(None, "--index-home", help=HOME_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking the checkpoint's weights hash."),
) -> None:
    """Index a folder of videos: cut each file into windows (--window, --stride), embed every window in S_vt and
    S_va (audio-only files in S_va), keep a thumbnail of each. Parallel (--workers; torchrun for several GPUs or
    machines), resumable (--resume) and searchable with [bold]vatt retrieve --index NAME[/]."""
    from vattcli.retrieval.names import build_folder, check_target, resolve_index

    _check(window, stride, batch, workers, commit_every)
    target = resolve_index(name, index_home)
    if data is not None:
        if videos is not None or files is not None:
            raise ConfigError("--data indexes shards; it does not go with --videos or --files")
        from vattcli.commands.retrieve import build_from_shards

        build_from_shards(name, data, ckpt, index_home, overwrite, device, not no_verify)
        return
    budget, chosen = _parse_bytes(memory_budget), _part(part)
    if not resume or not build_folder(target).is_dir():  # --resume with nothing to resume: a new build
        check_target(target, overwrite)
    found, root = _files(videos, files)
    _check_search(search)
    words = ["build", name, "--ckpt", str(ckpt), *(["--videos", str(videos)] if videos else ["--files", str(files)])]
    words += [w for opt, val in (("--window", window), ("--stride", stride), ("--search", search if search != "auto"
              else None), ("--memory-budget", memory_budget), ("--device", device if device != "cpu" else None))
              if val is not None for w in (opt, str(val))]
    command = _command(words, index_home, part)
    if chosen.source.startswith("torchrun"):
        command = f"the same torchrun launch of {command}"
    _run(target, found, root, ckpt=ckpt, window=window, stride=stride, batch=batch, workers=workers, device=_device(
         device), part=chosen, resume=resume, overwrite=overwrite, search=search, budget=budget,
         verify=not no_verify, command=command, commit_every=commit_every)


def _device(device: str) -> str:
    """Under torchrun, ``cuda`` means this rank's GPU."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


@app.command("add")
def add(
    name: str = typer.Argument(..., help="The index to extend."),
    videos: Optional[Path] = typer.Option(None, "--videos", help="Folder with the new footage."),
    files: Optional[Path] = typer.Option(None, "--files", help="A text file listing media files, one per line."),
    batch: int = typer.Option(16, "--batch", help="Windows per forward pass."),
    workers: int = typer.Option(max(1, min(8, (os.cpu_count() or 2) - 1)), "--workers", help="Decoding processes."),
    device: str = typer.Option("cpu", "--device", help="Torch device."),
    part: Optional[str] = typer.Option(None, "--part", metavar="I/N", help="Index only part I of N."),
    resume: bool = typer.Option(False, "--resume", help="Go on with an add that stopped."),
    index_home: Optional[Path] = typer.Option(None, "--index-home", help=HOME_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking the checkpoint's weights hash."),
) -> None:
    """Add new files to an index, with the index's checkpoint, window and stride; files already in it are skipped.
    The approximate index, if any, is built again for the new size."""
    from vattcli.retrieval.index import RetrievalIndex

    _check(None, None, batch, workers)
    chosen = _part(part)
    base = RetrievalIndex.load(name, home=index_home)
    settings = base.info.get("settings") or {}
    if not settings.get("window"):
        raise VattError(f"{base.folder}: built from shards, not from media files; rebuild it with "
                        "`vatt index build NAME --videos DIR`")
    found, root = _files(videos, files)
    new = [p for p in found if not _known(p, base.sources)]
    if not new:
        err.print(f"nothing to add: all {len(found)} files are already in index {base.name!r}", markup=False)
        return
    err.print(f"adding {len(new)} new files ({len(found) - len(new)} already indexed)", markup=False)
    words = ["add", name, *(["--videos", str(videos)] if videos else ["--files", str(files)])]
    _run(base.folder, new, root, ckpt=base.checkpoint, window=settings["window"], stride=settings["stride"],
         batch=batch, workers=workers, device=_device(device), part=chosen, resume=resume, overwrite=False,
         search=settings.get("search", "auto"), budget=settings.get("memory_budget"),
         verify=not no_verify, command=_command(words, index_home, part), base=base)


def _known(path: Path, sources: list[dict[str, Any]]) -> bool:
    """Whether ``add`` has seen ``path`` already: indexed, or skipped while it had its present size and
    modification time (a file that was broken then and has been replaced since is tried again)."""
    from vattcli.indexing.stream import source_record

    earlier = [s for s in sources if s["path"] == str(path)]
    if any(not s.get("skipped") for s in earlier):
        return True
    try:
        now = source_record(path)
    except OSError:
        return False
    return any((s.get("size"), s.get("mtime")) == (now["size"], now["mtime"]) for s in earlier)


@app.command("merge")
def merge(
    name: str = typer.Argument(..., help="The index whose parts (from --part I/N jobs) to join."),
    index_home: Optional[Path] = typer.Option(None, "--index-home", help=HOME_HELP),
    search: Optional[str] = typer.Option(None, "--search", help=SEARCH_HELP + " Default: as the parts were built."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="Memory for the approximate index "
                                                "(default: as the parts were built)."),
) -> None:
    """Join the parts of a build made by separate `--part I/N` jobs into the index (refuses while a part is
    unfinished, naming it)."""
    from vattcli.indexing.run import describe_search, merge_recorded, recall_warnings
    from vattcli.retrieval.names import resolve_index

    budget = _parse_bytes(memory_budget)
    if search is not None:
        _check_search(search)
    index = merge_recorded(resolve_index(name, index_home), search, budget, err,
                           resume_hint=_command(["build", name, "..."], index_home))
    err.print(f"merged index {index.folder}: {len(index)} windows from {index.info['num_sources']} files "
              f"({describe_search(index)})", markup=False)
    for line in recall_warnings(index):
        err.print(line, markup=False)


register_admin(app)

