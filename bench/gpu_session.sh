#!/usr/bin/env bash
# The prepared GPU checks, in parts that each fit one device call (<= 10 minutes):
#
#   bash bench/gpu_session.sh bench PROBE   our trainer, then the bare probe, at each of SHAPES (default
#                                           1M,108M; the same shapes), our trainer compiled per block as the
#                                           gpu profile trains it; then, while LIMIT lasts, compiled whole
#                                           (TRAINER_SCOPES, default blocks,model: the first beside the probe),
#                                           and eager at EAGER (default none). (KERNELS=1: also a torch.profiler
#                                           kernel table of our trainer per shape; GRAPHS=1: also 1M with CUDA
#                                           graphs; SCOPES=1: also bench/compile_time.py, whole model vs blocks)
#   bash bench/gpu_session.sh profile       the gpu profile's model stages (python -m sparsinglaw compute),
#                                           timed (eager if a check of torch.compile fails), then PPL-1%
#                                           of one checkpoint on CPU vs CUDA
#                                           (COMPUTE_ARGS="--set KEY=VALUE ...": extra arguments)
#   bash bench/gpu_session.sh dry           the bench part on the CPU at a toy size (checks the script)
#
# Setup, here, once per session: ../shared does not travel to the device machine, only the repository
# does (and .device, which every call carries; the commit in .device/git_sha names the results' commit,
# since the machine's copy has no .git):
#   mkdir -p .device && cp ../shared/tools/gpu_probe.py .device/ && git rev-parse HEAD > .device/git_sha && echo /.device/ >> .git/info/exclude
#
# The session has 15 device-minutes, the machine's start (1-2 minutes) included; a warm machine goes back
# 30 s after a call ends, and none starts with under 4 minutes left. So the calls run back to back on one
# machine, each made within 30 s of the last reply (read the results afterwards), then give_back:
#   1. run(command="LIMIT=300 bash bench/gpu_session.sh bench .device/gpu_probe.py", timeout_s=315,
#          carry=[".device"])
#        the table first: our trainer (blocks) and the probe at 1M and 108M, each compiling, take about
#        4 minutes; the whole-model rows follow while LIMIT lasts (SCOPES=1 would add ~2 minutes: left out)
#   2. run(command="LIMIT=<L> bash bench/gpu_session.sh profile", timeout_s=<L + 15>, carry=[".device"])
#        L = min(585, budget_left_s - 45), budget_left_s from call 1's reply (about 420 after a 2-minute start)
#   3. only if compute_times.json says "complete": false and budget_left_s >= 90 with the machine still
#      warm: call 2 again with L = budget_left_s - 45. It resumes: finished runs and measurements, and
#      each run's last snapshot, stay in runs/gpu on the machine. (A machine given back in between takes
#      its work with it: a fresh one, started only with >= 4 minutes left, begins the profile anew.)
#
# LIMIT (default 300 for bench and dry, 585 for profile): the seconds this call may run (the run tool's
# timeout_s less 15, or the device time left if less). Every step's timeout is taken from it, so that what
# was finished is always packed and comes back.
#
# What comes back: the device tool brings back at most 8 files from $OUT, so each part writes there its
# key result and one archive of its logs, and nothing else, whatever the options: bench and dry write
# trainer_vs_probe.md (rewritten after every measurement) and logs_<part>.tgz; profile writes
# compute_times.json (rewritten after every stage), results_gpu.tgz (results/gpu plus each run's
# config.yaml, log.csv, DONE, checkpoint metadata and cached measurements: what a cut-off call finished
# comes back to be read, though the tables are built only on the machine, whose corpus the measurements
# name) and logs_profile.tgz. The logs (env_<part>.txt, bench.log or compute.log, preflight.log,
# gpu_load.csv, ppl_devices.*, kernel tables, ...) are written outside $OUT and packed after every step
# and every 30 s while one runs; each archive is made outside $OUT and moved in whole, so a call cut off
# anywhere leaves no partial or extra file. The script ends with a count of the files under $OUT (dry:
# an error above 8).
#
# Runs from the repository root with the machine's own python3 (torch with CUDA; no venv, no
# notebooks: the figures are drawn afterwards anywhere with `make replot PROFILE=gpu`).
set -uo pipefail
part=${1:?usage: bash bench/gpu_session.sh profile | bench PROBE | dry}
case "$part" in
  bench) probe=${2:?usage: bash bench/gpu_session.sh bench PATH/gpu_probe.py} ;;
  profile|dry) ;;
  *) echo "unknown part $part: profile | bench PROBE | dry" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/gpu_session}
