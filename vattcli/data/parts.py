"""Preprocessing in parts: one split written by N independent jobs (a Slurm array, a Kubernetes indexed Job), then
merged into the manifest the readers use.

Which part a source belongs to is a hash of a stable name for it (``stable_name``: the source's path relative to
``--root``, or a skip's item), never its position in a listing: the split is the same on every re-run and machine,
whatever the directory order or ``--workers``, and the union of the parts is exactly the single run's samples.
Parts are numbered 1..N ("part 3/16"); the 0-based ids schedulers hand out are converted (``part_from_env``).

Part I of N writes, in the split folder ``OUT/<split>``, the shards ``<split>-pIIIofNNN-000000.tar`` (with their key
sidecars) and its part manifest ``manifest.pIIIofNNN.json`` (the ``vatt-shards`` format, ``settings.part`` says
which part), holding the lock ``OUT/.vatt.<split>-pIIIofNNN.lock``: parts run concurrently into one ``--out``, one
writer per part. ``merge_parts`` (``vatt preprocess merge``) checks that every part is there and complete and that
no key occurs twice, then writes ``manifest.json`` listing every part's shards, with the totals, skip counts by
reason, flags and hours summed; until then readers refuse the folder (``vattcli.data.folders``). A part that runs
again invalidates the merge: its run removes ``manifest.json`` first, so training never reads a stale list.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vattcli import __version__
from vattcli.data.adapters.base import Skip, WorkItem
from vattcli.data.shards import (FORMAT, FORMAT_VERSION, MANIFEST, MAX_SKIP_EXAMPLES, keys_name, read_manifest,
                                 write_json_atomic)
from vattcli.errors import ConfigError, DataError
from vattcli.locking import LOCK_NAME, FolderLock

PART_MANIFEST = re.compile(r"manifest\.p(\d+)of(\d+)\.json")
MAX_PARTS = 100_000


@dataclass(frozen=True)
class Part:
    """Part ``index`` (1-based) of ``count``; ``source``: where it came from (``--part``, an environment variable)."""

    index: int
    count: int
    source: str = "--part"

    @property
    def tag(self) -> str:
        """``p003of016``: zero-padded so that the files of one split sort by part."""
        width = max(3, len(str(self.count)))
        return f"p{self.index:0{width}d}of{self.count:0{width}d}"

    @property
    def manifest(self) -> str:
        return f"manifest.{self.tag}.json"

    def lock_name(self, split: str) -> str:
        return f".vatt.{split}-{self.tag}.lock"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_part(text: str, source: str = "--part") -> Part:
    """``"3/16"`` as Part(3, 16); parts count from 1, so ``0/16`` and ``17/16`` are refused with one line."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    index, count = (int(match[1]), int(match[2])) if match else (None, None)
    if match is None or not 1 <= count <= MAX_PARTS:
        raise ConfigError(f"{source} {text}: expected I/N with N parts between 1 and {MAX_PARTS}, such as 3/16")
    if not 1 <= index <= count:
        raise ConfigError(f"{source} {text}: expected 1 <= I <= {count} (parts count from 1: the first of {count} "
                          f"is 1/{count})")
    return Part(index, count, source)


def _env_int(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name, "")
    if not re.fullmatch(r"\d+", value.strip()):
        raise ConfigError(f"environment variable {name}={value!r}: expected a non-negative integer")
    return int(value)


