#!/usr/bin/env bash
# CUDA backend check, on a machine with a CUDA GPU and CuPy:
#   bench/gpu.sh [--gates] [--speed] [--no-check] OUTDIR
# 1. installs the wheels carried in .whl (runtime deps the GPU image lacks), if any;
# 2. builds the full-shape GGUF fixtures from a seed (tests/cuda/make_fixture.py), in the
#    background while 3. runs `pytest tests/cuda -m cuda` (tiny fixtures of its own);
# 4. runs bench/gpu_check.py: kernels vs NumPy, whole models, determinism, residency, OOM
#    series, first speed figures; its table is printed last, JSON in OUTDIR/gpu_check.json.
# 5. with --gates: the Gherkin gates on this GPU (--worker-device cuda): every @cuda scenario
#    and gate 3 (architectures), one pytest run (workers shared); registry models that
#    cannot be fetched here (no cached copy, no package index reachable) skip with the reason
#    "registry model not available offline on this machine". Reports: OUTDIR/gate3.md, gate4.md,
#    gates_reports.tgz (JUnit, JSON, worker logs).
# 6. with --speed: bench/gpu_speed.py on full-shape Qwen2.5-0.5B (Q4_K_M mix) and SmolLM2
#    (Q4_1) files built here, beside llama.cpp's llama-bench on the same files. llama-bench
#    is built in the background from the llama.cpp sources vendored in llama-cpp-python
#    (.gpu-fixtures/llama.cpp-src.tar.xz, made by `bench/gpu.sh --prebuild-fixtures`; a CUDA
#    sm_90 build, ~5 min on 16 cores), or taken prebuilt from .gpu-fixtures/llama-bench.xz
#    (which a build leaves in OUTDIR as llama-bench.xz.N parts: cat them into that file to
#    carry next time). LLAMA_BENCH_BUILD=0 skips the build when no prebuilt one is carried.
# 7. with --full-arch: bench/gpu_full_arch.py: the full-shape phi3 and gpt-oss-20b files (built
#    here) served by `worker serve --device cuda`: /health and one generation each.
# --no-check skips step 4 (gpu_check.py). A short summary table (OOM series, architectures,
# gates, speed) is printed last.
# Env: WORKER_FIXTURES (fixture dir), GPU_CHECK_ARGS (extra gpu_check.py arguments),
# GPU_SPEED_MODELS (which full-shape files --speed measures: "qwen2 llama" by default; add
# gpt-oss), GPU_SPEED_ARGS (extra gpu_speed.py arguments).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if [ "${1:-}" = "--prebuild-fixtures" ]; then
  # Here, where the SmolLM2 registry model is cached: the tiny phi3 / gpt2 / gpt-oss fixtures,
  # SmolLM2's vocabulary lists (full-shape fixtures are built on the GPU machine from them) and
  # the llama.cpp sources llama-bench needs, into .gpu-fixtures (git-ignored), to carry to a GPU
  # machine that cannot fetch them.
  grep -qxF '/.gpu-fixtures/' .git/info/exclude 2>/dev/null || echo '/.gpu-fixtures/' >> .git/info/exclude
  python3 -c 'from fixtures.build import build_fixture
for a in ("phi3", "gpt2", "gpt-oss"): print(build_fixture(a, ".gpu-fixtures", seed=0))' || exit 1
  python3 -m fixtures.vocab .gpu-fixtures/smollm2-vocab.json.gz || exit 1
  exec python3 bench/llama_src.py .gpu-fixtures/llama.cpp-src.tar.xz
fi
GATES=0 SPEED=0 CHECK=1 FULLARCH=0
while [ $# -gt 1 ]; do
  case "$1" in
    --gates) GATES=1 ;;
    --full-arch) FULLARCH=1 ;;
    --speed) SPEED=1 ;;
    --no-check) CHECK=0 ;;
    *) break ;;
  esac
  shift
done
OUT=${1:?usage: bench/gpu.sh [--gates] [--speed] [--full-arch] [--no-check] OUTDIR | bench/gpu.sh --prebuild-fixtures}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${WORKER_FIXTURES:-}" ]; then
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then WORKER_FIXTURES=/dev/shm/worker-fixtures; else WORKER_FIXTURES=/tmp/worker-fixtures; fi
fi
# The tiny phi3 / gpt2 / gpt-oss fixtures take their vocabulary from the SmolLM2 registry
# model (fixtures/vocab.py), which a GPU machine without network cannot fetch: use the
# prebuilt ones (bench/gpu.sh --prebuild-fixtures, carried as .gpu-fixtures) when present.
if [ -z "${WORKER_ARCH_FIXTURES:-}" ] && compgen -G ".gpu-fixtures/*.gguf" >/dev/null; then
  WORKER_ARCH_FIXTURES=$PWD/.gpu-fixtures
