"""A minimal TensorFlow TensorBundle writer, independent of ``vattcli.convert``, for the reader's tests
(tests/test_bundle.py), the official-layout checkpoints of tests/tfckpt.py and the benches in bench/.

A bundle is ``<prefix>.index``, an SSTable in the LevelDB table format (data blocks of prefix-compressed entries,
a metaindex and an index block, each followed by a compression byte and its masked crc32c, then the 48-byte footer)
that maps ``""`` to a BundleHeaderProto and every tensor name to a BundleEntryProto, plus the shards
``<prefix>.data-<k>-of-<n>`` holding the tensor bytes, each tensor with its masked crc32c in its entry
[TensorFlow core/protobuf/tensor_bundle.proto, core/util/tensor_bundle/tensor_bundle.cc; LevelDB doc/table_format.md].

``BundleWriter`` streams tensors one at a time straight to the shards (only the index entries stay in memory), so a
checkpoint of any size can be written; ``write_bundle`` writes a dict of ``Spec`` at once, with the knobs the reader's
refusal tests need (several shards and index blocks, a big-endian header, a compression byte).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import numpy as np

CODES = {"float32": 1, "float64": 2, "string": 7, "int64": 9, "bfloat16": 14}  # TF DataType enum
_FOOTER_MAGIC = 0xDB4775248B80FB57


class Spec(NamedTuple):
    """One tensor as stored: ``extra`` is raw protobuf appended to its index entry (fields a reader must refuse)."""

    code: int  # TF DataType enum
    shape: tuple[int, ...]
    data: bytes
    crc: int  # unmasked crc32c
    extra: bytes = b""


# ------------------------------------------------------------------------------ wire format

def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >= 0x80 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def pb(*fields: tuple[int, int | bytes]) -> bytes:
    """Varint (int) or length-delimited (bytes) fields; zero ints omitted, as proto3 does."""
    out = b""
    for num, v in fields:
        if isinstance(v, bytes):
            out += uvarint(num << 3 | 2) + uvarint(len(v)) + v
        elif v:
            out += uvarint(num << 3) + uvarint(v)
    return out


def mask(crc: int) -> int:
    """The masked crc32c that LevelDB blocks and TensorBundle entries store."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------ tensors

def numeric(a: np.ndarray, code: int) -> Spec:
    """A numeric tensor, stored little-endian (what the default header declares)."""
    data = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
    return Spec(code, a.shape, data, google_crc32c.value(data))


def strings(items: list[bytes], shape: tuple[int, ...] | None = None) -> Spec:
    """A string tensor (shape ``(len(items),)`` unless given) as TensorBundle stores it: varint lengths, the masked
    crc32c of the lengths as uint32, the bytes; its crc covers the uint32 lengths (not the varints), then the rest."""
    lengths = b"".join(uvarint(len(s)) for s in items)
    crc = google_crc32c.value(b"".join(struct.pack("<I", len(s)) for s in items))
    rest = struct.pack("<I", mask(crc)) + b"".join(items)
    return Spec(CODES["string"], (len(items),) if shape is None else shape, lengths + rest,
                google_crc32c.extend(crc, rest))


# ------------------------------------------------------------------------------ the SSTable

def block(entries: list[tuple[bytes, bytes]]) -> bytes:
    out, prev = b"", b""
    for key, value in entries:
        shared = len(os.path.commonprefix([prev, key]))
        out += uvarint(shared) + uvarint(len(key) - shared) + uvarint(len(value)) + key[shared:] + value
        prev = key
    return out + struct.pack("<II", 0, 1)  # one restart point at 0


def table(items: list[tuple[bytes, bytes]], per_block: int | None, compression: int = 0) -> bytes:
    """``items`` (in key order) in data blocks of ``per_block`` entries (``None``: one block)."""
    out = bytearray()
    step = per_block or len(items)

    def put(contents: bytes) -> bytes:
        handle = uvarint(len(out)) + uvarint(len(contents))
        out.extend(contents + bytes([compression]))
        out.extend(struct.pack("<I", mask(google_crc32c.value(contents + bytes([compression])))))
        return handle

    index = [(items[i:i + step][-1][0], put(block(items[i:i + step]))) for i in range(0, len(items), step)]
    handles = put(block([])) + put(block(index))
    return bytes(out) + handles.ljust(40, b"\0") + struct.pack("<Q", _FOOTER_MAGIC)


# ------------------------------------------------------------------------------ writing

class BundleWriter:
    """Writes tensors one at a time, in key order, straight to the ``.data`` shards (tensor i to shard i % shards);
    the index goes to ``<prefix>.index`` on ``close`` (or on leaving the ``with`` block without an error)."""

    def __init__(self, prefix: Path, *, shards: int = 1, endian: int = 0, per_block: int | None = 64,
                 compression: int = 0) -> None:
        self.prefix, self.per_block, self.compression = Path(prefix), per_block, compression
        self._items = [(b"", pb((1, shards), (2, endian), (3, pb((1, 1)))))]  # the header; version 1
        self._offsets = [0] * shards
        self._files = [open(self.prefix.with_name(f"{self.prefix.name}.data-{k:05d}-of-{shards:05d}"), "wb")
                       for k in range(shards)]

    @property
    def nbytes(self) -> int:
        """Tensor bytes written so far, all shards together."""
        return sum(self._offsets)

    def add(self, name: str, spec: Spec) -> None:
        key = name.encode()
        if key <= self._items[-1][0]:
            raise ValueError(f"tensor {name!r} comes after {self._items[-1][0]!r}: an SSTable holds its keys in order")
        shard = (len(self._items) - 1) % len(self._files)
        shape = pb(*[(2, pb((1, d))) for d in spec.shape])
        entry = pb((1, spec.code), (2, shape), (3, shard), (4, self._offsets[shard]), (5, len(spec.data)))
        self._items.append((key, entry + b"\x35" + struct.pack("<I", mask(spec.crc)) + spec.extra))  # 6: fixed32
        self._files[shard].write(spec.data)
        self._offsets[shard] += len(spec.data)

    def close(self) -> None:
        for f in self._files:
            f.close()
        index = table(self._items, self.per_block, self.compression)
        self.prefix.with_name(self.prefix.name + ".index").write_bytes(index)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            for f in self._files:
                f.close()


def write_bundle(prefix: Path, specs: dict[str, Spec], *, shards: int = 1, endian: int = 0, per_block: int = 2,
                 compression: int = 0) -> Path:
    """All of ``specs`` at once, in key order (tensor i to shard i % shards); returns ``prefix``."""
    with BundleWriter(prefix, shards=shards, endian=endian, per_block=per_block, compression=compression) as w:
        for name in sorted(specs):
            w.add(name, specs[name])
    return prefix