def part_from_env(environ: Mapping[str, str], parts: int | None = None) -> Part | None:
    """The part a scheduler assigned, or None outside an array job.

    Slurm: ``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` + 1 of ``SLURM_ARRAY_TASK_COUNT`` (``--array`` must be
    a plain range such as 0-15 or 1-16: a step or a list leaves parts unwritten). Kubernetes indexed Job:
    ``JOB_COMPLETION_INDEX`` + 1; Kubernetes does not put the completions count in the environment, so it comes from
    ``parts`` (``--parts N``) or ``VATT_PARTS``.
    """
    if "SLURM_ARRAY_TASK_ID" in environ:
        task, count = _env_int(environ, "SLURM_ARRAY_TASK_ID"), _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
        low = _env_int(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
        high = _env_int(environ, "SLURM_ARRAY_TASK_MAX") if "SLURM_ARRAY_TASK_MAX" in environ else low + count - 1
        if high - low + 1 != count:
            raise ConfigError(f"SLURM_ARRAY_TASK_MIN={low}, MAX={high} and COUNT={count}: the array must be a plain "
                              f"range (--array={low}-{low + count - 1}), without a step or gaps")
        if parts is not None and parts != count:
            raise ConfigError(f"--parts {parts} differs from SLURM_ARRAY_TASK_COUNT={count}")
        return parse_part(f"{task - low + 1}/{count}",
                          f"SLURM_ARRAY_TASK_ID={task} (SLURM_ARRAY_TASK_MIN={low}, SLURM_ARRAY_TASK_COUNT={count})")
    if "JOB_COMPLETION_INDEX" in environ:
        index = _env_int(environ, "JOB_COMPLETION_INDEX")
        if parts is None and "VATT_PARTS" not in environ:
            raise ConfigError(f"JOB_COMPLETION_INDEX={index} is set but the number of parts is not: pass --parts N "
                              "or set VATT_PARTS=N (the Job's completions)")
        count = parts if parts is not None else _env_int(environ, "VATT_PARTS")
        given = f"--parts {parts}" if parts is not None else f"VATT_PARTS={count}"
        return parse_part(f"{index + 1}/{count}", f"JOB_COMPLETION_INDEX={index} ({given})")
    if parts is not None:
        raise ConfigError(f"--parts {parts}: only with JOB_COMPLETION_INDEX (a Kubernetes indexed Job); "
                          "elsewhere pass --part I/N")
    return None


def resolve_part(text: str | None, parts: int | None, environ: Mapping[str, str]) -> Part | None:
    """``--part`` when given (``--parts`` must then agree), else what the scheduler's environment says."""
    if text is None:
        return part_from_env(environ, parts)
    part = parse_part(text)
    if parts is not None and parts != part.count:
        raise ConfigError(f"--parts {parts} differs from the count in --part {text}")
    return part


def describe(part: Part) -> str:
    """The first line a part run prints, e.g. ``part 3/16 from SLURM_ARRAY_TASK_ID=2``."""
    return f"part {part} from {part.source}"


# ------------------------------------------------------------------------------------------- splitting


def names_base(root: Path) -> Path:
    """The folder stable names are relative to: ``--root``, or its folder when it is a manifest file."""
    return Path(root) if Path(root).is_dir() else Path(root).parent


def stable_name(entry: WorkItem | Skip, base: Path) -> str:
    """What decides an entry's part: the source path relative to ``base`` (``names_base``), so that the split is the
    same wherever the dataset is mounted; a skip's item likewise."""
    name = Path(entry.source) if isinstance(entry, WorkItem) else Path(entry.item)
    try:
        return name.relative_to(base).as_posix()
    except ValueError:
        return name.as_posix()


def part_of(name: str, count: int) -> int:
    """The part (1..count) that ``name`` belongs to: the first 8 bytes of its SHA-256, modulo ``count``."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def select(items: list[WorkItem], skips: list[Skip], root: Path,
           part: Part) -> tuple[list[WorkItem], list[Skip]]:
    """The work items and early skips of ``part`` (each entry lands in exactly one part)."""
    base = names_base(root)

    def mine(entry: WorkItem | Skip) -> bool:
        return part_of(stable_name(entry, base), part.count) == part.index

    return [i for i in items if mine(i)], [s for s in skips if mine(s)]


@dataclass(frozen=True)
class Layout:
    """Where a run writes in ``OUT/<split>`` and which lock it holds: the whole split, or one part of it."""

    split: str
    part: Part | None = None

    @property
    def prefix(self) -> str:
        return f"{self.split}-{self.part.tag}" if self.part else self.split

    @property
    def manifest(self) -> str:
        return self.part.manifest if self.part else MANIFEST

    @property
    def lock_name(self) -> str:
        return self.part.lock_name(self.split) if self.part else LOCK_NAME

    @property
    def what(self) -> str:
        return f"preprocessing of part {self.part}" if self.part else "preprocessing"

    @property
    def neighbours(self) -> re.Pattern[str] | None:
        """The other parts' files (same split, same N) and the merged manifest (``check`` refused any other
        ``manifest.json``): expected in the folder; the writer never touches them."""
        if self.part is None:
            return None
        of = self.part.tag[self.part.tag.index("of"):]
        return re.compile(rf"(\.tmp-)?({re.escape(self.split)}-p\d+{of}-\d{{6}}\.(tar|keys\.json)|"
                          rf"manifest\.p\d+{of}\.json|{re.escape(MANIFEST)})")

    def settings(self, limit: int | None) -> dict[str, Any]:
        """Recorded in a part manifest: merge checks each part is the one its name says, all with one ``--limit``."""
        return {"part": {"index": self.part.index, "count": self.part.count, "limit": limit}} if self.part else {}

    def check(self, folder: Path) -> None:
        """Before a part writes: a whole run's shards (a ``manifest.json`` that no merge wrote) are refused."""
        if self.part is not None and (folder / MANIFEST).is_file() and "parts" not in read_manifest(folder):
            raise DataError(f"{folder}: holds the shards of a run that was not split ({MANIFEST}); write the parts "
                            "into another --out")

    def unmerge(self, folder: Path) -> list[str]:
        """Once a part's writer has accepted the folder: the merged manifest no longer holds when a part changes, so
        it is removed (with a temporary one a killed merge left); returns the note to print, if any."""
        if self.part is None:
            return []
        (folder / f".tmp-{MANIFEST}").unlink(missing_ok=True)
        if not (folder / MANIFEST).exists():
            return []
        (folder / MANIFEST).unlink()
        return [f"removed the merged {folder / MANIFEST}: run `vatt preprocess merge {folder.parent}` again once "
                "every part is done"]


