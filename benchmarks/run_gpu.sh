#!/usr/bin/env bash
# Every single-GPU check and benchmark, one after another, each time-boxed, with its log and results in DEST.
#
#   bash benchmarks/run_gpu.sh DEST [part ...]
#
# Parts (default: kernels models bench_kernels bench_model, in this order):
#   kernels        pytest -m gpu tests/kernels          (the kernels against float64 and against fla, when installed)
#   models         pytest -m gpu tests/deltanet         (the models on the Triton path)
#   bench_kernels  benchmarks/bench_delta_rule.py       (chunk kernel vs fla vs SDPA, table + JSON + PNG; a rerun
#                  into the same DEST resumes the table: --resume; BENCH_ARGS)
#   bench_gla      benchmarks/bench_gla.py --key-ratio 0.5  (our GLA kernel vs fla's; resumes; GLA_ARGS)
#   bench_gdr      benchmarks/bench_gated_delta_rule.py (our Gated DeltaNet kernel vs fla's; resumes; GDR_ARGS)
#   bench_ret      benchmarks/bench_retention.py --value-ratio 2 (our retention kernel vs fla's; resumes; RET_ARGS)
#   fused_loss     benchmarks/bench_fused_loss.py       (200 steps: fused vs plain glue vs float32; LOSS_ARGS)
#   bench_model    benchmarks/bench_model.py            (training step of each family, table + JSON + PNG; a rerun
#                  into the same DEST resumes the table: --resume; MODEL_ARGS)
#   tune           benchmarks/bench_chunk_tuning.py     (launch-setting sweep; arguments in TUNE_ARGS)
#   bench_generate benchmarks/bench_generate.py         (decode tok/s of each family against prompt length; GEN_ARGS)
# Needs the project's dependencies and pytest; fla (flash-linear-attention) is optional, for the comparisons.
# Env overrides: <PART>_S (seconds per part, e.g. KERNELS_S=300), KERNELS_ARGS (pytest selection), BENCH_ARGS
# (extra bench_delta_rule.py arguments), MODEL_ARGS, TUNE_ARGS, GEN_ARGS, GLA_ARGS, GDR_ARGS, RET_ARGS, LOSS_ARGS, TAIL_N (log
# lines shown at the end). A part that fails or runs
# out of time is logged and the next one still runs. With cold Triton caches the default parts take about 9 minutes.
set -u
if [ $# -lt 1 ]; then echo "usage: bash benchmarks/run_gpu.sh DEST [part ...]"; exit 2; fi
DEST=$(mkdir -p "$1" && cd "$1" && pwd); shift
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

declare -A BUDGET=([kernels]=${KERNELS_S:-360} [models]=${MODELS_S:-120} [bench_kernels]=${BENCH_KERNELS_S:-300} [bench_model]=${BENCH_MODEL_S:-240} [tune]=${TUNE_S:-300} [bench_generate]=${BENCH_GENERATE_S:-900} [bench_gla]=${BENCH_GLA_S:-240} [bench_gdr]=${BENCH_GDR_S:-240} [bench_ret]=${BENCH_RET_S:-240} [fused_loss]=${FUSED_LOSS_S:-600})
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(kernels models bench_kernels bench_model)

run_part() {
  local name=$1; shift
  local start=$SECONDS
  timeout "${BUDGET[$name]}" "$@" > "$DEST/$name.log" 2>&1
  local rc=$?
  printf '%-14s rc=%-4s %4ss  (%s)\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$DEST/summary.txt"
}

python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee "$DEST/summary.txt"
for part in "${parts[@]}"; do
  case $part in
    kernels)       run_part kernels python3 -m pytest -v -m gpu ${KERNELS_ARGS:-tests/kernels} -p no:cacheprovider ;;
    models)        run_part models python3 -m pytest -v -m gpu tests/deltanet -p no:cacheprovider ;;
    bench_kernels) run_part bench_kernels python3 benchmarks/bench_delta_rule.py --out "$DEST" --resume \
                     --max-seconds $(( ${BUDGET[bench_kernels]} - 60 )) ${BENCH_ARGS:-} ;;
    bench_gla)     run_part bench_gla python3 benchmarks/bench_gla.py --out "$DEST" --key-ratio 0.5 --resume \
                     --max-seconds $(( ${BUDGET[bench_gla]} - 60 )) ${GLA_ARGS:-} ;;
    bench_gdr)     run_part bench_gdr python3 benchmarks/bench_gated_delta_rule.py --out "$DEST" --resume \
                     --max-seconds $(( ${BUDGET[bench_gdr]} - 60 )) ${GDR_ARGS:-} ;;
    bench_ret)     run_part bench_ret python3 benchmarks/bench_retention.py --out "$DEST" --value-ratio 2 --resume \
                     --max-seconds $(( ${BUDGET[bench_ret]} - 60 )) ${RET_ARGS:-} ;;
    fused_loss)    run_part fused_loss python3 benchmarks/bench_fused_loss.py --out "$DEST/fused_loss" ${LOSS_ARGS:-} ;;
    bench_model)   run_part bench_model python3 benchmarks/bench_model.py --out "$DEST" --resume \
                     --max-seconds $(( ${BUDGET[bench_model]} - 30 )) ${MODEL_ARGS:-} ;;
    tune)          run_part tune python3 benchmarks/bench_chunk_tuning.py --out "$DEST" ${TUNE_ARGS:-} ;;
    bench_generate) run_part bench_generate python3 benchmarks/bench_generate.py --out "$DEST" --max-seconds 840 ${GEN_ARGS:-} ;;
    *) echo "unknown part: $part (kernels models bench_kernels bench_model tune bench_generate bench_gla bench_gdr bench_ret fused_loss)"; exit 2 ;;
  esac
done
for f in "$DEST"/*.log; do echo "== $f"; tail -n "${TAIL_N:-6}" "$f"; done
cat "$DEST/summary.txt"
