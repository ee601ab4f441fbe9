#!/usr/bin/env bash
# CUDA backend check, on a machine with a CUDA GPU and CuPy:
#   bench/gpu.sh [--gates] OUTDIR
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
# A short summary table (OOM series, architectures, gates) is printed last.
# Env: WORKER_FIXTURES (fixture dir), GPU_CHECK_ARGS (extra gpu_check.py arguments).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if [ "${1:-}" = "--prebuild-fixtures" ]; then
  # Here, where the SmolLM2 registry model is cached: the tiny phi3 / gpt2 / gpt-oss fixtures
  # into .gpu-fixtures (git-ignored), to carry to a GPU machine that cannot fetch it.
  grep -qxF '/.gpu-fixtures/' .git/info/exclude 2>/dev/null || echo '/.gpu-fixtures/' >> .git/info/exclude
  exec python3 -c 'from fixtures.build import build_fixture
for a in ("phi3", "gpt2", "gpt-oss"): print(build_fixture(a, ".gpu-fixtures", seed=0))'
fi
GATES=0
if [ "${1:-}" = "--gates" ]; then GATES=1; shift; fi
OUT=${1:?usage: bench/gpu.sh [--gates] OUTDIR | bench/gpu.sh --prebuild-fixtures}
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
if [ -n "${WORKER_ARCH_FIXTURES:-}" ]; then
  export WORKER_ARCH_FIXTURES
  cp "$WORKER_ARCH_FIXTURES"/*-tiny-s0.gguf "$WORKER_FIXTURES/"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c 'import cupy, numpy, sys; print("python", sys.version.split()[0], "cupy", cupy.__version__, "numpy", numpy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion())'

# GPU_FULL_FIXTURES=0 skips the full-shape build (for GPU_CHECK_ARGS="--sections arch");
# PYTEST_CUDA_ARGS adds pytest arguments (e.g. -k arch) to the tests/cuda run.
if [ "${GPU_FULL_FIXTURES:-1}" = 0 ]; then
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
# shellcheck disable=SC2086
python3 bench/gpu_check.py --fixtures "$WORKER_FIXTURES" --out "$OUT" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUT/gpu_check.log"
rc_check=${PIPESTATUS[0]}
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
echo "pytest rc=$rc_pytest gpu_check rc=$rc_check gates rc=$rc_gates"
[ "$rc_pytest" -eq 0 ] && [ "$rc_check" -eq 0 ] && [ "$rc_gates" -eq 0 ]
