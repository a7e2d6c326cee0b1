#!/usr/bin/env bash
# Every GPU benchmark of the batch editor and the speed work, and the GPU miniature model, in one
# command on a fresh GPU machine, run from the repository root:
#
#   OUT=out/gpu-session bash bench/gpu_session.sh [--tiny] [STAGE ...]
#
# Stages, most important first (each one's figures in $OUT/STAGE.json, its output in
# $OUT/STAGE.log, its outcome as one line of $OUT/session.jsonl, written as it goes so a session
# cut short still leaves what finished):
#   inference_same           bench.inference same: 512 px, 50 steps, fp16: editor, diffusers and
#                            (when ComfyUI is there) the node
#   inference_same_compiled  the same with the editor's --compile $PBE_COMPILE_MODE (cudagraphs)
#   train_throughput         bench.train throughput: published, 512 px, batch 8, bf16: ours,
#                            the minimal diffusers loop, compiled, fused AdamW; MFU
#   batch                    bench.batch: published architecture, batch sizes 1, 4, 8
#   train_checkpointing      bench.train checkpointing at batch 8 and 32
#   profile_edit             bench.profile edit (editor, 512 px, 50 steps, fp16)
#   profile_train            bench.profile train (published, 512 px, batch 8, bf16)
#   nodes_interval           bench.nodes interval (needs ComfyUI)
#   mini_gpu                 python -m train.mini --preset gpu; the model goes to $OUT/mini_gpu/
#   mini_verdict             python -m train.mini_verdict on three fresh worlds (never copies)
# Without STAGE arguments every stage runs in that order. Each stage has a time budget (the
# BUDGETS table below); the session as a whole stops starting stages when fewer than a stage's
# minimum seconds are left of $PBE_SESSION_SECONDS (570: one device command is at most 600 s).
# The benchmarks take about 10 minutes and the model about 7 more, so a 15-minute device budget
# is two commands: `bash bench/gpu_session.sh` and `bash bench/gpu_session.sh mini_gpu
# mini_verdict` (docs/training.md, "The prepared GPU session").
#
# Set-up (not in --tiny): a virtual environment .venv-gpu that sees the machine's own packages
# (--system-site-packages: a preinstalled CUDA torch is kept), then `pip install -e ".[train,test]"`
# (and torch/torchvision when the machine has none), each allowed $PBE_PIP_SECONDS (240); a pip
# that fails (no network) is logged and the session goes on with what imports. ComfyUI 0.3.64 is
# unpacked from shared/comfyui or ../shared/comfyui when present, for the node benchmarks.
#
# --tiny: every stage on the CPU at tiny sizes with $PYTHON (default: python3), no pip, no ComfyUI:
# a check of this script and of each command line (tests/test_gpu_session.py). The stages that
# exist only at the published size (inference_*, profile_edit, nodes_interval) are recorded as
# skipped unless PBE_TINY_SD=1, which runs them at 64 px, 1 step, eager (minutes on a CPU).
# Other settings: PBE_COMPILE_MODE (cudagraphs), PBE_VERDICT_CASES (96), PBE_MINI_OUT
# (.gpu-session/mini: the training run's folder, resumable).

set -u

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

TINY=0
STAGES=()
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "error: unknown option $arg (expected --tiny, --help or stage names)" >&2; exit 2 ;;
    *) STAGES+=("$arg") ;;
  esac
done
ALL_STAGES=(inference_same inference_same_compiled train_throughput batch train_checkpointing
  profile_edit profile_train nodes_interval mini_gpu mini_verdict)
[ ${#STAGES[@]} -eq 0 ] && STAGES=("${ALL_STAGES[@]}")
for stage in "${STAGES[@]}"; do
  case " ${ALL_STAGES[*]} " in
    *" $stage "*) ;;
    *) echo "error: unknown stage $stage; stages: ${ALL_STAGES[*]}" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-out/gpu-session}
mkdir -p "$OUT"
SESSION_SECONDS=${PBE_SESSION_SECONDS:-570}
COMPILE_MODE=${PBE_COMPILE_MODE:-cudagraphs}
VERDICT_CASES=${PBE_VERDICT_CASES:-96}
WORK=.gpu-session
MINI_OUT=${PBE_MINI_OUT:-$WORK/mini}
START=$(date +%s)

# stage -> "minimum maximum" seconds
declare -A BUDGETS=(
  [inference_same]="60 150" [inference_same_compiled]="60 180" [train_throughput]="60 200"
  [batch]="30 90" [train_checkpointing]="60 150" [profile_edit]="20 60" [profile_train]="30 90"
  [nodes_interval]="30 90" [mini_gpu]="240 480" [mini_verdict]="60 420"
)
if [ "$TINY" = 1 ]; then
  # generous: a loaded CI machine, and nothing here is a figure
  for stage in "${ALL_STAGES[@]}"; do BUDGETS[$stage]="1 900"; done
  SESSION_SECONDS=${PBE_SESSION_SECONDS:-3600}
fi

