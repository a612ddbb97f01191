"""Tensors of a safetensors file as read-only NumPy memory maps: an index's rows are read from disk when a search
touches them (approximate search rescoring a few candidates reads a few rows, not the whole matrix).

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte range
in the data that follows (https://github.com/huggingface/safetensors, "Format")."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from vattcli.errors import VattError

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8, "I8": np.int8, "BOOL": np.bool_}


class SafetensorsFile:
    """Named tensors of one safetensors file, each mapped on first use."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = self.path.stat().st_size
                (length,) = struct.unpack("<Q", f.read(8))
                if length > size - 8:
                    raise ValueError(f"header of {length} bytes in a {size}-byte file")
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error) as e:
            raise VattError(f"{self.path}: not a readable safetensors file ({e})") from e
        self._offset = 8 + length
        self._size = size
        self._meta: dict[str, Any] = {k: v for k, v in header.items() if k != "__metadata__"}
        self._arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._meta

    def shape(self, name: str) -> tuple[int, ...] | None:
        entry = self._meta.get(name)
        return tuple(entry["shape"]) if entry else None

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            entry = self._meta.get(name)
            if entry is None or entry.get("dtype") not in _DTYPES:
                raise VattError(f"{self.path}: no tensor {name!r} of a known dtype")
            begin, end = entry["data_offsets"]
            dtype, shape = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<"), tuple(entry["shape"])
            if end - begin != dtype.itemsize * int(np.prod(shape)) or self._offset + end > self._size:
                raise VattError(f"{self.path}: tensor {name!r} does not fit the file (truncated?)")
            if end == begin:
                self._arrays[name] = np.zeros(shape, dtype)
            else:
                self._arrays[name] = np.memmap(self.path, dtype=dtype, mode="r", offset=self._offset + begin,
                                               shape=shape)
        return self._arrays[name]
