"""``vatt index list | info | remove``: what is under the index home."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vattcli.errors import VattError

out = Console()
err = Console(stderr=True, soft_wrap=True, highlight=False)
HOME_HELP = "Where index names live (default: $VATT_HOME/indexes, with VATT_HOME defaulting to ~/.vatt)."


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _search(info: dict[str, Any]) -> str:
    kinds = {s: p.get("factory", p.get("kind")) for s, p in (info.get("search") or {}).items()}
    return ", ".join(f"{s}: {k}" for s, k in kinds.items()) or "exact"


def list_command(index_home: Optional[Path] = typer.Option(None, "--index-home", help=HOME_HELP),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """The indexes under the index home, with their size and search kind (and builds in progress)."""
    from vattcli.retrieval.names import index_home as default_home
    from vattcli.retrieval.names import list_indexes
    from vattcli.retrieval.store import read_info

    home = Path(index_home) if index_home is not None else default_home()
    rows = []
    for name in list_indexes(home):
        info = read_info(home / name / "index.json")
        rows.append({"name": name, "items": info["num_items"], "sources": info.get("num_sources", 0),
                     "model": info.get("model_name"), "search": _search(info), "bytes": _size(home / name),
                     "created": info.get("created")})
    building = sorted(p.name[1:-len(".build")] for p in home.glob(".*.build")) if home.is_dir() else []
    if as_json:
        typer.echo(json.dumps({"home": str(home), "indexes": rows, "building": building}))
        return
    if not rows and not building:
        err.print(f"no indexes in {home}; build one: vatt index build NAME --videos DIR --ckpt CKPT", markup=False)
        return
    table = Table("name", "windows", "files", "model", "search", "size", "created", title=f"indexes in {home}")
    for r in rows:
        table.add_row(r["name"], str(r["items"]), str(r["sources"]), str(r["model"]), r["search"],
                      _human(r["bytes"]), str(r["created"]))
    out.print(table)
    for name in building:
        err.print(f"build in progress: {name} (vatt index build {name} ... --resume)", markup=False)


def info_command(name: str = typer.Argument(..., help="Index name or folder."),
                 index_home: Optional[Path] = typer.Option(None, "--index-home", help=HOME_HELP)) -> None:
    """Everything index.json records (checkpoint, counts, window, search plan and its measured recall), as JSON."""
    from vattcli.retrieval.index import RetrievalIndex

    index = RetrievalIndex.load(name, home=index_home)
    info = dict(index.info, folder=str(index.folder), bytes=_size(index.folder))
    typer.echo(json.dumps(info, indent=2, ensure_ascii=False))


def remove_command(name: str = typer.Argument(..., help="Index name or folder."),
                   yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
                   index_home: Optional[Path] = typer.Option(None, "--index-home", help=HOME_HELP)) -> None:
    """Delete an index (and any unfinished build of it). Asks first unless --yes."""
    from vattcli.locking import FolderLock
    from vattcli.retrieval.names import INFO, build_folder, missing_message, resolve_index

    folder = resolve_index(name, index_home)
    build = build_folder(folder)
    if not (folder / INFO).is_file() and not build.is_dir():
        raise VattError(missing_message(name, folder, index_home))
    if not yes:
        if not sys.stdin.isatty():
            raise VattError(f"{folder}: pass --yes to remove it without a question (no terminal to ask on)")
        if not typer.confirm(f"remove index {folder}?"):
            err.print(f"kept {folder}", markup=False)
            return
    removed = []
    if build.is_dir():  # refused while a build is writing a part (its lock is held by a live process)
        for part in sorted(p for p in build.iterdir() if p.is_dir()):
            FolderLock(part, what="index build").acquire().release()
        shutil.rmtree(build)
        removed.append(f"the unfinished build {build}")
    if (folder / INFO).is_file():  # only an index: a folder that merely sits next to a build is not touched
        shutil.rmtree(folder)
        removed.insert(0, str(folder))
    err.print(f"removed {' and '.join(removed)}", markup=False)


def register_admin(app: typer.Typer) -> None:
    app.command("list")(list_command)
    app.command("info")(info_command)
    app.command("remove")(remove_command)