# ------------------------------------------------------------------------------------------- merging


def part_manifests(folder: Path) -> dict[int, list[int]]:
    """Part manifests in ``folder``, as {count: [indices]} (names not in the canonical form are ignored)."""
    found: dict[int, list[int]] = {}
    for path in sorted(folder.glob("manifest.p*of*.json")) if folder.is_dir() else []:
        match = PART_MANIFEST.fullmatch(path.name)
        if match and 1 <= int(match[1]) <= int(match[2]) and Part(int(match[1]), int(match[2])).manifest == path.name:
            found.setdefault(int(match[2]), []).append(int(match[1]))
    return found


def parts_folder(out: Path, split: str | None) -> Path:
    """The split folder holding part manifests: ``out/<split>``, ``out`` itself, or the only such folder in it."""
    out = Path(out)
    if split is not None:
        return out / split
    if part_manifests(out):
        return out
    found = sorted(p for p in out.iterdir() if part_manifests(p)) if out.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{out}: no part manifests (manifest.pIIIofNNN.json from `vatt preprocess ... --part I/N`) "
                        "here or in a split folder")
    raise DataError(f"{out}: parts of several splits ({', '.join(p.name for p in found)}); choose one with --split")


def merge_parts(out: Path, split: str | None = None) -> dict[str, Any]:
    """Check the parts in ``out/<split>`` and write its ``manifest.json`` (atomically: all of it or nothing).

    Holds every part's lock meanwhile, so no part writes during a merge. Running it again rewrites the same manifest.
    """
    folder = parts_folder(out, split)
    found = part_manifests(folder)
    if not found:
        raise DataError(f"{folder}: no part manifests (manifest.pIIIofNNN.json from `vatt preprocess ... --part I/N`)")
    if len(found) > 1:
        raise DataError(f"{folder}: holds parts of different splits ({', '.join(f'of {n}' for n in sorted(found))}); "
                        "remove the files of the split that is not wanted")
    count = next(iter(found))
    with ExitStack() as locks:
        for i in range(1, count + 1):
            locks.enter_context(FolderLock(folder.parent, "merge", name=Part(i, count).lock_name(folder.name)))
        manifests = _complete_parts(folder, count)
        settings = _common_settings(folder, manifests)
        shards = [shard for m in manifests for shard in m["shards"]]
        _check_keys(folder, manifests)
        manifest = _merged(manifests, settings, shards, count)
        write_json_atomic(folder / MANIFEST, manifest)
    return {"folder": str(folder), "manifest": str(folder / MANIFEST), "parts": count, "shards": len(shards),
            "written": manifest["counts"]["written"], "skipped": manifest["counts"]["skipped"],
            "flagged": manifest["counts"]["flagged"], "hours": manifest["hours"]}


def _complete_parts(folder: Path, count: int) -> list[dict[str, Any]]:
    """Every part's manifest, in order; one line naming the missing and the incomplete ones otherwise."""
    missing, incomplete, manifests = [], [], []
    for i in range(1, count + 1):
        path = folder / Part(i, count).manifest
        if not path.is_file():
            missing.append(i)
            continue
        manifest = read_manifest(path)
        if not manifest["complete"]:
            incomplete.append(i)
        manifests.append(manifest)
    problems = [f"{what} {', '.join(f'{i}/{count}' for i in parts)}" for what, parts in
                (("missing part(s)", missing), ("incomplete part(s) (complete: false)", incomplete)) if parts]
    if problems:
        first = (missing or incomplete)[0]
        raise DataError(f"{folder}: cannot merge: {'; '.join(problems)}; run them (e.g. `vatt preprocess ... --part "
                        f"{first}/{count} --resume`), then merge again")
    return manifests


