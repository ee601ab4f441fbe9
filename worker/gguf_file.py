"""GGUF files: open, validate, and describe.

Built on `gguf.GGUFReader` (memory-mapped, tensor data is never copied at open). The reader is
permissive and fails deep inside NumPy on a damaged file, so the header is checked here first
with bounded reads, and every tensor's type, shape and byte range is checked before the reader
makes views of it. Every failure is a `GGUFError` whose message names the file, what was
expected and what was found.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType
from gguf.constants import GGML_QUANT_SIZES

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSION = 3
# Caps applied before a count read from the file is trusted: real models have a few thousand
# tensors and a few dozen metadata keys (vocabularies are arrays inside one key).
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_DIMS = 4


class GGUFError(ValueError):
    """A GGUF file that cannot be used; the message is meant for the person who gave the file."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length (innermost)
    n_elements: int
    n_bytes: int
    offset: int  # absolute offset in the file


def _check_header(path: Path, size: int) -> None:
    if size < 24:
        raise GGUFError(path, f"file too short for a GGUF header: expected at least 24 bytes, found {size}")
    with path.open("rb") as f:
        head = f.read(24)
    if head[:4] != GGUF_MAGIC:
        raise GGUFError(path, f"bad magic: expected {GGUF_MAGIC!r}, found {head[:4]!r} (not a GGUF file)")
    (version,) = struct.unpack_from("<I", head, 4)
    if version != SUPPORTED_VERSION:
        raise GGUFError(path, f"unsupported GGUF version: expected {SUPPORTED_VERSION}, found {version}")
    n_tensors, n_kv = struct.unpack_from("<QQ", head, 8)
    if n_tensors > MAX_TENSORS:
        raise GGUFError(path, f"implausible tensor count: expected at most {MAX_TENSORS}, found {n_tensors}")
    if n_kv > MAX_KV:
        raise GGUFError(path, f"implausible metadata count: expected at most {MAX_KV}, found {n_kv}")


class _CheckedReader(GGUFReader):
    """GGUFReader that validates tensor infos before it builds views over the data."""

    file_size: int
    path: Path
    _plain: np.ndarray | None = None

    def _get(
        self, offset: int, dtype: Any, count: int = 1, override_order: Any = None
    ) -> np.ndarray:
        # Every read is bounds-checked, so a length or count read from a damaged file fails
        # here at once instead of looping over empty views; slicing a plain ndarray rather
        # than the np.memmap subclass makes opening a 150k-token vocabulary ~10x faster.
        if self._plain is None:
            self._plain = self.data.view(np.ndarray)
        count = int(count)
        itemsize = np.dtype(dtype).itemsize
        end = offset + itemsize * count
        if count < 0 or end > self.file_size:
            raise GGUFError(
                self.path,
                f"read of {count} x {np.dtype(dtype).name} at offset {offset} runs past the end of "
                f"the file ({self.file_size} bytes); the file is truncated or a length is corrupt",
            )
        arr = self._plain[offset:end].view(dtype=dtype)
        order = self.byte_order if override_order is None else override_order
        return arr.view(arr.dtype.newbyteorder(order))

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        for field in fields:
            _, name_data, n_dims, dims, raw_dtype, offset = field.parts
            name = bytes(name_data).decode("utf-8", errors="replace")
            nd = int(n_dims[0])
            if not 1 <= nd <= MAX_DIMS:
                raise GGUFError(self.path, f"tensor {name!r}: expected 1..{MAX_DIMS} dimensions, found {nd}")
            shape = [int(d) for d in dims]
            if any(d <= 0 or d >= 1 << 40 for d in shape):
                raise GGUFError(self.path, f"tensor {name!r}: invalid dimensions {shape}")
            type_id = int(raw_dtype[0])
            try:
                qtype = GGMLQuantizationType(type_id)
            except ValueError:
                raise GGUFError(self.path, f"tensor {name!r}: unknown tensor type id {type_id}") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            if shape[0] % block:
                raise GGUFError(
                    self.path,
                    f"tensor {name!r}: row length {shape[0]} is not a multiple of {qtype.name}'s "
                    f"block size {block}",
                )
            n_elems = 1
            for d in shape:
                n_elems *= d
            n_bytes = n_elems // block * type_size
            rel = int(offset[0])
            if rel % self.alignment:
                raise GGUFError(
                    self.path, f"tensor {name!r}: data offset {rel} is not aligned to {self.alignment} bytes"
                )
            start = start_offs + rel
            if start + n_bytes > self.file_size:
                raise GGUFError(
                    self.path,
                    f"tensor {name!r}: data [{start}, {start + n_bytes}) lies past the end of the file "
                    f"({self.file_size} bytes); the file is truncated or corrupt",
                )
        super()._build_tensors(start_offs, fields)


