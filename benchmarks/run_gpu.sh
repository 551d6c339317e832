#!/usr/bin/env bash
# All single-GPU checks and benchmarks in one device call (the lease is short: one warm machine, one command).
# Run from the repository root on the GPU machine, with wheels carried in .whl/. Fetch them here first (fla needs einops;
# the image's python has no pytest):
#   bash ../shared/device/wheels.sh einops==0.8.2 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
# then call the device with carry [".whl"] and the command `bash benchmarks/run_gpu.sh`.
#
#   bash benchmarks/run_gpu.sh [part ...]        # parts: diag kernels models bench_kernels bench_model (default: all, in this order)
#                                                # and tune (bench_chunk_tuning.py with TUNE_ARGS; not in the default run)
#
# Env overrides: <PART>_S (seconds per part, e.g. KERNELS_S=300), KERNELS_ARGS (pytest selection), BENCH_ARGS
# (extra bench_delta_rule.py arguments), TUNE_ARGS (bench_chunk_tuning.py arguments), TAIL_N (log lines shown at the end).
# Everything is written under $OUT (or benchmarks/results/gpu_run when OUT is unset): one log per part plus the
# benchmark tables; a part that fails or times out is logged and the next one still runs. Budget per part (seconds) in
# the table below; the whole default run fits a 10-minute command with the Triton compile caches cold.
# 2-GPU scaling (trainer=ddp/fsdp) and the MQAR sweep need their own calls: benchmarks/bench_scaling.py and
# scripts/mqar_sweep.py (see benchmarks/results/scaling.md and mqar.md for the commands).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ! python3 -c "import hydra, omegaconf, fla" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
    || { echo "wheels missing: run ../shared/device/wheels.sh here and carry .whl"; exit 1; }
fi
export PYTHONPATH=$PWD:$PWD/.site:${PYTHONPATH:-}

declare -A BUDGET=([diag]=${DIAG_S:-45} [kernels]=${KERNELS_S:-200} [models]=${MODELS_S:-120} [bench_kernels]=${BENCH_KERNELS_S:-150} [bench_model]=${BENCH_MODEL_S:-60} [tune]=${TUNE_S:-300})
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(diag kernels models bench_kernels bench_model)

run_part() {
  local name=$1; shift
  local start=$SECONDS
  timeout "${BUDGET[$name]}" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-14s rc=%-4s %4ss  (%s)\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$OUT/summary.txt"
}

python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/summary.txt"
for part in "${parts[@]}"; do
  case $part in
    diag)          run_part diag python3 benchmarks/bench_chunk_tuning.py --diag ;;
    kernels)       run_part kernels python3 -m pytest -v -m gpu ${KERNELS_ARGS:-tests/kernels} -p no:cacheprovider ;;
    models)        run_part models python3 -m pytest -v -m gpu tests/deltanet -p no:cacheprovider ;;
    bench_kernels) run_part bench_kernels python3 benchmarks/bench_delta_rule.py --out "$OUT" ${BENCH_ARGS:-} ;;
    tune)          run_part tune python3 benchmarks/bench_chunk_tuning.py --out "$OUT" ${TUNE_ARGS:-} ;;
    bench_model)   run_part bench_model python3 benchmarks/bench_model.py --families deltanet transformer --out "$OUT/bench_model.json" ;;
    *) echo "unknown part: $part (diag kernels models bench_kernels bench_model tune)"; exit 2 ;;
  esac
done
for f in "$OUT"/*.log; do echo "== $f"; tail -n ${TAIL_N:-6} "$f"; done
cat "$OUT/summary.txt"
