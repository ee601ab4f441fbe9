"""Damaged GGUF files: the reference reader, `worker inspect` and `worker serve` refuse them
with one clear line that names the file and the problem."""

from __future__ import annotations

import subprocess
from pathlib import Path

import gguf
import numpy as np
from pytest_bdd import given, parsers, then

from steps.workers import WORKER_CMD, free_port
from worker.gguf_file import GGUFError, GGUFFile

CLI_TIMEOUT_S = 120


def write_small_gguf(path: Path) -> Path:
    """A few-kilobyte llama-shaped GGUF (seeded), enough for the header and tensor checks."""
    rng = np.random.default_rng(4)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("gate fixture")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_context_length(128)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tensor("token_embd.weight", rng.standard_normal((32, 64), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((128, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@given("a small valid GGUF model file made with the gguf writer", target_fixture="valid_gguf")
def valid_gguf(tmp_path: Path) -> Path:
    path = write_small_gguf(tmp_path / "valid.gguf")
    GGUFFile(path)  # the reader accepts the undamaged file, so a refusal below is the damage's doing
    return path


def damage(src: Path, how: str) -> Path:
    data = bytearray(src.read_bytes())
    if how == "a bad magic number":
        data[0:4] = b"GGML"
    elif how == "GGUF version 2":
        data[4:8] = (2).to_bytes(4, "little")
    elif how == "its tensor data cut short":
        data = data[: len(data) - 4096]
    else:
        raise ValueError(f"unknown damage {how!r}")
    dst = src.with_name(how.replace(" ", "-") + ".gguf")
    dst.write_bytes(bytes(data))
    return dst


@given(parsers.parse("a copy of it with {how}"), target_fixture="damaged")
def damaged_copy(valid_gguf: Path, how: str) -> Path:
    return damage(valid_gguf, how)


def _names(line: str, path: Path, problem: str) -> bool:
    return str(path) in line and problem.lower() in line.lower()


@then(parsers.parse('the reference reader refuses the copy, naming the file and "{problem}"'))
def reader_refuses(damaged: Path, problem: str) -> None:
    try:
        GGUFFile(damaged)
    except GGUFError as exc:
        assert _names(str(exc), damaged, problem), f"reader message {str(exc)!r} lacks the file or {problem!r}"
        return
    raise AssertionError(f"the reader opened {damaged} without complaint")


def _run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKER_CMD, *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def _check_cli(proc: subprocess.CompletedProcess[str], damaged: Path, problem: str, what: str) -> None:
    out = proc.stderr + proc.stdout
    assert proc.returncode == 1, f"{what} exited {proc.returncode}, expected 1; output:\n{out[-2000:]}"
    lines = [ln for ln in out.splitlines() if _names(ln, damaged, problem)]
    assert lines, f"{what}: no output line names {damaged} and {problem!r}; output:\n{out[-2000:]}"


@then(parsers.parse('"worker inspect" on the copy exits 1 with a line naming the file and "{problem}"'))
def inspect_refuses(damaged: Path, problem: str) -> None:
    _check_cli(_run_cli(["inspect", str(damaged)]), damaged, problem, "worker inspect")


@then(parsers.parse('"worker serve" on the copy exits 1 with a line naming the file and "{problem}"'))
def serve_refuses(damaged: Path, problem: str) -> None:
    proc = _run_cli(["serve", "--model", str(damaged), "--device", "cpu", "--port", str(free_port())])
    _check_cli(proc, damaged, problem, "worker serve")
