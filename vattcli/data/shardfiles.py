"""Shard files: expanding shard patterns and folders into file lists, and reading one tar shard's samples.

Samples are dicts ``{"__key__", "__shard__", "__index__" (position in its shard), ext: bytes}``; ``json`` members are
parsed. Tar members are read in memory in streaming mode, never extracted; a member whose name holds a path (``/``,
``\\``, ``..``, absolute) is skipped and counted as ``unsafe_name``, so no key reaches outside its shard (design.md,
Security). A corrupt shard or member is skipped with a logged warning and counted in ``skipped`` (reason -> count),
never fatal.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from vattcli.data.shards import MANIFEST, is_plain_name, read_manifest
from vattcli.errors import DataError

log = logging.getLogger(__name__)
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000000..000009}`` (zero padding kept) and ``{a,b}`` groups, left to right."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numeric = _RANGE.fullmatch(body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        options = [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [head + option + rest for option in options for rest in expand_braces(tail)]


def expand_urls(urls: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """Shard paths from a folder (its manifest, else its ``*.tar``), a brace/glob pattern, or a list of those."""
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    paths: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            paths.extend(_folder_shards(Path(item)))
            continue
        for path in expand_braces(item):
            found = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
            if not found or not all(os.path.isfile(p) for p in found):
                raise DataError(f"{path}: no such shard file")
            paths.extend(found)
    if not paths:
        raise DataError(f"{urls}: no shards found")
    return paths


def _folder_shards(folder: Path) -> list[str]:
    if (folder / MANIFEST).exists():
        return [str(folder / s["name"]) for s in read_manifest(folder)["shards"]]
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    if not shards:
        raise DataError(f"{folder}: no {MANIFEST} and no .tar shards")
    return shards


def _split_name(name: str) -> tuple[str, str] | None:
    """WebDataset naming: the key runs to the first dot of the member's name, the extension is the rest."""
    return tuple(name.split(".", 1)) if "." in name.strip(".") else None


def _finish_sample(sample: dict[str, Any], skipped: Counter) -> dict[str, Any] | None:
    for ext in [e for e in sample if not e.startswith("__") and (e == "json" or e.endswith(".json"))]:
        try:
            sample[ext] = json.loads(sample[ext])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("%s: sample %s has an unreadable %s member (%s); skipped", sample["__shard__"],
                        sample["__key__"], ext, e)
            skipped["bad_member"] += 1
            return None
    return sample


def _ends_cleanly(path: str) -> bool:
    """Whether an uncompressed tar ends with its end-of-archive zero blocks: tarfile reads a file cut at a header
    boundary as a shorter archive without complaint, which would pass a half-copied sample on as complete."""
    if not path.endswith(".tar"):
        return True
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < 2 * tarfile.BLOCKSIZE or size % tarfile.BLOCKSIZE:
                return False
            f.seek(size - 2 * tarfile.BLOCKSIZE)
            return f.read() == bytes(2 * tarfile.BLOCKSIZE)
    except OSError:
        return True  # tarfile.open reports it below


def iter_tar_samples(path: str, skipped: Counter) -> Iterator[dict[str, Any]]:
    """Group consecutive tar members by key into sample dicts, read in memory; problems are counted in ``skipped``.

    In a corrupt or truncated shard the samples before the damage are kept; the one it cuts is dropped.
    """
    error = None if _ends_cleanly(path) else "no end-of-archive marker, truncated"
    current: dict[str, Any] | None = None
    index = 0
    try:
        with tarfile.open(path, mode="r|*", bufsize=1 << 20) as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not is_plain_name(member.name):
                    log.warning("%s: member %r has a path (/, \\, .. or absolute), never used as a key; skipped",
                                path, member.name)
                    skipped["unsafe_name"] += 1
                    continue
                parts = _split_name(member.name) if member.isfile() else None
                if parts is None:
                    log.warning("%s: member %r is not a <key>.<ext> file; skipped", path, member.name)
                    skipped["bad_member"] += 1
                    continue
                key, ext = parts
                if current is None or current["__key__"] != key:
                    if current is not None and (done := _finish_sample(current, skipped)) is not None:
                        yield done
                    current = {"__key__": key, "__shard__": path, "__index__": index}
                    index += 1
                if ext in current:
                    log.warning("%s: sample %s repeats member %r; the repeat is skipped", path, key, ext)
                    skipped["bad_member"] += 1
                    continue
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        error = str(e)
    if error is not None:
        log.warning("%s: corrupt or unreadable shard (%s); its remaining samples are skipped", path, error)
        skipped["corrupt_shard"] += 1
        return
    if current is not None and (done := _finish_sample(current, skipped)) is not None:
        yield done
