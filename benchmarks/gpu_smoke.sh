#!/usr/bin/env bash
# GPU smoke check (issue 17): run on a machine with one or more CUDA GPUs, from the repository
# root, after `pip install -e '.[gpu]'` (CUDA torch + bitsandbytes). A few minutes in all.
#
#   bash benchmarks/gpu_smoke.sh           # every check this machine can run
#   bash benchmarks/gpu_smoke.sh --check   # environment only: no training (exits 0 without a GPU)
#
# Checks, each printing PASS / FAIL / SKIP with the measured peak GPU memory next to what
# `warmline train --plan` predicted for the same recipe and overrides:
#   1. environment: nvidia-smi, torch.cuda, bitsandbytes
#   2. `--plan` for the shipped GPU recipes (they read the model config from the hub: SKIP offline)
#   3. bf16 training of the offline recipe, cut small with --set, plus one sample reply (chat),
#      and `--plan --measure` on it (2 real steps: measured CUDA peak and s/step vs the plan)
#   4. one LoRA stage and (bitsandbytes) one QLoRA stage on the packaged model: no hub needed
#   5. 2-process DDP (`accelerate launch --multi_gpu --num_processes 2`) when 2+ GPUs are present
# and ends with one line: `RESULT gpu_smoke: N pass, N fail, N skip`.
# Peak memory: torch.cuda.max_memory_allocated per process (written at exit by a sitecustomize
# on PYTHONPATH, so `accelerate launch` workers report too), and the most nvidia-smi showed in use
# per GPU (which adds the CUDA context and allocator cache, as the plan's "runtime" part does).
set -u -o pipefail

MODE=full
case "${1:-}" in
  --check) MODE=check ;;
  "") ;;
  -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
  *) echo "usage: bash benchmarks/gpu_smoke.sh [--check]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
BIN="${WARMLINE_BIN:-$ROOT/.venv/bin}"
PY="$BIN/python"
[ -x "$PY" ] || PY="$(command -v python3)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/warmline-gpu-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PASS=0 FAIL=0 SKIP=0

result() { # result PASS|FAIL|SKIP name detail
  printf '%-4s %-24s %s\n' "$1" "$2" "$3"
  case "$1" in PASS) PASS=$((PASS + 1)) ;; FAIL) FAIL=$((FAIL + 1)) ;; *) SKIP=$((SKIP + 1)) ;; esac
}

# --- 1. environment ---------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >"$WORK/smi.txt" 2>&1; then
  result PASS nvidia-smi "$(wc -l <"$WORK/smi.txt") GPU(s): $(head -1 "$WORK/smi.txt")"
else
  result SKIP nvidia-smi "not found or no GPU visible"
fi
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>"$WORK/torch.err")" || GPUS=0
TORCH="$("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo "not importable")"
if [ "${GPUS:-0}" -gt 0 ]; then
  result PASS torch.cuda "$GPUS device(s), torch $TORCH, bf16 $("$PY" -c 'import torch; print(torch.cuda.is_bf16_supported())')"
else
  result SKIP torch.cuda "no GPU: torch $TORCH reports no CUDA device"
fi
if BNB="$("$PY" -c 'import bitsandbytes; print(bitsandbytes.__version__)' 2>/dev/null)"; then
  HAVE_BNB=1
  result PASS bitsandbytes "version $BNB"
else
  HAVE_BNB=0
  result SKIP bitsandbytes "not installed (pip install -e '.[gpu]'): QLoRA is skipped"
fi

if [ "${GPUS:-0}" -eq 0 ]; then
  echo "no GPU: torch.cuda sees no CUDA device, so the GPU training checks cannot run here"
  echo "RESULT gpu_smoke: $PASS pass, $FAIL fail, $SKIP skip (no GPU)"
  [ "$MODE" = check ] && exit 0
  exit 2
fi
if [ "$MODE" = check ]; then
  echo "RESULT gpu_smoke: $PASS pass, $FAIL fail, $SKIP skip (environment only)"
  [ "$FAIL" -eq 0 ]; exit $?
fi

# --- helpers ----------------------------------------------------------------------------------
mkdir -p "$WORK/site"
cat >"$WORK/site/sitecustomize.py" <<'EOF'
# Written by benchmarks/gpu_smoke.sh: each process appends its CUDA peak at exit.
import atexit, os, sys

