#!/usr/bin/env bash
# GPU figures for the engine (loadtest/gpu_bench.py), in one go, from the repository root:
#
#     OUT=/some/dir bash loadtest/gpu_figures.sh
#
# Needs python3 with torch (CUDA), transformers and tokenizers; not the project's venv (msgspec
# gets a stand-in when missing: see gpu_bench.py). Each part runs in its own process under a
# time limit, so one part failing or hanging does not stop the others. Everything printed goes
# to $OUT/gpu_figures.txt too. `DEVICE=cpu SMALL=1` checks the script on a CPU with a toy model.
set -u
OUT=${OUT:-/tmp/gpu_figures}
mkdir -p "$OUT"
LOG="$OUT/gpu_figures.txt"
: >"$LOG"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EXTRA=()
if [ "${SMALL:-0}" = 1 ]; then
    EXTRA=(--small --requests 32 --max-num-seqs 16 --rounds 2)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

say() { echo "$@" | tee -a "$LOG"; }

say "== gpu_figures $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
fi
"$PY" - <<'PYEOF' 2>&1 | tee -a "$LOG"
import platform, sys
print("python", sys.version.split()[0], platform.machine())
try:
    import torch, transformers
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("gpu", torch.cuda.get_device_name())
    print("transformers", transformers.__version__)
except Exception as exc:  # printed, and the parts below report their own failures
    print("import failed:", repr(exc))
PYEOF

part() {  # part NAME LIMIT_S
    say "== part $1 (limit $2 s)"
    local start=$SECONDS
    timeout --kill-after=10 "$2" "$PY" -m loadtest.gpu_bench --part "$1" --device "$DEVICE" \
        "${EXTRA[@]}" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "== part $1: exit $rc after $((SECONDS - start)) s"
}

part shared 170
part unique 170
say "== done in $SECONDS s"