record() { # stage status rc seconds reason
  printf '{"stage": "%s", "status": "%s", "rc": %s, "seconds": %s, "reason": "%s"}\n' \
    "$1" "$2" "$3" "$4" "$5" >>"$OUT/session.jsonl"
  printf '%-26s %-8s rc=%-4s %5ss  %s\n' "$1" "$2" "$3" "$4" "$5"
}

# ---------------------------------------------------------------------------------------------
# set-up

if [ "$TINY" = 1 ]; then
  PY=${PYTHON:-python3}
  DEVICE=cpu
  echo "tiny: $PY on the CPU; nothing installed" >"$OUT/setup.log"
else
  DEVICE=cuda
  PIP_SECONDS=${PBE_PIP_SECONDS:-240}
  {
    [ -x .venv-gpu/bin/python ] || python3 -m venv --system-site-packages .venv-gpu
    PY=.venv-gpu/bin/python
    if ! $PY -c "import torch, torchvision" 2>/dev/null; then
      timeout "$PIP_SECONDS" $PY -m pip install -q torch torchvision || echo "pip: torch failed"
    fi
    timeout "$PIP_SECONDS" $PY -m pip install -q -e ".[train,test]" || echo "pip: the pack failed"
    nvidia-smi || true
  } >"$OUT/setup.log" 2>&1
  PY=.venv-gpu/bin/python
  COMFY_TAR=$(ls shared/comfyui/ComfyUI-*.tar.gz ../shared/comfyui/ComfyUI-*.tar.gz 2>/dev/null | head -1)
  if [ -z "${COMFYUI_PATH:-}" ] && [ -n "$COMFY_TAR" ]; then
    {
      mkdir -p "$WORK"
      [ -d "$WORK/ComfyUI" ] || tar xzf "$COMFY_TAR" -C "$WORK"
      grep -v '^torchaudio' "$WORK/ComfyUI/requirements.txt" >"$WORK/comfy-requirements.txt"
      timeout "$PIP_SECONDS" $PY -m pip install -q -r "$WORK/comfy-requirements.txt" ||
        echo "pip: ComfyUI's requirements failed"
    } >>"$OUT/setup.log" 2>&1
    if (cd "$WORK/ComfyUI" && "$OLDPWD/$PY" -c "import comfy.model_management") >>"$OUT/setup.log" 2>&1; then
      export COMFYUI_PATH="$PWD/$WORK/ComfyUI"
    fi
  fi
fi
$PY - >"$OUT/machine.json" 2>>"$OUT/setup.log" <<'EOF'
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    info["device"] = torch.cuda.get_device_name(0)
    info["cudnn"] = torch.backends.cudnn.version()
try:
    import diffusers
    info["diffusers"] = diffusers.__version__
except ImportError:
    pass
print(json.dumps(info))
EOF
if [ "$TINY" = 0 ] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "error: $PY sees no CUDA device; see $OUT/setup.log (run with --tiny on a CPU)" >&2
  exit 2
fi

# ---------------------------------------------------------------------------------------------
# one stage: skipped when the session's time is short, else run under its budget

run_stage() { # stage command...
  local stage=$1
  shift
  local budget=(${BUDGETS[$stage]})
  local left=$((SESSION_SECONDS - ($(date +%s) - START)))
  if [ "$left" -lt "${budget[0]}" ]; then
    record "$stage" skipped null 0 "${left}s of the session left, the stage needs ${budget[0]}s"
    return
  fi
  local limit=$((left < budget[1] ? left : budget[1]))
  local began rc status
  began=$(date +%s)
  timeout --signal=TERM --kill-after=15 "$limit" "$@" >"$OUT/$stage.log" 2>&1
  rc=$?
  status=ok
  [ $rc -ne 0 ] && status=failed
  [ $rc -eq 124 ] && status=timeout
  record "$stage" "$status" "$rc" $(($(date +%s) - began)) "limit ${limit}s"
}

skip() { record "$1" skipped null 0 "$2"; }

sd_sized() { # stage: may a stage that exists only at the published size run here?
  [ "$TINY" = 0 ] || [ "${PBE_TINY_SD:-0}" = 1 ]
}

if [ "$TINY" = 1 ]; then
  SAME=(--size 64 --steps 1 --repeats 1 --device cpu --dtype fp32)
  PROFILE_EDIT=(--size 64 --steps 1 --device cpu --dtype fp32)
  TRAIN=(--architecture tiny --resolution 32 --batch 2 --steps 2 --warmup 1 --workers 0
    --scenes 12 --precision no --device cpu)
  BATCH=(--architecture mini --sizes 1,2 --jobs 2 --steps 2 --device cpu)
  CKPT_BATCHES=2 # fewer worker processes: the minimal loop and two batches are tested elsewhere
  SIDES=ours,ours_fused
  MINI=(--smoke)
  VERDICT=(--cases 2 --steps 2 --scales 0,5)
  TINY_COMPILE=off # compiling the SD-sized UNet on a CPU takes many minutes
