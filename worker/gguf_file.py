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
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType
from gguf.constants import GGML_QUANT_SIZES
from gguf.gguf_reader import ReaderField

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSION = 3
# Caps applied before a count read from the file is trusted: real models have a few thousand
# tensors and a few dozen metadata keys (vocabularies are arrays inside one key). The reader
# makes NumPy views per tensor info, key and string (~600 bytes per string once decoded), so
# these bound what a hostile file can make it allocate, whatever its counts say.
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_DIMS = 4
# Strings in all arrays of a file: Llama 3's 128k tokens + 280k merges, the most in a real
# vocabulary, fit 2.5x over; the worst a file can cost is then ~0.6 GB.
MAX_STRINGS = 1 << 20
MAX_STRING_BYTES = 1 << 24  # one string (chat templates are a few KB)
# Smallest encodings, to reject counts the file cannot hold before reading any of them:
# a KV is a key length (8) + type (4) + a 1-byte value; a tensor info is a name length (8),
# n_dims (4), one dimension (8), type (4) and offset (8).
MIN_KV_BYTES = 13
MIN_TENSOR_INFO_BYTES = 32


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
    need = n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES
    if 24 + need > size:
        raise GGUFError(
            path,
            f"{n_kv} metadata keys and {n_tensors} tensor infos need at least {24 + need} bytes, past the end "
            f"of the file ({size} bytes); the file is truncated or the counts are corrupt",
        )


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

    def _build_fields(self, offs: int, count: int) -> int:
        # gguf-py's loop, with the key known while its value is read (errors name it) and the
        # per-file string budget reset.
        self._strings_left = MAX_STRINGS
        for _ in range(count):
            orig_offs = offs
            kv_klen, kv_kdata = self._get_str(offs)
            offs += int(kv_klen.nbytes + kv_kdata.nbytes)
            try:
                self._key = bytes(kv_kdata).decode("utf-8")
            except UnicodeDecodeError:
                raise GGUFError(self.path, f"metadata key at offset {orig_offs} is not UTF-8") from None
            raw_kv_type = self._get(offs, np.uint32)
            offs += int(raw_kv_type.nbytes)
            parts: list[np.ndarray] = [kv_klen, kv_kdata, raw_kv_type]
            idxs_offs = len(parts)
            field_size, field_parts, field_idxs, field_types = self._get_field_parts(offs, int(raw_kv_type[0]))
            parts += field_parts
            if self._key in self.fields:
                raise GGUFError(self.path, f"metadata key {self._key!r} appears twice")
            self.fields[self._key] = ReaderField(
                orig_offs, self._key, parts, [i + idxs_offs for i in field_idxs], field_types
            )
            offs += field_size
        return offs

    def _get_str(self, offset: int) -> tuple[np.ndarray, np.ndarray]:
        slen = self._get(offset, np.uint64)
        data = self._get(offset + 8, np.uint8, int(slen[0]))  # a view: bounds-checked, nothing copied
        if int(slen[0]) > MAX_STRING_BYTES:
            raise GGUFError(
                self.path,
                f"string at offset {offset} is {int(slen[0])} bytes long; expected at most {MAX_STRING_BYTES}",
            )
        return slen, data

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[np.ndarray], list[int], list[Any]]:
        """A metadata value's parts. Unlike gguf-py: an unknown type or a nested array is an
        error naming the key; an array's length is checked against the bytes left and the
        string budget before any element is read; a numeric array is one view (gguf-py makes
        one per element: 100 MB of uint8 would cost ~10 GB of views)."""
        key = getattr(self, "_key", "?")
        try:
            gtype = GGUFValueType(raw_type)
        except ValueError:
            raise GGUFError(self.path, f"metadata key {key!r}: unknown value type id {raw_type}") from None
        if gtype != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        offs = orig_offs
        raw_itype = self._get(offs, np.uint32)
        alen = self._get(offs + 4, np.uint64)
        offs += 12
        n, itype = int(alen[0]), int(raw_itype[0])
        try:
            sub = GGUFValueType(itype)
        except ValueError:
            raise GGUFError(self.path, f"metadata key {key!r}: unknown array element type id {itype}") from None
        if sub == GGUFValueType.ARRAY:
            # llama.cpp refuses them too; following them would recurse once per nesting level.
            raise GGUFError(self.path, f"metadata key {key!r}: nested arrays are not supported")
        if sub == GGUFValueType.STRING:
            if n * 8 > self.file_size - offs:
                raise GGUFError(
                    self.path,
                    f"metadata key {key!r}: an array of {n} strings needs at least {n * 8} bytes, past the end "
                    f"of the file ({self.file_size - offs} bytes left); the file is truncated or the length corrupt",
                )
            if n > self._strings_left:
                raise GGUFError(
                    self.path,
                    f"metadata key {key!r}: array of {n} strings; expected at most {self._strings_left} "
                    f"(at most {MAX_STRINGS} strings in all of a file's arrays)",
                )
            self._strings_left -= n
            parts: list[np.ndarray] = [raw_itype, alen]
            for _ in range(n):
                slen, sdata = self._get_str(offs)
                parts += [slen, sdata]
                offs += 8 + int(slen[0])
            return offs - orig_offs, parts, list(range(3, len(parts), 2)), [gtype, sub]
        values = self._get(offs, self.gguf_scalar_to_np[sub], n)  # bounds-checked against the file
        return offs + int(values.nbytes) - orig_offs, [raw_itype, alen, values], [2], [gtype, sub]

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        spans: list[tuple[int, int, str]] = []
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
            spans.append((start, start + n_bytes, name))
        # Two tensors sharing bytes is a corrupt (or crafted) file, as llama.cpp's loader says too.
        spans.sort()
        for (a0, a1, a), (b0, b1, b) in pairwise(spans):
            if b0 < a1:
                raise GGUFError(self.path, f"tensor {b!r}: data [{b0}, {b1}) overlaps tensor {a!r} [{a0}, {a1})")
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
        # Numeric arrays (token types, per-layer counts) are one view (see _get_field_parts):
        # copied out of the mapping, in native byte order.
        values = field.parts[field.data[0]]
        return np.array(values, dtype=values.dtype.newbyteorder("="))
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
        except (ValueError, IndexError, KeyError, UnicodeDecodeError, OverflowError, struct.error,
                ZeroDivisionError, RecursionError) as exc:
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
