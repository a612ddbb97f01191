"""Tar shards in the WebDataset layout, written atomically, with a manifest a later run resumes from.

Layout of an output folder (one writer, one ``prefix`` per folder)::

    manifest.json               format/version, settings, shard list, counts (rewritten after every shard)
    <prefix>-000000.tar         members <key>.<ext>, all members of one sample consecutive (WebDataset)
    <prefix>-000000.keys.json   sidecar: the sample keys that shard holds, in order
    .tmp-<prefix>-000001.tar    the shard being written (renamed when complete)

The keys live in one sidecar per shard rather than in ``manifest.json``: the manifest is rewritten after every shard,
so holding every key there would rewrite the whole key list thousands of times over a HowTo100M-sized run.

Crash safety, per shard: the tar is written to ``.tmp-<name>`` and fsynced, the sidecar is written (temp + replace),
the tar is renamed to its final name, then the manifest is replaced. The manifest is the truth: a final-named shard it
does not list (a crash between the rename and the manifest) is removed on resume and its samples written again.

Resume re-attempts every sample not in a kept shard, including those skipped before, so skip counts start again
from zero on resume (they would otherwise be counted twice).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import tarfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from vattcli import __version__
from vattcli.errors import DataError

FORMAT = "vatt-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_SKIP_EXAMPLES = 100
DEFAULT_MAX_BYTES = 300_000_000
DEFAULT_MAX_SAMPLES = 10_000
_BLOCK = tarfile.BLOCKSIZE
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def validate_key(key: str) -> str:
    """Return ``key`` if it can name a WebDataset sample: WebDataset splits member names at the first dot."""
    if not isinstance(key, str) or not key:
        raise DataError(f"sample key {key!r}: expected a non-empty string")
    bad = [c for c in "./\\" if c in key]
    if bad or key != key.strip() or any(ord(c) < 32 for c in key):
        raise DataError(
            f"sample key {key!r}: must not contain dots, slashes, control characters or outer spaces "
            "(WebDataset splits member names at the first dot)"
        )
    return key


def shard_name(prefix: str, index: int) -> str:
    """The file name of shard ``index``: ``<prefix>-000042.tar``."""
    return f"{prefix}-{index:06d}.tar"


def keys_name(shard: str) -> str:
    """The sidecar that lists the keys held by ``shard``."""
    return shard[: -len(".tar")] + ".keys.json"


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``manifest.json`` from a shard folder (or the file itself), checking it is one this code wrote."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{file}: no shard manifest (expected {MANIFEST} written by `vatt preprocess`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: cannot read shard manifest: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{file}: not a shard manifest (expected \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"{file}: format_version {version!r} is not supported (this vatt reads up to {FORMAT_VERSION})")
    for field, kind in (("prefix", str), ("shards", list), ("counts", dict), ("settings", dict)):
        if not isinstance(manifest.get(field), kind):
            raise DataError(f"{file}: field \"{field}\" missing or not a {kind.__name__}")
    if not isinstance(manifest.get("complete", False), bool):
        raise DataError(f"{file}: field \"complete\" is not true or false")
    for shard in manifest["shards"]:
        name = shard.get("name") if isinstance(shard, dict) else None
        if not is_plain_name(name):
            raise DataError(f"{file}: shard name {name!r} is not a file name inside this folder (names must not be "
                            "empty, absolute, or contain '/', '\\' or '..')")
    return manifest


def is_plain_name(name: Any) -> bool:
    """Whether ``name``, read from a data file, names an entry of its own folder: joined to the folder it can never
    reach outside it (design.md, Security)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and not os.path.isabs(name))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _as_json(obj: Any, what: str) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so a resumed run compares like with like."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise DataError(f"{what} must be JSON-serialisable: {e}") from None


def _encode(key: str, ext: str, value: Any) -> bytes:
    if not isinstance(ext, str) or not ext or ext.startswith(".") or "/" in ext or "\\" in ext:
        raise DataError(f"sample {key!r}: member extension {ext!r} must be non-empty, without slashes or a leading dot")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if ext.endswith("json") and isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    raise DataError(f"sample {key!r}: member {ext!r} is {type(value).__name__}, expected bytes or str")


