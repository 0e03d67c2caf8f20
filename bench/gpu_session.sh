#!/usr/bin/env bash
# The prepared GPU checks, in two parts that each fit one device call (<= 10 minutes):
#
#   bash bench/gpu_session.sh profile       the gpu profile's model stages (python -m sparsinglaw compute),
#                                           timed (eager if a check of torch.compile fails), then PPL-1%
#                                           of one checkpoint on CPU vs CUDA
#                                           (COMPUTE_ARGS="--set KEY=VALUE ...": extra arguments)
#   bash bench/gpu_session.sh bench PROBE   our trainer, then the bare probe, at each of SHAPES (default
#                                           1M,108M; the same shapes), and our trainer eager at EAGER
#                                           (default none). (KERNELS=1: also a torch.profiler kernel
#                                           table of our trainer per shape; GRAPHS=1: also 1M with CUDA graphs;
#                                           SCOPES=1: also bench/compile_time.py, whole model vs blocks)
#   bash bench/gpu_session.sh dry           the bench part on the CPU at a toy size (checks the script)
#
# LIMIT (default 590): the seconds this device call may run (the run tool's timeout_s, or the device
# time left if less). Every step's timeout is taken from it, so that what was finished is always packed
# and comes back; the benchmark table is rewritten after every measurement and compute_times.json after
# every stage. With 15 device-minutes a session (a minute or two of them to start the machine), two
# calls on one warm machine, the second within 30 s of the first (before them, here:
# `git rev-parse HEAD > .device/git_sha`; every call carries .device, so results name their commit):
#   LIMIT=585 bash bench/gpu_session.sh profile                     (timeout_s 600: the profile first)
#   SCOPES=1 SHAPES=1M,108M LIMIT=<left> bash bench/gpu_session.sh bench .device/gpu_probe.py   if it finished;
#   LIMIT=<left> bash bench/gpu_session.sh profile                  if not: finished runs and measurements
#                                                                   are kept in runs/gpu and it resumes
#
# Runs from the repository root with the machine's own python3 (torch with CUDA; no venv, no
# notebooks: the figures are drawn afterwards anywhere with `make replot PROFILE=gpu`). Everything
# that comes back is written under $OUT (default /tmp/gpu_session): logs, the benchmark table,
# compute_times.json, gpu_load.csv and results_gpu.tgz (results/gpu plus each run's config.yaml, log.csv,
# DONE, checkpoint metadata and cached measurements: what a cut-off call finished comes back to be read,
# though the tables are built only on the machine, whose corpus the measurements name).
set -uo pipefail
part=${1:?usage: bash bench/gpu_session.sh profile | bench PROBE | dry}
OUT=${OUT:-/tmp/gpu_session}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
# the device machine gets the working tree without .git: the commit comes in .device/git_sha (written by
# `git rev-parse HEAD > .device/git_sha` before the calls), for the results' sidecars (runs.git_state)
if [ -z "${SPARSINGLAW_GIT_SHA:-}" ] && [ -s .device/git_sha ]; then
  SPARSINGLAW_GIT_SHA=$(cat .device/git_sha); export SPARSINGLAW_GIT_SHA
fi

env_info() {
  { date -u; nvidia-smi 2>/dev/null | head -15
    $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    git rev-parse HEAD 2>/dev/null || echo "commit ${SPARSINGLAW_GIT_SHA:-unknown} (no .git here)"; } > "$OUT/env_$1.txt" 2>&1
  cat "$OUT/env_$1.txt"
}

limit=${LIMIT:-590}
left() { echo $(( limit - SECONDS )); }  # SECONDS: bash's count since this script started
upto() { local s=$(( limit - SECONDS - $1 )); echo $(( s > 1 ? s : 1 )); }  # a timeout leaving $1 s