fi
mkdir -p "$WORKER_FIXTURES"
[ -f .gpu-fixtures/smollm2-vocab.json.gz ] && export WORKER_SMOLLM2_VOCAB=$PWD/.gpu-fixtures/smollm2-vocab.json.gz
LLAMA_BENCH=/tmp/llama-bench
# the full-shape files --speed measures: qwen2 (Qwen2.5-0.5B's Q4_K_M mix), llama (SmolLM2's
# shape, Q4_1), gpt-oss (gpt-oss-20b's shape, MXFP4 experts: a 12.6 GB file, 40 s to build)
SPEED_MODELS=${GPU_SPEED_MODELS:-qwen2 llama}
if [ "$SPEED" -eq 1 ]; then
  # llama-bench and the full-shape speed fixtures, in the background while the tests run
  (
    if [ ! -x "$LLAMA_BENCH" ] && [ -f .gpu-fixtures/llama-bench.xz ]; then
      python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' \
        .gpu-fixtures/llama-bench.xz "$LLAMA_BENCH" && chmod +x "$LLAMA_BENCH"
    fi
    if [ ! -x "$LLAMA_BENCH" ] && [ "${LLAMA_BENCH_BUILD:-1}" = 1 ]; then
      t0=$(date +%s)
      rm -rf /tmp/lcpp && mkdir -p /tmp/lcpp && tar xJf .gpu-fixtures/llama.cpp-src.tar.xz -C /tmp/lcpp &&
      cmake -S /tmp/lcpp/llama.cpp -B /tmp/lcpp/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF >/tmp/lcpp/cmake.log 2>&1 &&
      timeout 480 cmake --build /tmp/lcpp/build --target llama-bench -j "$(nproc)" >/tmp/lcpp/build.log 2>&1 &&
      cp /tmp/lcpp/build/bin/llama-bench "$LLAMA_BENCH" && strip "$LLAMA_BENCH" &&
      python3 -c 'import lzma, sys
# in parts under the 16 MiB a file may have to come back from the GPU machine
data = lzma.compress(open(sys.argv[1], "rb").read(), preset=6)
for i in range(0, len(data), 15 << 20):
    open(f"{sys.argv[2]}.{i // (15 << 20)}", "wb").write(data[i : i + (15 << 20)])' "$LLAMA_BENCH" "$OUT/llama-bench.xz"
      echo "llama-bench build: rc=$? in $(( $(date +%s) - t0 )) s"; tail -3 /tmp/lcpp/build.log 2>/dev/null
    fi
  ) >"$OUT/llama_bench_build.log" 2>&1 &
  lb_pid=$!
  (
    for a in $SPEED_MODELS; do
      [ -f "$WORKER_FIXTURES/$a-full-s0.gguf" ] || python3 -m fixtures.build "$a" "$WORKER_FIXTURES/$a-full-s0.gguf" --full
    done
  ) >"$OUT/speed_fixtures.log" 2>&1 &
  sf_pid=$!