else
  SAME=(--size 512 --steps 50 --dtype fp16 --repeats 2 --device cuda)
  PROFILE_EDIT=(--size 512 --steps 50 --dtype fp16 --device cuda)
  TRAIN=(--architecture published --resolution 512 --batch 8 --steps 10 --warmup 5 --workers 4
    --precision bf16 --device cuda)
  BATCH=(--architecture published --sizes 1,4,8 --device cuda)
  CKPT_BATCHES=8,32
  SIDES=ours,minimal,ours_compiled,ours_fused
  MINI=()
  VERDICT=(--cases "$VERDICT_CASES")
  TINY_COMPILE=$COMPILE_MODE
fi

for stage in "${STAGES[@]}"; do
  case "$stage" in
    inference_same)
      if sd_sized; then
        run_stage "$stage" $PY -m bench.inference same "${SAME[@]}" --out "$OUT/$stage.json"
      else
        skip "$stage" "tiny: SD-sized only (PBE_TINY_SD=1 runs it)"
      fi
      ;;
    inference_same_compiled)
      if ! sd_sized; then
        skip "$stage" "tiny: SD-sized only (PBE_TINY_SD=1 runs it)"
      elif ! $PY -m bench.inference same --help 2>/dev/null | grep -q -- "--compile"; then
        skip "$stage" "bench.inference has no --compile option in this tree"
      else
        run_stage "$stage" $PY -m bench.inference same "${SAME[@]}" --repeats 1 \
          --compile "$TINY_COMPILE" --out "$OUT/$stage.json"
      fi
      ;;
    train_throughput)
      run_stage "$stage" $PY -m bench.train throughput "${TRAIN[@]}" --sides "$SIDES" \
        --repeats 1 --out "$OUT/$stage.json"
      ;;
    batch)
      if $PY -c "import bench.batch" 2>/dev/null; then
        run_stage "$stage" $PY -m bench.batch "${BATCH[@]}" --out "$OUT/$stage.json"
      else
        skip "$stage" "bench.batch is not in this tree"
      fi
      ;;
    train_checkpointing)
      run_stage "$stage" $PY -m bench.train checkpointing "${TRAIN[@]}" \
        --batches "$CKPT_BATCHES" --out "$OUT/$stage.json"
      ;;
    profile_edit)
      if sd_sized; then
        run_stage "$stage" $PY -m bench.profile edit --side editor "${PROFILE_EDIT[@]}" \
          --out "$OUT/$stage.json"
      else
        skip "$stage" "tiny: SD-sized only (PBE_TINY_SD=1 runs it)"
      fi
      ;;
    profile_train)
      run_stage "$stage" $PY -m bench.profile train "${TRAIN[@]}" --out "$OUT/$stage.json"
      ;;
    nodes_interval)
      if [ "$TINY" = 1 ]; then
        skip "$stage" "tiny: needs ComfyUI and the SD-sized model"
      elif [ -z "${COMFYUI_PATH:-}" ]; then
        skip "$stage" "ComfyUI could not be installed (see setup.log)"
      else
        run_stage "$stage" $PY -m bench.nodes interval --size 512 --steps 50 --device cuda \
          --out "$OUT/$stage.json"
      fi
      ;;
    mini_gpu)
      run_stage "$stage" $PY -m train.mini --preset gpu --out "$MINI_OUT" "${MINI[@]}"
      model="$MINI_OUT/train/models/pbe-final.safetensors"
      if [ ! -f "$model" ] && [ -f "$MINI_OUT/train/checkpoints/latest" ]; then
        # Stopped by its budget: the trainer saved a checkpoint; export the step it reached
        # (resuming at max_steps only exports).
        reached=$($PY -c "import json,sys; from pathlib import Path; r=Path(sys.argv[1]); \
print(json.loads((r / (r / 'latest').read_text().strip() / 'state.json').read_text())['step'])" \
          "$MINI_OUT/train/checkpoints" 2>>"$OUT/$stage.log")
        if [ -n "$reached" ]; then
          BUDGETS[mini_export]="10 120"
          run_stage mini_export $PY -m train.mini --preset gpu --out "$MINI_OUT" "${MINI[@]}" \
            --steps "$reached"
        fi
      fi
      mkdir -p "$OUT/mini_gpu"
      for f in "$model" "$MINI_OUT/train/train.log" "$MINI_OUT/train/summary.json"; do
        [ -f "$f" ] && cp "$f" "$OUT/mini_gpu/"
      done
      cp -r "$MINI_OUT/train/validation" "$OUT/mini_gpu/" 2>/dev/null
      ;;
    mini_verdict)
      model="$MINI_OUT/train/models/pbe-final.safetensors"
      if [ -f "$model" ]; then
        run_stage "$stage" $PY -m train.mini_verdict --candidate "$model" "${VERDICT[@]}" \
          --device "$DEVICE" --out "$OUT/$stage"
      else
        skip "$stage" "no trained model at $model (run the mini_gpu stage first)"
      fi
      ;;
  esac
done
echo "session: $(($(date +%s) - START)) s; reports, logs and the model under $OUT"