def _tar_size(payload: Mapping[str, bytes]) -> int:
    """Bytes the members take in the tar: one header block plus the data padded to whole blocks."""
    return sum(_BLOCK + -(-len(data) // _BLOCK) * _BLOCK for data in payload.values())


class ShardWriter:
    """Write samples ``{ext: bytes}`` into size-capped tar shards plus a manifest; see the module docstring.

    ``resume=True`` keeps the shards the manifest lists; ``done_keys`` then names the samples to skip.
    ``overwrite=True`` tolerates files that are not this writer's (they are left alone) and, without ``resume``,
    removes the shards and manifest of a previous run. Writers sharing a folder (the parts of a split run,
    ``vattcli.data.parts``) each use their own ``prefix`` and ``manifest_name``; ``neighbours`` matches the names of
    the others' files, which are expected there and left alone. ``max_bytes`` caps the members' bytes in a shard (a
    sample larger than it gets a shard of its own); the tar end blocks and record padding add up to 10 KiB.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        prefix: str = "shard",
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        settings: Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        manifest_name: str = MANIFEST,
        neighbours: re.Pattern[str] | None = None,
    ) -> None:
        validate_key(prefix)
        if max_samples < 1 or max_bytes < 1:
            raise DataError(f"{out_dir}: max_samples and max_bytes must be positive (got {max_samples}, {max_bytes})")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.settings = _as_json(dict(settings or {}), f"{out_dir}: settings")
        self.manifest_name = manifest_name
        self._neighbours = neighbours
        self._own = re.compile(
            rf"(\.tmp-)?{re.escape(prefix)}-\d{{6}}\.(tar|keys\.json)|(\.tmp-)?{re.escape(manifest_name)}"
        )
        self._shards: list[dict[str, Any]] = []
        self._done: set[str] = set()
        self._keys: set[str] = set()
        self._skipped: dict[str, int] = {}
        self._examples: list[dict[str, str]] = []
        self._created = _now()
        self._next_index = 0
        self._tar: tarfile.TarFile | None = None
        self._file: io.BufferedWriter | None = None
        self._open_keys: list[str] = []
        self._open_seconds = 0.0
        self._closed = False
        self._prepare_folder(resume, overwrite)

    # -- folder set-up ------------------------------------------------------------------------------------------

    def _prepare_folder(self, resume: bool, overwrite: bool) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        names = [p.name for p in self.out_dir.iterdir()]
        foreign = sorted(n for n in names if not self._own.fullmatch(n)
                         and not (self._neighbours and self._neighbours.fullmatch(n)))
        if foreign and not overwrite:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise DataError(
                f"{self.out_dir}: folder holds other data ({shown}); choose an empty folder or pass --overwrite"
            )
        previous = any(self._own.fullmatch(n) and not n.startswith(".tmp-") and not n.endswith(".keys.json")
                       for n in names)
        if resume and (self.out_dir / self.manifest_name).exists():
            self._load_previous(read_manifest(self.out_dir / self.manifest_name))
        elif previous and not resume and not overwrite:
            raise DataError(
                f"{self.out_dir}: holds shards of a previous run; pass --resume to continue or --overwrite "
                "to replace them"
            )
        kept = {name for s in self._shards for name in (s["name"], keys_name(s["name"]))}
        kept |= {self.manifest_name} if resume else set()
        for name in names:
            if self._own.fullmatch(name) and name not in kept:
                (self.out_dir / name).unlink()

    def _load_previous(self, manifest: dict[str, Any]) -> None:
        where = self.out_dir / self.manifest_name
        if manifest["prefix"] != self.prefix:
            raise DataError(f"{where}: written with prefix {manifest['prefix']!r}, this run uses {self.prefix!r}")
        changed = sorted(k for k in set(manifest["settings"]) | set(self.settings)
                         if manifest["settings"].get(k) != self.settings.get(k))
        if changed:
            raise DataError(f"{where}: settings differ from the previous run ({', '.join(changed)}); cannot resume")
        for shard in manifest["shards"]:
            self._shards.append(self._check_kept(shard, where))
        self._keys = set(self._done)
        self._created = manifest.get("created", self._created)
        if self._shards:
            self._next_index = int(self._shards[-1]["name"][len(self.prefix) + 1 : -len(".tar")]) + 1

    def _check_kept(self, shard: dict[str, Any], where: Path) -> dict[str, Any]:
        name = shard.get("name")
        if not isinstance(name, str) or not re.fullmatch(rf"{re.escape(self.prefix)}-\d{{6}}\.tar", name):
            raise DataError(f"{where}: shard entry {shard!r} has no valid name")
        path = self.out_dir / name
        if not path.is_file() or path.stat().st_size != shard.get("bytes"):
            raise DataError(f"{path}: listed in the manifest but missing or of another size; cannot resume")
        try:
            keys = json.loads((self.out_dir / keys_name(name)).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{self.out_dir / keys_name(name)}: cannot read the shard's key list: {e}") from None
        if not isinstance(keys, list) or len(keys) != shard.get("samples"):
            raise DataError(f"{self.out_dir / keys_name(name)}: key list does not match the manifest's sample count")
        self._done.update(keys)
        return dict(shard)

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def done_keys(self) -> frozenset[str]:
        """Keys of the samples held by finished shards kept from a previous run (empty unless resuming)."""
        return frozenset(self._done)

    def write(self, key: str, members: Mapping[str, Any], seconds: float = 0.0) -> None:
        """Add one sample: ``members`` maps extension (``mp4``, ``flac``, ``json``) to bytes (dicts for json)."""
        self._check_open()
        validate_key(key)
        if key in self._keys:
            raise DataError(f"{self.out_dir}: sample key {key!r} written twice")
        if not members:
            raise DataError(f"sample {key!r}: no members to write")
        payload = {ext: _encode(key, ext, value) for ext, value in members.items()}
        with self._disk_guard():
            if self._open_keys and self._file.tell() + _tar_size(payload) > self.max_bytes:
                self._finish_shard()
            if self._tar is None:
                self._open_shard()
            for ext, data in payload.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o444
                self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self._open_keys.append(key)
        self._open_seconds += float(seconds)
        if len(self._open_keys) >= self.max_samples:
            with self._disk_guard():
                self._finish_shard()

    def skip(self, item: str, reason: str, message: str) -> None:
        """Count an input that was not written (``reason`` is a short tag such as ``corrupt`` or ``missing``)."""
        self._check_open()
        if not isinstance(reason, str) or not reason:
            raise DataError(f"skip of {item!r}: reason must be a non-empty string")
        self._skipped[reason] = self._skipped.get(reason, 0) + 1
        if len(self._examples) < MAX_SKIP_EXAMPLES:
            self._examples.append({"item": str(item), "reason": reason, "message": str(message)})

    def close(self) -> None:
        """Finish the open shard and write the final manifest (``complete: true``)."""
        if self._closed:
            return
        with self._disk_guard():
            if self._open_keys:
                self._finish_shard()
            self._closed = True
            self._write_manifest(complete=True)

    def abort(self) -> None:
        """Drop the shard being written (its temp file is removed); finished shards and the manifest stay."""
        if self._tar is not None:
            try:
                self._file.close()  # without TarFile.close: no end blocks are written to a shard being dropped
            finally:
                self._temp_path().unlink(missing_ok=True)
        self._tar = self._file = None
        self._keys.difference_update(self._open_keys)
        self._open_keys, self._open_seconds = [], 0.0
        self._closed = True

    def manifest(self, complete: bool = False) -> dict[str, Any]:
        """The manifest as it would be written now (finished shards only)."""
        written = sum(s["samples"] for s in self._shards)
        seconds = sum(s["seconds"] for s in self._shards)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vatt_version": __version__,
            "created": self._created,
            "updated": _now(),
            "complete": complete,
            "prefix": self.prefix,
            "settings": self.settings,
            "shards": self._shards,
            "keys_suffix": ".keys.json",
            "counts": {"written": written, "skipped": dict(self._skipped), "skipped_examples": self._examples},
            "total_samples": written,
            "seconds": seconds,
            "hours": seconds / 3600.0,
        }

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- shard life cycle ---------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DataError(f"{self.out_dir}: shard writer is closed")

    def _temp_path(self) -> Path:
        return self.out_dir / f".tmp-{shard_name(self.prefix, self._next_index)}"

    def _open_shard(self) -> None:
        self._file = open(self._temp_path(), "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)

    def _finish_shard(self) -> None:
        name = shard_name(self.prefix, self._next_index)
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        write_json_atomic(self.out_dir / keys_name(name), self._open_keys)
        os.replace(self._temp_path(), self.out_dir / name)
        self._shards.append({
            "name": name,
            "samples": len(self._open_keys),
            "bytes": (self.out_dir / name).stat().st_size,
            "seconds": self._open_seconds,
        })
        self._tar = self._file = None
        self._open_keys, self._open_seconds = [], 0.0
        self._next_index += 1
        self._write_manifest(complete=False)

    def _write_manifest(self, complete: bool) -> None:
        write_json_atomic(self.out_dir / self.manifest_name, self.manifest(complete))

    @contextmanager
    def _disk_guard(self) -> Iterator[None]:
        """Turn a full disk into one clear error, with the half-written shard removed."""
        try:
            yield
        except OSError as e:
            if e.errno not in _DISK_FULL:
                raise
            self.abort()
            raise DataError(
                f"{self.out_dir}: disk full while writing shards ({e.strerror}); free space and resume"
            ) from e