PY=${PY:-python3}
mkdir -p "$OUT"
# the logs, until packed into $OUT: beside it (on its file system, so that a move into it is a rename)
WORK=$(mktemp -d "${OUT%/}.work.XXXXXX" 2>/dev/null || mktemp -d)
mkdir -p "$WORK/logs"
LOGS=$WORK/logs
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
# the device machine gets the working tree without .git: the commit comes in .device/git_sha (written by
# `git rev-parse HEAD > .device/git_sha` before the calls), for the results' sidecars (runs.git_state)
if [ -z "${SPARSINGLAW_GIT_SHA:-}" ] && [ -s .device/git_sha ]; then
  SPARSINGLAW_GIT_SHA=$(cat .device/git_sha); export SPARSINGLAW_GIT_SHA
fi
runs=${SPARSINGLAW_RUNS:-runs} results=${SPARSINGLAW_RESULTS:-results}

env_info() {  # the machine, and whether batches can go to the GPU from pinned memory (else unpinned, with a note)
  { date -u; nvidia-smi 2>/dev/null | head -15
    timeout -k 5 120 $PY -c "import sys, torch
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|',
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')
if torch.cuda.is_available():
    from sparsinglaw.device import pinned_memory_works
    print('pinned host memory:', 'works' if pinned_memory_works(torch.device('cuda')) else 'fails (batches go unpinned)')"
    git rev-parse HEAD 2>/dev/null || echo "commit ${SPARSINGLAW_GIT_SHA:-unknown} (no .git here)"; } > "$LOGS/env_$1.txt" 2>&1
  cat "$LOGS/env_$1.txt"
}

limit=${LIMIT:-$([ "$part" = profile ] && echo 585 || echo 300)}
left() { echo $(( limit - SECONDS )); }  # SECONDS: bash's count since this script started
upto() { local s=$(( limit - SECONDS - $1 )); echo $(( s > 1 ? s : 1 )); }  # a timeout leaving $1 s

put() {  # put FILE: move a finished file into $OUT whole
  mv -f "$1" "$OUT/$(basename "$1")"
}