def _report():
    torch = sys.modules.get("torch")
    path = os.environ.get("SMOKE_PEAK_FILE")
    if path and torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        with open(path, "a") as f:
            f.write(f"{os.environ.get('LOCAL_RANK', '0')} {torch.cuda.max_memory_allocated()}\n")

atexit.register(_report)
EOF

planned_gib() { # planned_gib RECIPE [--set ...]: the plan's largest per-process peak, in GiB
  "$BIN/warmline" train "$@" --plan >"$WORK/plan.txt" 2>"$WORK/plan.err" || { echo "plan-failed"; return; }
  grep -o 'peak memory per process ~[0-9.]*' "$WORK/plan.txt" | grep -o '[0-9.]*$' | sort -g | tail -1
}

run_measured() { # run_measured NAME PLANNED_GIB COMMAND...: run, then PASS/FAIL with peaks
  local name="$1" planned="$2"; shift 2
  local peaks="$WORK/$name.peaks" log="$WORK/$name.log" start end
  : >"$peaks"
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 >"$WORK/$name.smi" 2>/dev/null &
  local smi=$!
  start=$(date +%s)
  SMOKE_PEAK_FILE="$peaks" PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" "$@" >"$log" 2>&1
  local rc=$?
  end=$(date +%s)
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  local torch_peak smi_peak
  torch_peak="$(sort -k2 -g "$peaks" | tail -1 | awk '{printf "%.2f", $2 / 1073741824}')"
  smi_peak="$(awk -F', ' '$2 > m {m = $2} END {printf "%.2f", m / 1024}' "$WORK/$name.smi")"
  local detail="$((end - start)) s, peak allocated ${torch_peak:-?} GiB/process (nvidia-smi ${smi_peak:-?} GiB), plan ~${planned} GiB"
  if [ $rc -eq 0 ]; then
    result PASS "$name" "$detail"
  else
    result FAIL "$name" "exit $rc after $detail; last lines:"
    tail -5 "$log" | sed 's/^/       /'
  fi
  return $rc
}

# The offline recipe, small: every stage cut to a few rows (each keeps a validation row and an
# optimizer step), its own output folder, and the packaged model (no hub).
SMALL=(--set "output_dir=$WORK/runs" --set stages.0.max_rows=24 --set stages.1.max_rows=24
  --set stages.2.max_rows=24 --set stages.3.max_rows=48 --set training.logging_steps=1)
ONE_STAGE=(--set "output_dir=$WORK/runs" --set "stages=[{name: counseling,
  source: data/samples/counseling.jsonl, format: counseling, max_rows: 32, validation_fraction: 0.15,
  max_reply_sentences: 4, max_length: 512}]" --set training.trainable_layers=null
  --set training.micro_batch_size=4 --set training.global_batch_size=8 --set training.logging_steps=1)
LORA=(--set training.lora.enabled=true --set training.lora.r=8)

# --- 2. plans of the shipped GPU recipes --------------------------------------------------------
for recipe in recipes/llama-3.2-1b-lora.yaml recipes/mistral-7b-qlora.yaml; do
  name="plan:$(basename "$recipe" .yaml)"
  if "$BIN/warmline" train "$recipe" --plan >"$WORK/p.txt" 2>"$WORK/p.err"; then
    peak="$(grep -o 'peak memory per process ~[0-9.]*' "$WORK/p.txt" | grep -o '[0-9.]*$' | sort -g | tail -1)"
    result PASS "$name" "largest stage ~$peak GiB/process; $(grep -c 'DOES NOT FIT' "$WORK/p.txt") stage(s) do not fit"
  elif grep -q "not reachable" "$WORK/p.err"; then
    result SKIP "$name" "the hub is not reachable (the recipe needs it)"
  elif [ "$HAVE_BNB" -eq 0 ] && grep -q "bitsandbytes" "$WORK/p.err"; then
    result SKIP "$name" "a QLoRA recipe: needs bitsandbytes"
  else
    result FAIL "$name" "$(tail -1 "$WORK/p.err")"
  fi
done

