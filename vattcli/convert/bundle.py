"""Read TensorFlow TensorBundle checkpoints (``ckpt-N.index`` + ``ckpt-N.data-SSSSS-of-NNNNN``) without TensorFlow.

The ``.index`` is an SSTable (LevelDB table format, TF ``core/lib/io/table``) mapping each tensor name to a
``BundleEntryProto`` (dtype, shape, shard, offset, size, masked crc32c); the empty key holds the ``BundleHeaderProto``.
Only a handful of protobuf fields are needed, so they are decoded by hand from the wire format (varints,
length-delimited, fixed32/64): no generated code, no ``protobuf`` or ``tensorflow`` dependency.

Tensor bytes are memory-mapped: a numeric tensor comes back as a read-only numpy view of the map (no copy), so peak
memory stays small even for a 0.9 GB checkpoint. Arrays keep their map alive after ``close()``.

Checksums use ``google_crc32c`` (Google's C-accelerated crc32c); a pure-Python crc over a 0.9 GB checkpoint would take
minutes. Its functions only take ``bytes``, so ``verify=True`` copies a tensor through 1 MiB chunks to checksum it; the
array returned is still the view. bfloat16 tensors are returned as their raw bits, uint16, and ``dtype()`` says
``"bfloat16"`` (``torch.from_numpy(a).view(torch.bfloat16)`` reinterprets them). String tensors come back as
``list[bytes]``.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import math
import mmap
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import numpy as np

from vattcli.errors import ConvertError

_MAGIC = 0xDB4775248B80FB57  # LevelDB/TF table magic, last 8 bytes of the .index
_FOOTER = 48  # two BlockHandles padded to 40 bytes, then the magic
_TRAILER = 5  # after each block: compression type (1 byte) + masked crc32c (4 bytes)
_MASK_DELTA = 0xA282EAD8
_CHUNK = 1 << 20
_BUNDLE_VERSION = 1  # TF kTensorBundleVersion: a bundle whose min_consumer exceeds it is refused
_ENTRY_INTS = {1: "dtype", 3: "shard", 4: "offset", 5: "size", 6: "crc"}  # BundleEntryProto scalar fields
# TF DataType enum -> numpy dtype name; bfloat16 is read as its uint16 bits
_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 9: "int64",
           10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}


class _Entry(NamedTuple):
    """A decoded BundleEntryProto (``crc`` is the masked crc32c, ``slices`` counts the slice fields)."""

    dtype: int = 0
    shape: tuple[int, ...] = ()
    shard: int = 0
    offset: int = 0
    size: int = 0
    crc: int = 0
    slices: int = 0


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _index_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".index")


# ---------------------------------------------------------------------------------------------- wire format

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while shift < 70:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: ints for varint/fixed fields, bytes for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire, start = key & 7, pos
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            value = int.from_bytes(buf[start:pos], "little")
        elif wire == 2:
            n, start = _varint(buf, pos)
            pos = start + n
            value = buf[start:pos]
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf message")
        yield key >> 3, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _shape(buf: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated dim (2) {size (1) int64}; unknown_rank (3)."""
    if any(field == 3 and value for field, value in _fields(buf)):
        raise ValueError("a tensor shape of unknown rank")
    return tuple(_int64(dict(_fields(dim)).get(1, 0)) for field, dim in _fields(buf) if field == 2)


def _entry(buf: bytes) -> _Entry:
    """BundleEntryProto: dtype (1), shape (2), shard_id (3), offset (4), size (5), crc32c (6), slices (7)."""
    fields: dict = {"slices": 0}
    for field, value in _fields(buf):
        if field == 2:
            fields["shape"] = _shape(value)
        elif field == 7:
            fields["slices"] += 1
        elif field in _ENTRY_INTS:
            fields[_ENTRY_INTS[field]] = _int64(value)
    return _Entry(**fields)


# ---------------------------------------------------------------------------------------------- SSTable

def _block(data: bytes, handle: bytes, path: Path) -> bytes:
    """The contents of the block a BlockHandle (varint64 offset, varint64 size) points at, its trailer checked."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    end = offset + size
    if end + _TRAILER > len(data) - _FOOTER:
        raise ConvertError(f"{path}: not a TensorFlow checkpoint index (block at byte {offset} runs past the end)")
    if data[end] != 0:
        raise ConvertError(f"{path}: index block at byte {offset} is compressed (type {data[end]}); only "
                           "uncompressed TensorBundle indexes are supported")
    if _mask(google_crc32c.value(data[offset:end + 1])) != int.from_bytes(data[end + 1:end + 5], "little"):
        raise ConvertError(f"{path}: index block at byte {offset} fails its crc32c check (corrupt index)")
    return data[offset:end]


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs of a block: prefix-compressed keys, then the restart array and its uint32 count."""
    restarts = int.from_bytes(block[-4:], "little")
    limit, pos, key = len(block) - 4 - 4 * restarts, 0, b""
    if limit < 0:
        raise ValueError("block restart array larger than the block")
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        size, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + size > limit:
            raise ValueError("block entry runs past the block or shares more than the previous key")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared + size
        yield key, block[pos - size:pos]


