"""The command line: inspect, generate (stdout carries only the text), clear start-up errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.tiny import write_tiny

WORKER = [sys.executable, "-m", "worker.cli"]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKER, *args], capture_output=True, text=True, timeout=timeout)


def test_inspect_prints_the_model(tmp_path: Path) -> None:
    p = write_tiny(tmp_path / "tiny.gguf")
    r = run("inspect", str(p), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["architecture"] == "llama"
    assert info["quant_kind"] == "Q8_0"
    assert info["tensor_types"] == {"Q8_0": 1, "F32": 1}
    assert info["hyperparameters"]["n_embd"] == 64
    assert info["tokenizer"]["kind"] == "gguf-bpe"
    assert info["chat_template"] == {"present": False, "size_chars": 0}


def test_inspect_bad_file_is_one_clear_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"NOPE" + bytes(60))
    r = run("inspect", str(p))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(p) in lines[0] and "bad magic" in lines[0]


def test_unknown_model_name_fails_clearly() -> None:
    r = run("generate", "--model", "no-such-model", "--prompt", "hi", "--device", "cpu")
    assert r.returncode == 1
    assert "no-such-model" in r.stderr and "qwen2.5-0.5b-instruct" in r.stderr


@pytest.mark.realmodel
def test_generate_streams_only_text_to_stdout() -> None:
    r = run("generate", "--model", "smollm2-135m-instruct", "--device", "cpu",
            "--prompt", "The capital of France is", "--max-tokens", "6", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and r.stdout.strip()
    assert "{" not in r.stdout  # logs and stats go to stderr
    end = json.loads(r.stderr.strip().splitlines()[-1])
    assert end["event"] == "generate_end" and end["tokens_out"] <= 6 and end["device"] == "cpu"
    # Greedy by default: a second run prints the same text.
    again = run("generate", "--model", "smollm2-135m-instruct", "--device", "cpu",
                "--prompt", "The capital of France is", "--max-tokens", "6", "--seed", "2")
    assert again.stdout == r.stdout
