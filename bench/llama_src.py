#!/usr/bin/env python3
"""The llama.cpp sources llama-bench needs, from the llama-cpp-python sdist, as one .tar.xz.

    python bench/llama_src.py OUT.tar.xz [--version 0.3.36]

The GPU machine has no network and a call carries at most 64 MiB; the sdist is 77 MB. This
keeps the vendored llama.cpp's build files, ggml (CPU and CUDA backends only), src, include,
common, vendor and tools/llama-bench, with a tools/CMakeLists.txt that adds llama-bench alone
(about 2 MB compressed). The version is the one the conformance session tests against.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KEEP = ("CMakeLists.txt", "cmake/", "include/", "src/", "common/", "vendor/", "licenses/", "tools/llama-bench/",
        "ggml/CMakeLists.txt", "ggml/cmake/", "ggml/include/", "ggml/src/ggml-cpu/", "ggml/src/ggml-cuda/")  # fmt: skip
TOOLS_CMAKE = b"find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(llama-bench)\n"


def keep(rel: str) -> bool:
    if rel.startswith("ggml/src/") and rel.count("/") == 2:
        return True  # ggml/src's own files, not the other backends' folders
    if rel == "vendor/miniaudio/miniaudio.h":
        return False  # 4 MB, used by mtmd only (an empty stand-in is written)
    return any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--version", default="0.3.36")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, f"llama-cpp-python=={args.version}"], check=True)  # fmt: skip
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"llama_cpp_python-{args.version}/vendor/llama.cpp/"
        with tarfile.open(sdist) as src, tarfile.open(args.out, "w:xz", preset=9) as dst:
            for m in src.getmembers():
                if not m.name.startswith(prefix) or not m.isfile():
                    continue
                rel = m.name[len(prefix) :]
                if not keep(rel):
                    continue
                data = src.extractfile(m).read()  # type: ignore[union-attr]
                if rel == "vendor/miniaudio/miniaudio.h":
                    data = b""
                info = tarfile.TarInfo("llama.cpp/" + rel)
                info.size, info.mode = len(data), m.mode
                dst.addfile(info, io.BytesIO(data))
            for rel, data in (("tools/CMakeLists.txt", TOOLS_CMAKE), ("vendor/miniaudio/miniaudio.h", b"")):
                info = tarfile.TarInfo("llama.cpp/" + rel)
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
    print(args.out, Path(args.out).stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
