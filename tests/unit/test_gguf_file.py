"""The GGUF reader's error paths: each damaged file gives one clear GGUFError naming the problem."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from fixtures.tiny import write_tiny
from worker.gguf_file import GGUFError, GGUFFile
from worker.model_config import ModelConfig, UnsupportedArchitecture


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return write_tiny(tmp_path / "tiny.gguf")


def expect_error(path: Path, *needles: str) -> GGUFError:
    with pytest.raises(GGUFError) as info:
        GGUFFile(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return info.value


def test_valid_file_opens(tiny: Path) -> None:
    f = GGUFFile(tiny)
    assert f.architecture == "llama"
    assert f.quant_kind == "Q8_0"
    assert f.tensors["token_embd.weight"].shape == (64, 32)
    assert f.tensor_type_counts() == {"Q8_0": 1, "F32": 1}
    assert f.metadata["llama.embedding_length"] == 64


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.gguf", "file not found")


def test_bad_magic(tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    data[:4] = b"GGML"
    tiny.write_bytes(data)
    expect_error(tiny, "bad magic", "b'GGUF'", "b'GGML'")


def test_wrong_version(tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    struct.pack_into("<I", data, 4, 2)
    tiny.write_bytes(data)
    expect_error(tiny, "unsupported GGUF version", "expected 3", "found 2")


def test_too_short(tmp_path: Path) -> None:
    p = tmp_path / "short.gguf"
    p.write_bytes(b"GGUF\x03\x00")
    expect_error(p, "too short")


def test_truncated_tensor_data(tiny: Path) -> None:
    data = tiny.read_bytes()
    tiny.write_bytes(data[: len(data) - 100])
    expect_error(tiny, "past the end of the file", "output_norm.weight")


@pytest.mark.parametrize("cut", [30, 200, 600])
def test_truncated_in_metadata(tiny: Path, cut: int) -> None:
    tiny.write_bytes(tiny.read_bytes()[:cut])
    err = expect_error(tiny)
    assert "past the end" in err.problem or "malformed" in err.problem


def test_absurd_tensor_count(tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    struct.pack_into("<Q", data, 8, 1 << 60)
    tiny.write_bytes(data)
    expect_error(tiny, "implausible tensor count")


def test_string_length_past_end(tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    # First metadata key's length field sits right after the 24-byte header.
    struct.pack_into("<Q", data, 24, 1 << 40)
    tiny.write_bytes(data)
    expect_error(tiny, "past the end of the file")


def _tensor_info_offset(data: bytes, name: bytes) -> int:
    at = data.index(name)
    return at + len(name)  # n_dims follows the name


def test_unknown_tensor_type(tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    at = _tensor_info_offset(data, b"output_norm.weight")
    (n_dims,) = struct.unpack_from("<I", data, at)
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, 9999)
    tiny.write_bytes(data)
    expect_error(tiny, "unknown tensor type id 9999", "output_norm.weight")


def test_zero_dimension(tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    at = _tensor_info_offset(data, b"output_norm.weight")
    struct.pack_into("<Q", data, at + 4, 0)
    tiny.write_bytes(data)
    expect_error(tiny, "invalid dimensions", "output_norm.weight")


def test_misaligned_offset(tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    at = _tensor_info_offset(data, b"output_norm.weight")
    (n_dims,) = struct.unpack_from("<I", data, at)
    off_at = at + 4 + 8 * n_dims + 4
    (off,) = struct.unpack_from("<Q", data, off_at)
    struct.pack_into("<Q", data, off_at, off + 3)
    tiny.write_bytes(data)
    expect_error(tiny, "not aligned")


def test_unsupported_architecture(tmp_path: Path) -> None:
    f = GGUFFile(write_tiny(tmp_path / "mamba.gguf", arch="mamba"))
    with pytest.raises(UnsupportedArchitecture) as info:
        ModelConfig.from_gguf(f)
    assert "'mamba'" in str(info.value) and "llama" in str(info.value)


def test_missing_required_metadata(tmp_path: Path) -> None:
    p = tmp_path / "nohead.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError) as info:
        ModelConfig.from_gguf(GGUFFile(p))
    assert "llama.embedding_length" in str(info.value)


def test_config_from_tiny(tiny: Path) -> None:
    cfg = ModelConfig.from_gguf(GGUFFile(tiny))
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_heads, cfg.head_dim) == (1, 64, 4, 2, 16)
    assert cfg.vocab_size == 32 and cfg.tied_embeddings and cfg.rope_style == "normal"
