#!/usr/bin/env bash
# CUDA backend check, on a machine with a CUDA GPU and CuPy:
#   bench/gpu.sh OUTDIR
# 1. installs the wheels carried in .whl (runtime deps the GPU image lacks), if any;
# 2. builds the full-shape GGUF fixtures from a seed (tests/cuda/make_fixture.py), in the
#    background while 3. runs `pytest tests/cuda -m cuda` (tiny fixtures of its own);
# 4. runs bench/gpu_check.py: kernels vs NumPy, whole models, determinism, residency, OOM
#    series, first speed figures; its table is printed last, JSON in OUTDIR/gpu_check.json.
# Env: WORKER_FIXTURES (fixture dir), GPU_CHECK_ARGS (extra gpu_check.py arguments).
set -uo pipefail
OUT=${1:?usage: bench/gpu.sh OUTDIR}
cd "$(dirname "$0")/.." || exit 1
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c 'import cupy, numpy, sys; print("python", sys.version.split()[0], "cupy", cupy.__version__, "numpy", numpy.__version__, "cuda runtime", cupy.cuda.runtime.runtimeGetVersion())'

python3 tests/cuda/make_fixture.py "$WORKER_FIXTURES" >"$OUT/fixtures.log" 2>&1 &
fixtures_pid=$!
python3 -m pytest tests/cuda -m cuda -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"
rc_pytest=${PIPESTATUS[0]}
wait "$fixtures_pid"
rc_fix=$?
cat "$OUT/fixtures.log"
[ "$rc_fix" -eq 0 ] || { echo "fixture build failed"; exit 1; }
# shellcheck disable=SC2086
python3 bench/gpu_check.py --fixtures "$WORKER_FIXTURES" --out "$OUT" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUT/gpu_check.log"
rc_check=${PIPESTATUS[0]}
echo "pytest rc=$rc_pytest gpu_check rc=$rc_check"
[ "$rc_pytest" -eq 0 ] && [ "$rc_check" -eq 0 ]
