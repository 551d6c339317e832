#!/usr/bin/env bash
# One device call on a 2-GPU machine (nvidia-h200-x2): the single-GPU checks and benchmarks of run_gpu.sh on GPU 0,
# the model GPU tests and an MQAR sweep on GPU 1, side by side; everything packed into one tarball under $OUT
# (the device returns at most 8 files). Carry .whl (see run_gpu.sh's header for the wheels).
#
#   bash benchmarks/gpu_batch.sh                                  # defaults below
#   GPU0_PARTS="diag kernels" GPU1_PARTS="models" MQAR="" bash benchmarks/gpu_batch.sh
#
# MQAR holds one or more `scripts/mqar_sweep.py launch` argument lists separated by ';' (each runs as its own sweep,
# concurrently, on GPU 1, with --runs under the result folder). SCALING, when set, holds `benchmarks/bench_scaling.py`
# arguments: that benchmark runs after the lanes, on both GPUs, capped at SCALING_S seconds.
# Unpack the result with `tar xzf res.tgz`.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_batch}
RES=${RES:-/tmp/gpu_batch}
mkdir -p "$OUT" "$RES"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
  || { echo "wheels missing: run ../shared/device/wheels.sh here and carry .whl"; exit 1; }
export PYTHONPATH=$PWD:$PWD/.site:${PYTHONPATH:-}
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$RES/gpus.csv" 2>&1

GPU0_PARTS=${GPU0_PARTS:-"diag bench_kernels kernels"}
GPU1_PARTS=${GPU1_PARTS:-"models"}
MQAR=${MQAR:-}
pids=()
if [ -n "$MQAR" ]; then
  IFS=';' read -ra sweeps <<< "$MQAR"
  i=0
  for args in "${sweeps[@]}"; do
    # shellcheck disable=SC2086  # the argument list is meant to split
    CUDA_VISIBLE_DEVICES=1 python3 scripts/mqar_sweep.py launch --runs "$RES/mqar$i" $args > "$RES/mqar$i.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
fi
if [ -n "$GPU1_PARTS" ]; then
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=1 OUT="$RES/gpu1" bash benchmarks/run_gpu.sh $GPU1_PARTS > "$RES/gpu1.txt" 2>&1 &
  pids+=($!)
fi
if [ -n "$GPU0_PARTS" ]; then
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=0 OUT="$RES/gpu0" bash benchmarks/run_gpu.sh $GPU0_PARTS > "$RES/gpu0.txt" 2>&1
fi
for p in "${pids[@]}"; do wait "$p"; done
if [ -n "${SCALING:-}" ]; then
  # shellcheck disable=SC2086
  timeout "${SCALING_S:-240}" python3 benchmarks/bench_scaling.py --out "$RES/scaling" $SCALING > "$RES/scaling.log" 2>&1
  echo "scaling rc=$?"; tail -n 20 "$RES/scaling.log"
fi
rm -rf "$RES"/mqar*/ckpt  # checkpoints exceed what a call returns
tar czf "$OUT/res.tgz" -C "$RES" .
cat "$RES"/gpu*.txt
for f in "$RES"/mqar*.log; do [ -e "$f" ] && { echo "== $f"; tail -n 8 "$f"; }; done
for f in "$RES"/mqar*/runs/*.json; do
  [ -e "$f" ] && python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['name'], r['steps'], r['sequences'], 'acc', r['final_acc'], 'best', r['best_acc'])" "$f"
done