case "$part" in
  bench)
    probe=${2:?usage: bash bench/gpu_session.sh bench PATH/gpu_probe.py}
    env_info bench
    opts=(--shapes "${SHAPES:-1M,108M}")
    [ -n "${EAGER:-}" ] && opts+=(--eager "$EAGER")
    [ "${KERNELS:-0}" = 1 ] && opts+=(--profile-dir "$OUT")
    timeout -k 5 "$(upto 15)" $PY bench/trainer_vs_probe.py --probe "$probe" --probe-seconds 10 "${opts[@]}" \
      --out "$OUT/trainer_vs_probe.md" 2>&1 | tee "$OUT/bench.log"
    if [ "${GRAPHS:-0}" = 1 ] && [ "$(left)" -gt 120 ]; then  # optional (about a minute): CUDA graphs at 1M
      timeout -k 5 "$(upto 10)" $PY bench/trainer_vs_probe.py --shapes 1M --compile-mode reduce-overhead \
        --out "$OUT/trainer_1M_cuda_graphs.md" 2>&1 | tee -a "$OUT/bench.log"
    fi
    if [ "${SCOPES:-0}" = 1 ] && [ "$(left)" -gt 150 ]; then  # optional (about two minutes): the gpu profile's
      # compute.compile: whole model vs blocks at relu-s1 and its shape (compile time and step time, cold caches)
      timeout -k 5 "$(upto 10)" $PY bench/compile_time.py --profile gpu --runs relu-s1 --scopes model,blocks \
        --seq 1024 --batch 128 --steps 30 --device cuda 2>&1 | tee "$OUT/compile_time.txt"
    fi
    ;;
  profile)
    env_info profile
    # GPU load and memory every 5 s while the profile runs: is the GPU kept busy?
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu_load.csv" 2>&1 &
    smi=$!
    # COMPUTE_ARGS: extra arguments, e.g. "--set compute.compile=false"
    compute_args=${COMPUTE_ARGS:-}
    # torch.compile on this machine at all (Triton, a C compiler)? If not, every run would fail at its first
    # step: train eager instead, and say so (compile_check.log comes back). At most 120 s, and never into
    # the 90 s kept below; a resuming call checks again (a fresh process compiles anew anyway)
    if [[ "${compute_args,,}" != *compute.compile=false* ]]; then
      if ! timeout -k 5 "$(( $(upto 90) < 120 ? $(upto 90) : 120 ))" $PY -c "import torch; f = torch.compile(lambda x: (2 * x).sin().sum())
print('torch.compile on', torch.cuda.get_device_name(0), 'works:', f(torch.ones(8, device='cuda')).item())" \
          > "$OUT/compile_check.log" 2>&1; then
        echo "torch.compile failed here (the lines above): training eager" >> "$OUT/compile_check.log"
        compute_args="$compute_args --set compute.compile=false"
      fi
      cat "$OUT/compile_check.log"
    fi
    # 90 s are kept for the CPU-vs-CUDA check (60 s) and the packing
    # shellcheck disable=SC2086
    timeout -k 5 "$(upto 90)" $PY -m sparsinglaw compute --profile gpu --no-progress \
      --times "$OUT/compute_times.json" $compute_args 2>&1 | tee "$OUT/compute.log"
    kill $smi 2>/dev/null
    runs=${SPARSINGLAW_RUNS:-runs} results=${SPARSINGLAW_RESULTS:-results}
    # the last checkpoint of relu-s1 (the smallest ReLU run), else of any run that has one (cut off)
    ck=$(ls "$runs"/gpu/relu-s1-*/ckpt_0*.pt 2>/dev/null | tail -n 1)
    [ -n "$ck" ] || ck=$(ls "$runs"/gpu/*/ckpt_0*.pt 2>/dev/null | tail -n 1)
    if [ -n "$ck" ] && [ "$(left)" -gt 75 ]; then
      timeout -k 5 60 $PY bench/ppl_p_speed.py --checkpoint "$ck" --eval-tokens 16384 --threads 8 --compare-devices \
        --json "$OUT/ppl_devices.json" 2>&1 | tee "$OUT/ppl_devices.log"
    fi
    tar czf "$OUT/results_gpu.tgz" "$results"/gpu "$runs"/gpu/*/log.csv "$runs"/gpu/*/DONE \
      "$runs"/gpu/*/config.yaml "$runs"/gpu/*/meta_0*.json "$runs"/gpu/*/sparsity-*.json "$runs"/gpu/*/sparsity-*.npz \
      "$runs"/gpu/*/pareto-*.csv "$runs"/gpu/*/inference-*.json 2>/dev/null || true
    ;;
  dry)
    env_info dry
    timeout -k 5 "$(upto 10)" $PY bench/trainer_vs_probe.py --device cpu --shapes tiny --eager tiny \
      --out "$OUT/trainer_vs_probe.md" --profile-dir "$OUT" 2>&1 | tee "$OUT/bench.log"
    ;;
  *)
    echo "unknown part $part: profile | bench PROBE | dry" >&2; exit 2 ;;
esac
ls -la "$OUT"
