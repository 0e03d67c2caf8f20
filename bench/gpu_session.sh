#!/usr/bin/env bash
# The prepared GPU checks, in two parts that each fit one device call (<= 10 minutes):
#
#   bash bench/gpu_session.sh bench PROBE   our trainer vs the bare probe at 1M and 108M (same shapes),
#                                           plus a torch.profiler kernel table of our trainer per shape
#                                           (GRAPHS=1: also the 1M shape with CUDA graphs)
#   bash bench/gpu_session.sh profile       the gpu profile's model stages (python -m sparsinglaw compute),
#                                           timed, then PPL-1% of one checkpoint on CPU vs CUDA
#                                           (COMPUTE_ARGS="--set KEY=VALUE ...": extra arguments)
#   bash bench/gpu_session.sh dry           both on the CPU at toy sizes (checks the script itself)
#
# Runs from the repository root with the machine's own python3 (torch with CUDA; no venv, no
# notebooks: the figures are drawn afterwards anywhere with `make replot PROFILE=gpu`). Everything
# that comes back is written under $OUT (default /tmp/gpu_session): logs, the benchmark table,
# compute_times.json, gpu_load.csv and results_gpu.tgz (results/gpu plus every run's log.csv and DONE).
# The runs are cached: if `profile` stops at its time limit, the same call again on the still-warm
# machine resumes where it stopped (finished runs and measurements are kept in runs/gpu).
set -uo pipefail
part=${1:?usage: bash bench/gpu_session.sh bench PROBE | profile | dry}
OUT=${OUT:-/tmp/gpu_session}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true

env_info() {
  { date -u; nvidia-smi 2>/dev/null | head -15
    $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    git rev-parse HEAD 2>/dev/null; } > "$OUT/env_$1.txt" 2>&1
  cat "$OUT/env_$1.txt"
}

case "$part" in
  bench)
    probe=${2:?usage: bash bench/gpu_session.sh bench PATH/gpu_probe.py}
    env_info bench
    timeout 540 $PY bench/trainer_vs_probe.py --probe "$probe" --shapes 1M,108M \
      --out "$OUT/trainer_vs_probe.md" --profile-dir "$OUT" 2>&1 | tee "$OUT/bench.log"
    if [ "${GRAPHS:-0}" = 1 ]; then  # optional (about a minute): the 1M shape with CUDA graphs
      timeout 240 $PY bench/trainer_vs_probe.py --shapes 1M --compile-mode reduce-overhead \
        --out "$OUT/trainer_1M_cuda_graphs.md" 2>&1 | tee -a "$OUT/bench.log"
    fi
    ;;
  profile)
    env_info profile
    # GPU load and memory every 5 s while the profile runs: is the GPU kept busy?
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu_load.csv" 2>&1 &
    smi=$!
    # COMPUTE_ARGS: extra arguments, e.g. "--set compute.compile=false" if compilation failed in the bench
    # part, or "--set train.tokens=50000000" if the trainer was slower than the profile was sized for
    # shellcheck disable=SC2086
    timeout 500 $PY -m sparsinglaw compute --profile gpu --no-progress --times "$OUT/compute_times.json" \
      ${COMPUTE_ARGS:-} 2>&1 | tee "$OUT/compute.log"
    kill $smi 2>/dev/null
    runs=${SPARSINGLAW_RUNS:-runs} results=${SPARSINGLAW_RESULTS:-results}
    ck=$(ls "$runs"/gpu/relu-s1-*/ckpt_0*.pt 2>/dev/null | tail -n 1)
    if [ -n "$ck" ]; then
      timeout 60 $PY bench/ppl_p_speed.py --checkpoint "$ck" --eval-tokens 65536 --compare-devices \
        --json "$OUT/ppl_devices.json" 2>&1 | tee "$OUT/ppl_devices.log"
    fi
    tar czf "$OUT/results_gpu.tgz" "$results"/gpu "$runs"/gpu/*/log.csv "$runs"/gpu/*/DONE \
      "$runs"/gpu/*/config.yaml 2>/dev/null || true
    ;;
  dry)
    env_info dry
    $PY bench/trainer_vs_probe.py --device cpu --shapes tiny --no-compile --out "$OUT/trainer_vs_probe.md" \
      --profile-dir "$OUT" 2>&1 | tee "$OUT/bench.log"
    ;;
  *)
    echo "unknown part $part: bench PROBE | profile | dry" >&2; exit 2 ;;
esac
ls -la "$OUT"