def _field_value(field: Any) -> Any:
    """Metadata value as plain Python: str, int, float, bool, or a list of them."""
    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        sub = types[1] if len(types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        if sub == GGUFValueType.ARRAY:
            raise ValueError("nested arrays are not supported")
        # Numeric arrays (token types, per-layer counts) come back as one NumPy array.
        return np.array([field.parts[i][0] for i in field.data])
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8", errors="replace")
    value = field.parts[-1][0]
    if types[0] == GGUFValueType.BOOL:
        return bool(value)
    if types[0] in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return float(value)
    return int(value)


class GGUFFile:
    """An opened, validated GGUF file: metadata as Python values, tensors as raw mapped views."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise GGUFError(self.path, "file not found")
        if not self.path.is_file():
            raise GGUFError(self.path, "not a regular file")
        self.file_size = self.path.stat().st_size
        _check_header(self.path, self.file_size)
        reader = _CheckedReader.__new__(_CheckedReader)
        reader.file_size = self.file_size
        reader.path = self.path
        try:
            GGUFReader.__init__(reader, self.path)
        except GGUFError:
            raise
        except (ValueError, IndexError, KeyError, UnicodeDecodeError, OverflowError, struct.error) as exc:
            raise GGUFError(self.path, f"malformed header or metadata: {exc}") from None
        self._reader = reader
        self.alignment = int(reader.alignment)
        self.data_offset = int(reader.data_offset)
        try:
            self.metadata: dict[str, Any] = {
                k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")
            }
        except (ValueError, IndexError) as exc:
            raise GGUFError(self.path, f"malformed metadata value: {exc}") from None
        self.tensors: dict[str, TensorInfo] = {}
        for t in reader.tensors:
            shape = tuple(int(d) for d in t.shape)
            self.tensors[t.name] = TensorInfo(
                name=t.name,
                type_id=int(t.tensor_type),
                type_name=t.tensor_type.name,
                shape=shape,
                n_elements=int(t.n_elements),
                n_bytes=int(t.n_bytes),
                offset=int(t.data_offset),
            )
        self._views = {t.name: t.data for t in reader.tensors}

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise GGUFError(self.path, "missing required metadata key 'general.architecture'")
        return arch

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored data as a read-only mapped view (bytes for block formats)."""
        try:
            return self._views[name]
        except KeyError:
            raise GGUFError(self.path, f"missing tensor {name!r}") from None

    def require(self, key: str, kind: type | tuple[type, ...] = (int, float, str)) -> Any:
        value = self.metadata.get(key)
        if value is None:
            raise GGUFError(self.path, f"missing required metadata key {key!r}")
        if not isinstance(value, kind):
            raise GGUFError(self.path, f"metadata key {key!r}: expected {kind}, found {type(value).__name__}")
        return value

    @property
    def quant_kind(self) -> str:
        return quant_kind_name(self.metadata.get("general.file_type"), self.tensors.values())

    def tensor_type_counts(self) -> dict[str, int]:
        return dict(Counter(t.type_name for t in self.tensors.values()).most_common())

    def close(self) -> None:
        """Drop the mapping; views handed out earlier keep it alive until they go too."""
        self._views.clear()
        self._reader = None  # type: ignore[assignment]


def quant_kind_name(file_type: Any, tensors: Any = ()) -> str:
    """`general.file_type` as llama.cpp names it (Q4_K_M, Q8_0, MXFP4 ...)."""
    if isinstance(file_type, int):
        try:
            name = LlamaFileType(file_type).name
        except ValueError:
            return f"UNKNOWN({file_type})"
        name = name.removeprefix("MOSTLY_").removeprefix("ALL_")
        return "MXFP4" if name == "MXFP4_MOE" else name
    # No file_type: name the most common weight type.
    counts = Counter(t.type_name for t in tensors if len(t.shape) > 1)
    return counts.most_common(1)[0][0] if counts else "UNKNOWN"
