"""``vatt retrieve``: build a retrieval index from shards, or search one with a caption, a video or an audio file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vattcli.errors import VattError

console = Console()
err_console = Console(stderr=True)


def retrieve(
    query: Optional[str] = typer.Argument(None, help="A caption to search for (text-to-video, S_vt)."),
    index: Optional[str] = typer.Option(None, "--index", "-i", metavar="NAME_OR_PATH",
                                        help="The index to search: a name under the index home, or a folder."),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, help="How many results to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    video: Optional[Path] = typer.Option(None, "--video", help="Query with a video file (its middle window; "
                                         "video-to-video in S_va)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Query with an audio file (its middle window; "
                                         "audio-to-video in S_va)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint to encode with. Queries: default the one "
                                        "that built the index (another must have the same weights). --build: "
                                        "required."),
    build: Optional[str] = typer.Option(None, "--build", metavar="NAME", help="Build an index NAME (or folder) "
                                        "from --data with --ckpt instead of searching."),
    data: Optional[Path] = typer.Option(None, "--data", help="Shard folder (from `vatt preprocess`) to index."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index of that name."),
    index_home: Optional[Path] = typer.Option(None, "--index-home", help="Where index names live (default: "
                                              "$VATT_HOME/indexes, with VATT_HOME defaulting to ~/.vatt)."),
    device: str = typer.Option("cpu", "--device", help="Torch device for the model (cpu, cuda, cuda:1)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking the checkpoint's weights against the "
                                   "sha256 in its meta.json."),
) -> None:
    """Zero-shot retrieval over an index of clip embeddings [P §4.2.4].

    Text queries search the video-text space, video and audio queries the video-audio space, by exact cosine
    similarity. Build an index first: [bold]vatt retrieve --build toy --data SHARDS --ckpt RUN[/]."""
    modes = [name for name, given in (("a text query", query is not None), ("--video", video is not None),
                                      ("--audio", audio is not None), ("--build", build is not None)) if given]
    if len(modes) != 1:
        raise VattError("give exactly one of a text query, --video, --audio or --build"
                        + (f" (got {' and '.join(modes)})" if modes else ""))
    if build is not None:
        build_from_shards(build, data, ckpt, index_home, overwrite, device, not no_verify)
        return
    if index is None:
        raise VattError("--index NAME_OR_PATH is required to search (see `vatt retrieve --help`)")
    if data is not None or overwrite:
        raise VattError("--data and --overwrite only go with --build")
    _search(index, index_home, ckpt, device, query, video, audio, top_k, as_json, not no_verify)


def build_from_shards(name: str, data: Path | None, ckpt: Path | None, home: Path | None, overwrite: bool,
                      device: str, verify: bool) -> None:
    """An index of the clips of a shard folder (one entry per clip, its evaluation views averaged)."""
    from vattcli.api import load_model
    from vattcli.data.text import TextTokenizer
    from vattcli.eval.embed import embed_clips
    from vattcli.retrieval.index import RetrievalIndex, check_target, resolve_index
    from vattcli.eval.query import clip_spec_from_checkpoint
    from vattcli.checkpoints import find_checkpoint, tokenizer_path

    if data is None or ckpt is None:
        raise VattError("building from shards needs --data SHARDS and --ckpt CKPT")
    target = resolve_index(name, home)
    check_target(target, overwrite)
    folder = find_checkpoint(ckpt, verify=verify)
    spec = clip_spec_from_checkpoint(folder)
    model = load_model(folder, device=device, verify=verify)
    tok_file = tokenizer_path(folder)
    tokenizer = TextTokenizer.load(tok_file) if tok_file is not None else None
    embeddings = embed_clips(model, data, spec, tokenizer, device=device, console=err_console)
    built = RetrievalIndex.build(target, embeddings, ckpt=folder, tokenizer_sha256=tokenizer and tokenizer.sha256,
                                 model_name=model.config.name, overwrite=overwrite, verify=verify)
    err_console.print(f"[green]built[/] index {built.folder} ({len(built)} clips) with {folder}")


def _search(index_name: str, home: Path | None, ckpt: Path | None, device: str, text: str | None,
            video: Path | None, audio: Path | None, top_k: int, as_json: bool, verify: bool) -> None:
    from vattcli.api import open_index

    index, ckpt, model = open_index(index_name, home=home, ckpt=ckpt, device=device, verify=verify)
    space, described, vector = _encode_query(model, ckpt, index, text, video, audio, verify)
    hits = index.search(vector, space=space, top_k=top_k)
    if as_json:
        results = [{"rank": h.rank, "score": h.score, **h.item} for h in hits]
        typer.echo(json.dumps({"index": str(index.folder), "space": space, "query": described,
                               "results": results}, ensure_ascii=False))
    else:
        console.print(_table(index.name, space, described, hits, (index.info.get("settings") or {}).get("root")))


def _encode_query(model: Any, ckpt: Path, index: Any, text: str | None, video: Path | None,
                  audio: Path | None, verify: bool) -> tuple[str, dict[str, str], Any]:
    """(space, the query as shown, its embedding): text -> S_vt; a video or audio file -> S_va."""
    from vattcli.api import load_tokenizer
    from vattcli.eval.query import clip_spec_from_checkpoint, encode_audio_file, encode_text, encode_video_file

    spec = clip_spec_from_checkpoint(ckpt)
    if video is not None:
        return "va", {"video": os.fspath(video)}, encode_video_file(model, video, spec)
    if audio is not None:
        return "va", {"audio": os.fspath(audio)}, encode_audio_file(model, audio, spec)
    tokenizer = load_tokenizer(ckpt, verify=verify)
    if index.tokenizer_sha256 and tokenizer.sha256 != index.tokenizer_sha256:
        raise VattError(f"{ckpt}: tokenizer sha256 {tokenizer.sha256} differs from {index.tokenizer_sha256}, "
                        f"the one index {index.name!r} was built with")
    return "vt", {"text": text}, encode_text(model, tokenizer, [text], max_len=spec.text_len)[0]


def _time_range(item: dict[str, Any]) -> str:
    start, end = item.get("start"), item.get("end")
    if start is None:
        return ""
    return f"{float(start):.1f}-{float(end):.1f} s" if end is not None else f"{float(start):.1f} s-"


def _table(name: str, space: str, described: dict[str, str], hits: list, root: str | None) -> Table:
    from vattcli.retrieval.names import source_name

    (kind, value), = described.items()
    table = Table("rank", "score", "source", "time", "caption / label",
                  title=Text(f"{name} ({space} space): {kind} {value!r}"))
    for hit in hits:
        item = hit.item
        text = item.get("caption") or ("" if item.get("label") is None else str(item["label"]))
        table.add_row(str(hit.rank), f"{hit.score:.4f}", Text(source_name(str(item["source"]), root) if item.get("source") else str(item.get("key") or "")),
                      _time_range(item), Text(text))
    return table
