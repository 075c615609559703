"""Lazy safetensors reading (memory-mapped) and streaming writing.

Why not the `safetensors` package directly: its numpy backend has no bfloat16,
and we want to read one tensor (or one slice of one) at a time from a memory
map so that loading a 7B checkpoint never holds two full copies in host memory.
The format is simple: an 8-byte little-endian header length, a JSON header
`{name: {dtype, shape, data_offsets}}`, then the raw little-endian bytes.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsFile:
    """One .safetensors file; `get(name)` returns a read-only memory-mapped numpy view."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{self.path}: not a safetensors file (shorter than its 8-byte header length)")
            (header_len,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{self.path}: unreadable safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.header = header
        self._data_start = 8 + header_len
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if header else None

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        raw = self._map[self._data_start + begin : self._data_start + end]
        return raw.view(DTYPES[info["dtype"]]).reshape(info["shape"])


class CheckpointReader:
    """All tensors of an HF folder, single-file or sharded (`model.safetensors.index.json`)."""

    def __init__(self, folder: str | os.PathLike):
        folder = pathlib.Path(folder)
        index = folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: expected a JSON object with a 'weight_map' ({e})") from None
            files = sorted(set(weight_map.values()))
        elif (folder / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} (expected safetensors weights)")
        self._where: dict[str, SafetensorsFile] = {}
        for name in files:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{index}: lists {name}, which is not in {folder}")
            shard = SafetensorsFile(folder / name)
            for key in shard.keys():
                self._where[key] = shard

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)

    def file_of(self, name: str) -> pathlib.Path:
        return self._where[name].path


# A tensor to write: name, shape, numpy dtype, and a function producing its array.
TensorSpec = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def _write_file(path: pathlib.Path, tensors: list[TensorSpec]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype, _ in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape, dtype, produce in tensors:
            array = np.ascontiguousarray(produce(), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"tensor {name!r}: produced shape {array.shape}, declared {tuple(shape)}")
            f.write(array.tobytes())


def write_checkpoint(folder: pathlib.Path, tensors: Iterable[TensorSpec], max_shard_bytes: int) -> list[str]:
    """Writes tensors one at a time into `folder`, sharded with an index above `max_shard_bytes`."""
    tensors = list(tensors)
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in tensors:
        nbytes = int(np.prod(spec[1], dtype=np.int64)) * spec[2].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    if len(shards) == 1:
        _write_file(folder / SINGLE_FILE, shards[0])
        return [SINGLE_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    total = 0
    for name, shard in zip(names, shards):
        _write_file(folder / name, shard)
        for spec in shard:
            weight_map[spec[0]] = name
            total += int(np.prod(spec[1], dtype=np.int64)) * spec[2].itemsize
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return names + [INDEX_FILE]
