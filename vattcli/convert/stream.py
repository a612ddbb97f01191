"""A safetensors file written one tensor at a time, so converting never holds the whole model in memory.

The format [safetensors spec]: an 8-byte little-endian header length, a JSON header (``__metadata__`` plus, per
tensor, dtype, shape and ``[begin, end)`` offsets into the data, which follow contiguously in header order), padded
with spaces to a multiple of 8 bytes, then the raw little-endian data. Offsets are fixed before any tensor is
converted (the rules know every target shape), so each tensor is produced, written and dropped in turn. The sha256
the checkpoint's ``meta.json`` records is computed over the bytes as they are written.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from vattcli.errors import ConvertError

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}


def write_streamed(path: Path, specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
                   produce: Callable[[str], np.ndarray], metadata: dict[str, str],
                   done: Callable[[str], None] = lambda name: None) -> str:
    """Write ``(name, shape, dtype)`` tensors, each made by ``produce(name)`` (``done(name)`` once it is written, so
    its sources can be released); return the file's sha256 hex."""
    header: dict = {"__metadata__": metadata}
    order: list[tuple[str, tuple[int, ...], np.dtype]] = []
    offset = 0
    for name, shape, dtype in specs:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _DTYPES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        order.append((name, tuple(shape), np.dtype(dtype)))
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(text)), text):
            f.write(chunk)
            digest.update(chunk)
        for name, shape, dtype in order:
            array = produce(name)
            if array.shape != shape or array.dtype != dtype:
                raise ConvertError(f"{name}: produced {array.dtype}{tuple(array.shape)}, expected {dtype}{shape}")
            data = memoryview(np.ascontiguousarray(array.astype(dtype.newbyteorder("<"), copy=False))).cast("B")
            f.write(data)
            digest.update(data)
            done(name)
    return digest.hexdigest()
