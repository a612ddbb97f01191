"""Where indexes live and what a name stands for.

A bare name (``--index toy``) is ``$VATT_HOME/indexes/<name>``, with ``VATT_HOME`` defaulting to ``~/.vatt``;
anything that looks like a path (contains a slash, starts with ``.`` or ``~``, or is an existing folder) is used as a
path. A build in progress lives in a hidden sibling ``.<name>.build`` until it is merged into ``<name>``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vattcli.errors import VattError

INFO = "index.json"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def index_home() -> Path:
    """``$VATT_HOME/indexes`` (``VATT_HOME`` defaults to ``~/.vatt``), read at call time."""
    return Path(os.environ.get("VATT_HOME") or "~/.vatt").expanduser() / "indexes"


def list_indexes(home: Path | None = None) -> list[str]:
    """Names of the complete indexes under ``home`` (default ``index_home()``)."""
    home = index_home() if home is None else Path(home)
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / INFO).is_file())


def looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith((".", "~"))


def resolve_index(name_or_path: str | os.PathLike[str], home: Path | None = None) -> Path:
    """The folder an index name or path stands for (it need not exist yet)."""
    text = os.fspath(name_or_path)
    if looks_like_path(text) or Path(text).is_dir():
        return Path(text).expanduser()
    if not _NAME_RE.fullmatch(text):
        raise VattError(f"index name {text!r}: expected letters, digits, '.', '_' or '-' (or a folder path)")
    return (index_home() if home is None else Path(home)) / text


def build_folder(index: Path) -> Path:
    """Where the parts of a build (or an ``add``) of ``index`` are kept until they are merged."""
    return index.with_name(f".{index.name}.build")


def check_target(folder: Path, overwrite: bool) -> None:
    """Refuse to build over an existing index (or any existing path) unless ``overwrite``."""
    if folder.exists() and not overwrite:
        raise VattError(f"{folder}: an index (or other file) already exists there; pass --overwrite to replace it")
    if folder.exists() and not (folder / INFO).is_file() and any(folder.iterdir()):
        raise VattError(f"{folder}: exists and is not a retrieval index; refusing to replace it")


def missing_message(given: str, folder: Path, home: Path | None) -> str:
    if looks_like_path(given) or folder.exists():
        return f"{folder}: not a retrieval index (no {INFO})"
    home = index_home() if home is None else Path(home)
    names = list_indexes(home)
    available = ", ".join(names) or "none (build one: vatt index build NAME --videos DIR --ckpt CKPT)"
    return f"index {given!r} not found in {home}; available: {available}"


def source_name(path: str, root: str | None) -> str:
    """``path`` as shown to a client: relative to ``root`` when inside it, else its base name (a relative path from
    a shard manifest is kept unless it climbs out with '..')."""
    if root and os.path.isabs(path):
        relative = os.path.relpath(path, root)
        if relative != os.curdir and not relative.startswith(os.pardir):
            return Path(relative).as_posix()
    if os.path.isabs(path) or os.path.normpath(path).startswith(os.pardir):
        return os.path.basename(path)
    return Path(os.path.normpath(path)).as_posix()