fi
if [ -n "${WORKER_ARCH_FIXTURES:-}" ]; then
  export WORKER_ARCH_FIXTURES
  cp "$WORKER_ARCH_FIXTURES"/*-tiny-s0.gguf "$WORKER_FIXTURES/"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c 'import cupy, numpy, sys; print("python", sys.version.split()[0], "cupy", cupy.__version__, "numpy", numpy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion())'

# GPU_FULL_FIXTURES=0 skips the full-shape build (for GPU_CHECK_ARGS="--sections arch");
# PYTEST_CUDA_ARGS adds pytest arguments (e.g. -k arch) to the tests/cuda run.
if [ "${GPU_FULL_FIXTURES:-$CHECK}" = 0 ]; then
  (echo "full-shape fixtures not built (GPU_FULL_FIXTURES=0)") >"$OUT/fixtures.log" 2>&1 &
else
  python3 tests/cuda/make_fixture.py "$WORKER_FIXTURES" >"$OUT/fixtures.log" 2>&1 &
fi
fixtures_pid=$!
# shellcheck disable=SC2086
python3 -m pytest tests/cuda -m cuda -q -p no:cacheprovider ${PYTEST_CUDA_ARGS:-} 2>&1 | tee "$OUT/pytest.log"
rc_pytest=${PIPESTATUS[0]}
wait "$fixtures_pid"
rc_fix=$?
cat "$OUT/fixtures.log"
[ "$rc_fix" -eq 0 ] || { echo "fixture build failed"; exit 1; }
rc_check=0
if [ "$CHECK" -eq 1 ]; then
  # shellcheck disable=SC2086
  python3 bench/gpu_check.py --fixtures "$WORKER_FIXTURES" --out "$OUT" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUT/gpu_check.log"
  rc_check=${PIPESTATUS[0]}
fi
rc_full=0
if [ "$FULLARCH" -eq 1 ]; then
  python3 bench/gpu_full_arch.py --dir "$WORKER_FIXTURES" --out "$OUT" 2>&1 | tee "$OUT/gpu_full_arch.log"
  rc_full=${PIPESTATUS[0]}
fi
rc_speed=0
if [ "$SPEED" -eq 1 ]; then
  wait "$sf_pid"; cat "$OUT/speed_fixtures.log"
  wait "$lb_pid"; cat "$OUT/llama_bench_build.log"
  lb_args=()
  [ -x "$LLAMA_BENCH" ] && lb_args=(--llama-bench "$LLAMA_BENCH")
  models=()
  for a in $SPEED_MODELS; do
    case "$a" in
      qwen2) models+=(--model "qwen2.5-0.5b-shape=$WORKER_FIXTURES/qwen2-full-s0.gguf") ;;
      llama) models+=(--model "smollm2-shape=$WORKER_FIXTURES/llama-full-s0.gguf") ;;
      gpt-oss) models+=(--model "gpt-oss-20b-shape=$WORKER_FIXTURES/gpt-oss-full-s0.gguf") ;;
    esac
  done
  # shellcheck disable=SC2086
  python3 bench/gpu_speed.py "${models[@]}" "${lb_args[@]}" ${GPU_SPEED_ARGS:-} \
    --out "$OUT" 2>&1 | tee "$OUT/gpu_speed.log"
  rc_speed=${PIPESTATUS[0]}
fi
rc_gates=0
if [ "$GATES" -eq 1 ]; then
  rep=$(mktemp -d)
  # the harness builds fixtures into <reports>/fixtures and reuses files already there
  mkdir -p "$rep/fixtures"
  [ -n "${WORKER_ARCH_FIXTURES:-}" ] && cp "$WORKER_ARCH_FIXTURES"/*-tiny-s0.gguf "$rep/fixtures/"
  python3 -m pytest -c gates/pytest.ini --rootdir . features --gate all --worker-device cuda \
    -m "cuda or gate3" --reports-dir "$rep" -p no:cacheprovider -q 2>&1 | tee "$OUT/gates.log"
  rc_gates=${PIPESTATUS[0]}
  cp "$rep"/gate3.md "$rep"/gate4.md "$OUT/" 2>/dev/null
  tar -C "$rep" --exclude=./fixtures -czf "$OUT/gates_reports.tgz" . 2>/dev/null
fi

# Summary, last: pytest tests/cuda, gpu_check's oom/arch/FAIL rows, the gate scenarios.
echo
echo "================================ summary ================================"
echo "tests/cuda: $(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -1)"
python3 - "$OUT" "${rep:-}" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, rep = Path(sys.argv[1]), sys.argv[2]
try:
    res = json.loads((out / "gpu_check.json").read_text())
    rows = res["table"]
    print(f"gpu_check: {len(rows)} rows, {sum(r[4] == 'FAIL' for r in rows)} FAIL, {res['wall_s']:.0f} s, "
          f"{res['env']['device']}")
    for s, item, value, bound, verdict in rows:
        if s.startswith(("oom", "arch")) or verdict == "FAIL":
            print(f"  {s:9s} {item[:50]:50s} {value[:30]:>30s} {bound:>7s} {verdict}")
except Exception as exc:
    print("gpu_check: no results", exc)
if rep:
    try:
        root = ET.parse(Path(rep) / "gates.xml").getroot()
        print("gates (--worker-device cuda):")
        for tc in root.iter("testcase"):
            name = tc.get("name", "").replace("test_", "", 1)
            verdict, why = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = tc.find(tag)
                if el is not None:
                    verdict = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                    why = (el.get("message") or "").replace("\n", " ")
            print(f"  {verdict:8s} {name[:70]:70s} {why[:90]}")
    except Exception as exc:
        print("gates: no junit report", exc)
PY
if [ "$FULLARCH" -eq 1 ]; then
  sed -n '/=== full-shape/,$p' "$OUT/gpu_full_arch.log"
fi
if [ "$SPEED" -eq 1 ]; then
  sed -n '/=== speed/,$p' "$OUT/gpu_speed.log"
fi
echo "pytest rc=$rc_pytest gpu_check rc=$rc_check gates rc=$rc_gates full-arch rc=$rc_full speed rc=$rc_speed"
[ "$rc_pytest" -eq 0 ] && [ "$rc_check" -eq 0 ] && [ "$rc_gates" -eq 0 ] && [ "$rc_full" -eq 0 ] && [ "$rc_speed" -eq 0 ]