pack() {  # the part's files into $OUT, each made in a folder of its own first (the packer runs beside)
  local tmp rc files=()
  tmp=$(mktemp -d "$WORK/pack.XXXXXX")
  if [ "$part" = profile ]; then
    [ -s "$WORK/compute_times.json" ] && cp "$WORK/compute_times.json" "$tmp/" && put "$tmp/compute_times.json"
    shopt -s nullglob
    [ -d "$results/gpu" ] && files+=("$results/gpu")
    files+=("$runs"/gpu/*/{log.csv,DONE,config.yaml} "$runs"/gpu/*/meta_0*.json "$runs"/gpu/*/sparsity-*.{json,npz}
            "$runs"/gpu/*/pareto-*.csv "$runs"/gpu/*/inference-*.json)
    shopt -u nullglob
    tar czf "$tmp/results_gpu.tgz" "${files[@]}" -T /dev/null 2>/dev/null; rc=$?  # 1: a file changed meanwhile
    [ "$rc" -le 1 ] && put "$tmp/results_gpu.tgz"
  fi
  tar czf "$tmp/logs_$part.tgz" -C "$LOGS" . 2>/dev/null; rc=$?
  [ "$rc" -le 1 ] && put "$tmp/logs_$part.tgz"
  rm -rf "$tmp"
}

# the packer: every 30 s while a step runs, so that even a call killed outright brings back its logs; it
# ends with the script, however that ends
( n=0; while [ ! -e "$WORK/stop" ] && kill -0 $$ 2>/dev/null; do
    sleep 1; n=$(( n + 1 )); [ $(( n % 30 )) -ne 0 ] || pack
  done ) &
packer=$!

case "$part" in
  bench|dry)
    if [ "$part" = bench ]; then
      opts=(--probe "$probe" --probe-seconds 10 --shapes "${SHAPES:-1M,108M}" --scopes "${TRAINER_SCOPES:-blocks,model}")
      [ -n "${EAGER:-}" ] && opts+=(--eager "$EAGER")
      [ "${KERNELS:-0}" = 1 ] && opts+=(--profile-dir "$LOGS")
    else  # the bench's measurements on the CPU at a toy size: both scopes, eager and a kernel table
      opts=(--device cpu --shapes tiny --scopes blocks,model --eager tiny --profile-dir "$LOGS")
    fi
    env_info "$part"
    timeout -k 5 "$(upto 15)" $PY bench/trainer_vs_probe.py "${opts[@]}" --out "$OUT/trainer_vs_probe.md" 2>&1 \
      | tee "$LOGS/bench.log"
    pack
    if [ "${GRAPHS:-0}" = 1 ] && [ "$(left)" -gt 120 ]; then  # optional (about a minute): CUDA graphs at 1M,
      # the whole model in one graph (the fewest launches)
      timeout -k 5 "$(upto 10)" $PY bench/trainer_vs_probe.py --shapes 1M --scopes model --compile-mode reduce-overhead \
        --out "$LOGS/trainer_1M_cuda_graphs.md" 2>&1 | tee -a "$LOGS/bench.log"
      pack
    fi
    if [ "${SCOPES:-0}" = 1 ] && [ "$(left)" -gt 150 ]; then  # optional (about two minutes): the gpu profile's
      # compute.compile: whole model vs blocks at relu-s1 and its shape (compile time and step time, cold caches)
      timeout -k 5 "$(upto 10)" $PY bench/compile_time.py --profile gpu --runs relu-s1 --scopes model,blocks \
        --seq 1024 --batch 128 --steps 30 --device cuda 2>&1 | tee "$LOGS/compile_time.txt"
    fi
    ;;
  profile)
    env_info profile
    # GPU load and memory every 5 s while the profile runs: is the GPU kept busy?
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$LOGS/gpu_load.csv" 2>&1 &
    smi=$!
    trap 'kill $smi 2>/dev/null' EXIT  # however the script ends
    # COMPUTE_ARGS: extra arguments, e.g. "--set compute.compile=false"
    compute_args=${COMPUTE_ARGS:-}
    # compute.jobs runs share the GPU, each compiling with a worker per core by default: capped at cores / jobs
    # (unless TORCHINDUCTOR_COMPILE_THREADS is set), so that parallel compiles leave the other runs'
    # kernel-launching threads their cores
    jobs=$(sed -n 's/^ *jobs: *\([0-9][0-9]*\).*/\1/p' configs/gpu.yaml | head -n 1)
    [[ $compute_args =~ compute\.jobs=([0-9]+) ]] && jobs=${BASH_REMATCH[1]}
    cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the usable cores (nproc alone obeys OMP_NUM_THREADS)
    [ "${jobs:-0}" -ge 1 ] || jobs=$cores  # compute.jobs 0: one per core
    if [ -z "${TORCHINDUCTOR_COMPILE_THREADS:-}" ]; then
      TORCHINDUCTOR_COMPILE_THREADS=$(( cores / jobs > 1 ? cores / jobs : 1 )); export TORCHINDUCTOR_COMPILE_THREADS
      echo "torch.compile workers per run: $TORCHINDUCTOR_COMPILE_THREADS ($cores cores / compute.jobs $jobs)" \
        > "$LOGS/preflight.log"
    else
      echo "torch.compile workers per run: $TORCHINDUCTOR_COMPILE_THREADS (TORCHINDUCTOR_COMPILE_THREADS as set)" \
        > "$LOGS/preflight.log"
    fi
    # torch.compile on this machine at all (Triton, a C compiler)? If not, every run would fail at its first
    # step: train eager instead, and say so (preflight.log). At most 120 s, and never into the 90 s kept
    # below; a resuming call checks again (a fresh process compiles anew anyway)
    if [[ "${compute_args,,}" != *compute.compile=false* ]]; then
      if ! timeout -k 5 "$(( $(upto 90) < 120 ? $(upto 90) : 120 ))" $PY -c "import torch; f = torch.compile(lambda x: (2 * x).sin().sum())
print('torch.compile on', torch.cuda.get_device_name(0), 'works:', f(torch.ones(8, device='cuda')).item())" \
          >> "$LOGS/preflight.log" 2>&1; then
        echo "torch.compile failed here (the lines above): training eager" >> "$LOGS/preflight.log"
        compute_args="$compute_args --set compute.compile=false"
      fi
    fi
    cat "$LOGS/preflight.log"
    pack
    # 90 s are kept for the CPU-vs-CUDA check (60 s) and the packing
    # shellcheck disable=SC2086
    timeout -k 5 "$(upto 90)" $PY -m sparsinglaw compute --profile gpu --no-progress \
      --times "$WORK/compute_times.json" $compute_args 2>&1 | tee "$LOGS/compute.log"
    pack
    # the last checkpoint of relu-s1 (the smallest ReLU run), else of any run that has one (cut off)
    ck=$(ls "$runs"/gpu/relu-s1-*/ckpt_0*.pt 2>/dev/null | tail -n 1)
    [ -n "$ck" ] || ck=$(ls "$runs"/gpu/*/ckpt_0*.pt 2>/dev/null | tail -n 1)
    if [ -n "$ck" ] && [ "$(left)" -gt 75 ]; then
      timeout -k 5 60 $PY bench/ppl_p_speed.py --checkpoint "$ck" --eval-tokens 16384 --threads 8 --compare-devices \
        --json "$LOGS/ppl_devices.json" 2>&1 | tee "$LOGS/ppl_devices.log"
    fi
    kill $smi 2>/dev/null
    ;;
esac
touch "$WORK/stop"
wait $packer
pack
rm -rf "$WORK"
ls -la "$OUT"
n=$(find "$OUT" -type f | wc -l)
echo "$n files under $OUT (the device tool brings back at most 8)"
if [ "$n" -gt 8 ]; then
  echo "error: more than 8 files under $OUT: some would not come back" >&2
  [ "$part" != dry ] || exit 1
fi