def _table(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an uncompressed SSTable, in key order."""
    data = path.read_bytes()
    if len(data) < _FOOTER or int.from_bytes(data[-8:], "little") != _MAGIC:
        raise ConvertError(f"{path}: not a TensorFlow checkpoint index (no SSTable magic number at its end)")
    try:
        _, pos = _varint(data, len(data) - _FOOTER)  # metaindex offset and size: unused (no filters)
        _, pos = _varint(data, pos)
        index = _block(data, data[pos:len(data) - 8], path)
        return [kv for _, handle in _block_entries(index) for kv in _block_entries(_block(data, handle, path))]
    except ValueError as e:
        raise ConvertError(f"{path}: not a TensorFlow checkpoint index ({e})") from e


# ---------------------------------------------------------------------------------------------- bundle

def _from_state_file(folder: Path) -> Path:
    state = folder / "checkpoint"
    if not state.is_file():
        found = sorted(p.name for p in folder.glob("*.index"))
        hint = f" (it holds {', '.join(found[:4])}: pass the prefix)" if found else ""
        raise ConvertError(f"{folder}: not a TensorFlow checkpoint folder: no 'checkpoint' file{hint}")
    match = re.search(r'^\s*model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(errors="replace"), re.M)
    if match is None:
        raise ConvertError(f"{state}: no model_checkpoint_path line")
    named = Path(codecs.escape_decode(match[1].encode())[0].decode(errors="replace"))  # text-format C escapes
    prefix = named if named.is_absolute() else folder / named
    if not _index_path(prefix).is_file() and _index_path(folder / named.name).is_file():
        prefix = folder / named.name  # an absolute or remote path written elsewhere; the folder was copied
    if not _index_path(prefix).is_file():
        raise ConvertError(f"{state}: names checkpoint {match[1]!r} but {_index_path(prefix)} does not exist")
    return prefix


def resolve_prefix(path: Path) -> Path:
    """The prefix named by a prefix, its ``.index`` or ``.data-*`` file, or a folder with a ``checkpoint`` file."""
    path = Path(path)
    if path.is_dir():
        return _from_state_file(path)
    name = re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", path.name)
    prefix = path.with_name(name)
    if not _index_path(prefix).is_file():
        raise ConvertError(f"{path}: not a TensorFlow checkpoint (not a folder, and no {_index_path(prefix).name} "
                           "next to it)")
    return prefix


class TensorBundle:
    """One TensorBundle checkpoint: the index parsed and every data shard mapped (read-only) on opening."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = Path(prefix)
        self.index = _index_path(self.prefix)
        if not self.index.is_file():
            raise ConvertError(f"{self.index}: not a TensorFlow checkpoint (no such index file)")
        table = _table(self.index)
        if not table or table[0][0] != b"":
            raise ConvertError(f"{self.index}: not a TensorFlow checkpoint index (no bundle header)")
        try:  # BundleHeaderProto: num_shards (1), endianness (2), version (3: VersionDef, min_consumer is field 2)
            header = dict(_fields(table[0][1]))
            n, big_endian, need = header.get(1, 1), header.get(2, 0), dict(_fields(header.get(3, b""))).get(2, 0)
            self._entries = {k.decode("utf-8", "backslashreplace"): _entry(v) for k, v in table
                             if k and not k.startswith(b"\x00")}  # b"\x00..." keys are slices of partitioned tensors
        except (ValueError, TypeError) as e:
            raise ConvertError(f"{self.index}: not a TensorFlow checkpoint index ({e})") from e
        if big_endian:
            raise ConvertError(f"{self.index}: big-endian checkpoint; only little-endian bundles are supported")
        if need > _BUNDLE_VERSION:
            raise ConvertError(f"{self.index}: bundle format version {need} is newer than this reader's")
        if not isinstance(n, int) or not 1 <= n < 100_000:
            raise ConvertError(f"{self.index}: not a TensorFlow checkpoint index (header says {n!r} shards)")
        self.data_files = [self.prefix.with_name(f"{self.prefix.name}.data-{i:05d}-of-{n:05d}") for i in range(n)]
        self._maps = [self._open(p) for p in self.data_files]
        self._check_sizes()

    def _open(self, path: Path) -> mmap.mmap | bytes:
        if not path.is_file():
            raise ConvertError(f"{path}: missing: {self.index.name} needs its data shard(s) beside it")
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""

    def _check_sizes(self) -> None:
        """Every entry inside its shard; for a short shard, name the tensor that reaches furthest."""
        for name, e in sorted(self._entries.items(), key=lambda kv: -(kv[1].offset + kv[1].size)):
            if not 0 <= e.shard < len(self._maps) or e.offset < 0 or e.size < 0:
                raise ConvertError(f"{self.index}: tensor {name} has an invalid place (shard {e.shard}, offset "
                                   f"{e.offset}, size {e.size})")
            end, have = e.offset + e.size, len(self._maps[e.shard])
            if end > have:
                raise ConvertError(f"{self.data_files[e.shard]}: truncated: tensor {name} needs bytes up to {end}, "
                                   f"the file has {have}")

    @property
    def files(self) -> list[Path]:
        return [self.index, *self.data_files]

    @property
    def nbytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def _get(self, name: str) -> _Entry:
        if name not in self._entries:
            raise ConvertError(f"{self.index}: no tensor named {name}")
        return self._entries[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._get(name).shape

    def dtype(self, name: str) -> str:
        code = self._get(name).dtype
        if code not in _DTYPES:
            raise ConvertError(f"{self.index}: tensor {name} has unsupported TensorFlow dtype {code}")
        return _DTYPES[code]

    def read(self, name: str, verify: bool = True) -> np.ndarray | list[bytes]:
        """A read-only view of the tensor's bytes (numeric) or its elements (string), crc32c-checked if ``verify``."""
        e, dtype = self._get(name), self.dtype(name)
        if e.slices:
            raise ConvertError(f"{self.index}: tensor {name} is partitioned into {e.slices} slices; sliced tensors "
                               "are not supported")
        if not self._maps:
            raise ValueError(f"{self.index}: read from a closed TensorBundle")
        buf = self._maps[e.shard]
        if dtype == "string":
            return self._strings(name, e, buf[e.offset:e.offset + e.size], verify)
        np_dtype = np.dtype("<u2" if dtype == "bfloat16" else dtype).newbyteorder("<")
        count = math.prod(e.shape)
        if count * np_dtype.itemsize != e.size:
            raise ConvertError(f"{self.index}: tensor {name} of shape {e.shape} {dtype} is stored in {e.size} bytes")
        if verify:
            crc = 0
            for start in range(e.offset, e.offset + e.size, _CHUNK):
                crc = google_crc32c.extend(crc, buf[start:min(start + _CHUNK, e.offset + e.size)])
            self._check_crc(name, e, crc)
        return np.frombuffer(buf, np_dtype, count, e.offset).reshape(e.shape)

    def release(self, name: str) -> None:
        """Let the kernel drop the mapped pages of ``name`` (read again from the file if touched later): a
        conversion that has written a tensor releases it, so resident memory does not grow with the checkpoint."""
        e = self._get(name)
        buf = self._maps[e.shard] if self._maps else b""
        if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED") and e.size:
            start = e.offset - e.offset % mmap.PAGESIZE
            buf.madvise(mmap.MADV_DONTNEED, start, e.offset + e.size - start)

    def _check_crc(self, name: str, e: _Entry, crc: int | None) -> None:
        if crc is None or _mask(crc) != e.crc:
            raise ConvertError(f"{self.data_files[e.shard]}: tensor {name} fails its crc32c check (corrupt data)")

    def _strings(self, name: str, e: _Entry, raw: bytes, verify: bool) -> list[bytes]:
        """[varint64 length]*n, masked crc32c of the lengths (4 bytes), then the string bytes."""
        pos, lengths = 0, []
        try:
            for _ in range(math.prod(e.shape)):
                length, pos = _varint(raw, pos)
                lengths.append(length)
        except ValueError:
            self._check_crc(name, e, None)  # a length table that does not parse is corrupt data
        if verify or pos + 4 + sum(lengths) != len(raw):
            # the crc runs over each length as uint32 (uint64 if larger), the 4 checksum bytes, the string bytes
            crc = google_crc32c.value(b"".join(x.to_bytes(4 if x <= 0xFFFFFFFF else 8, "little") for x in lengths))
            self._check_crc(name, e, google_crc32c.extend(crc, raw[pos:]))
        ends = list(itertools.accumulate(lengths, initial=pos + 4))
        return [raw[start:end] for start, end in zip(ends, ends[1:])]

    def close(self) -> None:
        """Unmap the shards; a map still exported to a returned array is closed when the last such array goes."""
        for m in self._maps:
            if isinstance(m, mmap.mmap):
                with contextlib.suppress(BufferError):
                    m.close()
        self._maps = []

    def __enter__(self) -> TensorBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