def _common_settings(folder: Path, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings every part shares (``root`` may differ: each machine mounts the data where it likes)."""
    def shared(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m["settings"].items() if k not in ("part", "root")}

    first, count = manifests[0], len(manifests)
    for i, manifest in enumerate(manifests, start=1):
        part = manifest["settings"].get("part") or {}
        prefix = f"{manifest['settings'].get('split')}-{Part(i, count).tag}"
        if (part.get("index"), part.get("count")) != (i, count) or manifest["prefix"] != prefix:
            raise DataError(f"{folder / Part(i, count).manifest}: is not the manifest of part {i}/{count} "
                            f"(prefix {manifest['prefix']!r}, settings.part {part or 'missing'})")
        changed = sorted(k for k in set(shared(manifest)) | set(shared(first))
                         if shared(manifest).get(k) != shared(first).get(k))
        if changed or part.get("limit") != first["settings"]["part"].get("limit"):
            raise DataError(f"{folder}: part {i}/{count} was written with other settings than part 1 "
                            f"({', '.join(changed) or 'limit'}); rerun it with the same options and --overwrite")
    return {**shared(first), "root": first["settings"].get("root"), "limit": first["settings"]["part"]["limit"]}


def _read_keys(folder: Path, shard: dict[str, Any]) -> list[str]:
    """The keys a listed shard holds, after checking the shard is there with the size its manifest says."""
    path, sidecar = folder / shard["name"], folder / keys_name(shard["name"])
    if not path.is_file() or path.stat().st_size != shard.get("bytes"):
        raise DataError(f"{path}: listed in a part manifest but missing or of another size; rerun that part")
    try:
        keys = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{sidecar}: cannot read the shard's key list: {e}") from None
    if not isinstance(keys, list) or len(keys) != shard.get("samples") or not all(isinstance(k, str) for k in keys):
        raise DataError(f"{sidecar}: key list does not match the manifest's sample count")
    return keys


def _key_hashes(keys: list[str]) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys),
                       dtype=np.uint64, count=len(keys))


def _check_keys(folder: Path, manifests: list[dict[str, Any]]) -> None:
    """No key in two places. HowTo100M holds ~10^8 keys, too many for a set of strings: 8-byte hashes are sorted
    first (0.8 GB per 10^8) and only the keys whose hashes collide are compared."""
    hashes = [_key_hashes(_read_keys(folder, s)) for m in manifests for s in m["shards"]]
    flat = np.sort(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    twice = set(flat[1:][flat[1:] == flat[:-1]].tolist())
    if not twice:
        return
    seen: dict[str, str] = {}
    for i, manifest in enumerate(manifests, start=1):
        for shard in manifest["shards"]:
            keys = _read_keys(folder, shard)
            for key, value in zip(keys, _key_hashes(keys).tolist()):
                where = f"part {i}/{len(manifests)} ({shard['name']})"
                if value in twice and key in seen:
                    raise DataError(f"{folder}: key {key!r} occurs twice, in {seen[key]} and {where}; the parts come "
                                    "from different runs or the dataset names two sources alike")
                if value in twice:
                    seen[key] = where


def _merged(manifests: list[dict[str, Any]], settings: dict[str, Any], shards: list[dict[str, Any]],
            count: int) -> dict[str, Any]:
    """The dataset manifest (the format ``read_manifest`` reads) with the parts' counts summed."""
    skipped, flagged = Counter(), Counter()
    examples = []
    for manifest in manifests:
        skipped.update(manifest["counts"].get("skipped") or {})
        flagged.update(manifest["counts"].get("flagged") or {})
        examples += manifest["counts"].get("skipped_examples") or []
    written = sum(s["samples"] for s in shards)
    seconds = sum(s["seconds"] for s in shards)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "vatt_version": __version__,
            "created": min(str(m.get("created", "")) for m in manifests),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "complete": True, "prefix": settings["split"], "settings": {**settings, "parts": count},
            "parts": [Part(i, count).manifest for i in range(1, count + 1)], "shards": shards,
            "keys_suffix": ".keys.json",
            "counts": {"written": written, "skipped": dict(skipped), "skipped_examples": examples[:MAX_SKIP_EXAMPLES],
                       "flagged": dict(flagged)},
            "total_samples": written, "seconds": seconds, "hours": seconds / 3600.0}
