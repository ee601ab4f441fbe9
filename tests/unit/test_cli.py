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


# --- --tokenizer / a tokenizer.json beside the model (hf-json) -----------------------------------


@pytest.fixture(scope="module")
def made_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny qwen2 fixture and a tokenizer.json of its own vocabulary, in separate folders."""
    from fixtures.build import build_fixture
    from fixtures.hf_tokenizer import byte_level_json, write
    from worker.gguf_file import GGUFFile

    model = build_fixture("qwen2", tmp_path_factory.mktemp("model"))  # vocabulary from SmolLM2 (registry)
    m = GGUFFile(model).metadata
    doc = byte_level_json(m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"], m["tokenizer.ggml.merges"],
                          "qwen2")  # fmt: skip
    return model, write(doc, tmp_path_factory.mktemp("tok") / "tokenizer.json")


def _generate(model: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("generate", "--model", str(model), "--device", "cpu", "--prompt", "Write a haiku about GPUs",
               "--max-tokens", "5", *extra)  # fmt: skip


@pytest.mark.realmodel
def test_generate_with_tokenizer_json_gives_the_same_text(made_model: tuple[Path, Path]) -> None:
    model, tok = made_model
    plain, hf = _generate(model), _generate(model, "--tokenizer", str(tok))
    assert plain.returncode == 0 and hf.returncode == 0, plain.stderr + hf.stderr
    assert hf.stdout == plain.stdout and hf.stdout.strip()
    ends = [json.loads(r.stderr.strip().splitlines()[-1]) for r in (plain, hf)]
    from worker.gguf_file import GGUFFile
    from worker.tokenizer import load_tokenizer

    n_prompt = len(load_tokenizer(GGUFFile(model)).encode("Write a haiku about GPUs"))
    assert ends[0]["prompt_tokens"] == ends[1]["prompt_tokens"] == n_prompt


@pytest.mark.realmodel
def test_missing_tokenizer_json_is_one_clear_line(made_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = made_model
    r = _generate(model, "--tokenizer", str(tmp_path / "tokenizer.json"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines == [f"error: {tmp_path / 'tokenizer.json'}: tokenizer.json not found"], r.stderr


@pytest.mark.realmodel
def test_tokenizer_json_beside_the_model_is_used(made_model: tuple[Path, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    from worker.backends.numpy_backend import NumpyBackend
    from worker.model import load_model

    model, tok = made_model
    here = tmp_path / model.name
    here.symlink_to(model)
    assert load_model(here, NumpyBackend()).tokenizer.kind == "gguf-bpe"
    (tmp_path / "tokenizer.json").write_bytes(tok.read_bytes())
    with caplog.at_level("WARNING", logger="worker.model"):
        loaded = load_model(here, NumpyBackend())
    assert loaded.tokenizer.kind == "hf-json"
    assert any("found beside the model" in r.getMessage() for r in caplog.records)
    # ...and a broken one there stops the start-up, naming it, rather than being skipped.
    (tmp_path / "tokenizer.json").write_text("{")
    r = _generate(here)
    assert r.returncode == 1 and f"{tmp_path / 'tokenizer.json'}: malformed tokenizer.json" in r.stderr


def test_serve_uses_the_given_tokenizer(made_model: tuple[Path, Path]) -> None:
    from tests.service.conftest import start_worker

    model, tok = made_model
    w = start_worker("--tokenizer", str(tok), model=str(model))
    try:
        with w.client() as c:
            assert c.get("/health").json()["tokenizer_kind"] == "hf-json"
    finally:
        assert w.stop() == 0