# --- 3. bf16 full run of the small offline recipe, with one sample reply -------------------------
BF16=(recipes/offline.yaml "${SMALL[@]}" --set name=smoke-bf16 --set training.precision=bf16)
if run_measured train-bf16 "$(planned_gib "${BF16[@]}")" "$BIN/warmline" train "${BF16[@]}" --samples 1; then
  # print_sample_replies: "> prompt", the reply, "[stopped by REASON after N tokens]"
  reply="$(grep -B1 '^\[stopped by ' "$WORK/train-bf16.log" | head -1 | cut -c1-80)"
  if [ -f "$WORK/runs/smoke-bf16/final/config.json" ] && [ -n "$reply" ]; then
    result PASS chat-reply "$reply"
  else
    result FAIL chat-reply "no final/ folder or no sample reply in the log"
  fi
else
  result SKIP chat-reply "the bf16 run failed"
fi

# `--plan --measure`: 2 real optimizer steps of the first stage, measured next to the estimate
if "$BIN/warmline" train "${BF16[@]}" --plan --measure >"$WORK/measure.txt" 2>"$WORK/measure.err" \
  && line="$(grep '^measured: ' "$WORK/measure.txt")"; then
  result PASS plan-measure "${line#measured: }"
else
  result FAIL plan-measure "$(tail -1 "$WORK/measure.err")"
fi

# --- 4. LoRA and QLoRA stages on the packaged model ----------------------------------------------
LORA_RUN=(recipes/offline.yaml "${ONE_STAGE[@]}" "${LORA[@]}" --set name=smoke-lora --set training.precision=bf16)
run_measured lora-bf16 "$(planned_gib "${LORA_RUN[@]}")" "$BIN/warmline" train "${LORA_RUN[@]}"
if [ "$HAVE_BNB" -eq 1 ]; then
  QLORA_RUN=(recipes/offline.yaml "${ONE_STAGE[@]}" "${LORA[@]}" --set training.lora.quantize=4bit
    --set name=smoke-qlora --set training.precision=bf16)
  if run_measured qlora-4bit "$(planned_gib "${QLORA_RUN[@]}")" "$BIN/warmline" train "${QLORA_RUN[@]}"; then
    # the merged stage must be a full-precision model plain transformers loads
    if "$PY" -c "import sys, torch; from transformers import AutoModelForCausalLM as M; \
m = M.from_pretrained(sys.argv[1]); assert all(p.dtype.is_floating_point for p in m.parameters())" \
      "$WORK/runs/smoke-qlora/final" >"$WORK/merge.log" 2>&1; then
      result PASS qlora-merged "final/ loads with plain transformers, floating-point weights"
    else
      result FAIL qlora-merged "$(tail -1 "$WORK/merge.log")"
    fi
  fi
else
  result SKIP qlora-4bit "bitsandbytes is not installed"
fi

# --- 5. two processes (DDP) ---------------------------------------------------------------------
if [ "$GPUS" -ge 2 ]; then
  DDP=(recipes/offline.yaml "${SMALL[@]}" --set name=smoke-ddp --set training.precision=bf16)
  run_measured ddp-2gpu "$(planned_gib "${DDP[@]}")" "$BIN/accelerate" launch --multi_gpu --num_processes 2 \
    -m warmline train "${DDP[@]}"
  if [ -f "$WORK/runs/smoke-ddp/stage-01-counseling/metrics.jsonl" ]; then
    lines="$(grep -c '"loss"' "$WORK/runs/smoke-ddp/stage-01-counseling/metrics.jsonl")"
    single="$(grep -c '"loss"' "$WORK/runs/smoke-bf16/stage-01-counseling/metrics.jsonl" 2>/dev/null || echo '?')"
    # the global batch is the recipe's whatever N is, so the logged steps match the 1-GPU run
    if [ "$lines" = "$single" ]; then
      result PASS ddp-metrics "$lines logged steps, as on one GPU (one writer)"
    else
      result FAIL ddp-metrics "$lines logged steps in stage 1, one GPU logged $single"
    fi
  fi
else
  result SKIP ddp-2gpu "one GPU: 2-process DDP needs two"
fi

echo "RESULT gpu_smoke: $PASS pass, $FAIL fail, $SKIP skip ($GPUS GPU(s))"
[ "$FAIL" -eq 0 ]
