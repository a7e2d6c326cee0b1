#!/usr/bin/env bash
# The GPU benchmarks of the batch editor and the speed work, and the GPU miniature model, on a
# fresh GPU machine, run from the repository root:
#
#   OUT=out/gpu-session bash bench/gpu_session.sh [--tiny] [--dry-run] [STAGE ...]
#
# Default plan: ONE device command (timeout 600 s) whose stages fit $PBE_SESSION_SECONDS (540),
# most important first, each with a time budget "minimum maximum" seconds (BUDGETS below):
#   inference_same           bench.inference same: 512 px, 50 steps, fp16: editor and diffusers
#                            (and the node when ComfyUI imports)                        60 110
#   inference_same_compiled  the editor alone with --compile $PBE_COMPILE_MODE (cudagraphs)
#                                                                                        60 110
#   batch                    bench.batch: published architecture, batch sizes 1, 4, 8   30  60
#   train_throughput         bench.train throughput: published, 512 px, batch 8, bf16: ours,
#                            the minimal diffusers loop, compiled, fused AdamW; MFU     60 120
#   train_checkpointing      bench.train checkpointing at batch 8 and 32                40  70
#   profile_edit             bench.profile edit (editor, 512 px, 50 steps, fp16)        20  40
#   mini_gpu                 python -m train.mini --preset gpu with what is left (30 s kept for
#                            exporting the step it reached); the model in $OUT/mini_gpu/ 60 240
# Optional, named on the command line only: profile_train (30 90), nodes_interval (30 90; needs
# ComfyUI), mini_verdict (60 420). A second device command, when device time remains, trains the
# model alone for about 240 s: `bash bench/gpu_session.sh mini_gpu`. The verdict (a 64 px model)
# runs on the CPU after $OUT is fetched: python -m train.mini_verdict --candidate
# FETCHED/mini_gpu/pbe-final.safetensors --device cpu (docs/training.md, "The prepared GPU
# session"). Each stage's figures go to $OUT/STAGE.json, its output to $OUT/STAGE.log, its
# outcome to one line of $OUT/session.jsonl, written as it goes: a session cut short still leaves
# what finished. The session stops starting stages when fewer than a stage's minimum seconds
# are left.
#
# Set-up (not in --tiny): $PYTHON (default python3, on the GPU machine the interpreter that holds
# its CUDA torch) is used as it is: no virtual environment, nothing installed from the network
# (there is none); modules run from the repository root. Packages the machine lacks (diffusers,
# open_clip_torch and their needs) travel as wheels in .whl/ (made here, before the session, by
# `bash bench/gpu_wheels.sh`) and are installed into /tmp/site. The imports of every chosen stage
# are checked first; the session stops at once (exit 3) listing what is missing. ComfyUI 0.3.64
# is unpacked from shared/comfyui/ComfyUI-*.tar.gz only when the checkout has it (the node stages
# are skipped with the reason otherwise).
#
# --tiny: the stages on the CPU at tiny sizes with $PYTHON, nothing installed, no ComfyUI. The
# stages that exist only at the published size (inference_*, profile_edit, nodes_interval) are
# recorded as skipped unless PBE_TINY_SD=1 (64 px, 1 step, eager: minutes on a CPU).
# --dry-run: print each chosen stage's command line ("STAGE: COMMAND") and run nothing
# (tests/test_gpu_session.py parses them against each module's real options).
# Other settings: PBE_COMPILE_MODE (cudagraphs), PBE_VERDICT_CASES (96), PBE_MINI_OUT
# (.gpu-session/mini: the training run's folder, resumable).

set -u
export PYTHONUNBUFFERED=1

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

TINY=0
DRY=0
STAGES=()
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    --dry-run) DRY=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "error: unknown option $arg (expected --tiny, --dry-run, --help or stage names)" >&2; exit 2 ;;
    *) STAGES+=("$arg") ;;
  esac
done
DEFAULT_STAGES=(inference_same inference_same_compiled batch train_throughput train_checkpointing
  profile_edit mini_gpu)
ALL_STAGES=("${DEFAULT_STAGES[@]}" profile_train nodes_interval mini_verdict)
[ ${#STAGES[@]} -eq 0 ] && STAGES=("${DEFAULT_STAGES[@]}")
for stage in "${STAGES[@]}"; do
  case " ${ALL_STAGES[*]} " in
    *" $stage "*) ;;
    *) echo "error: unknown stage $stage; stages: ${ALL_STAGES[*]}" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-out/gpu-session}
# Reports and logs go to $R: $OUT itself in --tiny; on the GPU machine a work folder, packed
# after every stage into $OUT/session.tar.gz beside a copy of session.jsonl (the device tool
# brings back at most 8 files).
if [ "$TINY" = 1 ]; then R=$OUT; else R=.gpu-session/results; fi
[ "$DRY" = 1 ] || mkdir -p "$OUT" "$R"
SESSION_SECONDS=${PBE_SESSION_SECONDS:-540}
COMPILE_MODE=${PBE_COMPILE_MODE:-cudagraphs}
VERDICT_CASES=${PBE_VERDICT_CASES:-96}
WORK=.gpu-session
MINI_OUT=${PBE_MINI_OUT:-$WORK/mini}
MINI_EXPORT_RESERVE=30 # seconds mini_gpu leaves for exporting the step it reached
START=$(date +%s)

# stage -> "minimum maximum" seconds; the default plan's maxima add up to 550 s, so a plan whose
# stages all run long gives mini_gpu what is left of the 540 s.
declare -A BUDGETS=(
  [inference_same]="60 110" [inference_same_compiled]="60 110" [batch]="30 60"
  [train_throughput]="60 120" [train_checkpointing]="40 70" [profile_edit]="20 40"
  [mini_gpu]="60 240" [profile_train]="30 90" [nodes_interval]="30 90" [mini_verdict]="60 420"
)
if [ "$TINY" = 1 ]; then
  # generous: a loaded CI machine, and nothing here is a figure
  for stage in "${ALL_STAGES[@]}"; do BUDGETS[$stage]="1 900"; done
  SESSION_SECONDS=${PBE_SESSION_SECONDS:-3600}
  MINI_EXPORT_RESERVE=0
fi

record() { # stage status rc seconds reason
  printf '{"stage": "%s", "status": "%s", "rc": %s, "seconds": %s, "reason": "%s"}\n' \
    "$1" "$2" "$3" "$4" "$5" >>"$R/session.jsonl"
  printf '%-26s %-8s rc=%-4s %5ss  %s\n' "$1" "$2" "$3" "$4" "$5"
  pack
}

pack() { # $R -> $OUT/session.tar.gz and $OUT/session.jsonl (not in --tiny, where $R is $OUT)
  [ "$R" = "$OUT" ] && return
  cp "$R/session.jsonl" "$OUT/session.jsonl" 2>/dev/null
  tar czf "$OUT/session.tar.gz.part" -C "$R" . && mv "$OUT/session.tar.gz.part" "$OUT/session.tar.gz"
}

# ---------------------------------------------------------------------------------------------
# set-up

PY=${PYTHON:-python3}
if [ "$TINY" = 1 ]; then
  DEVICE=cpu
elif [ "$DRY" = 0 ]; then
  DEVICE=cuda
  {
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    nvidia-smi || true
  } >"$R/setup.log" 2>&1
  COMFY_TAR=$(ls shared/comfyui/ComfyUI-*.tar.gz 2>/dev/null | head -1)
  COMFY_REASON="ComfyUI is not in this checkout (shared/comfyui/ComfyUI-*.tar.gz)"
  if [ -z "${COMFYUI_PATH:-}" ] && [ -n "$COMFY_TAR" ]; then
    mkdir -p "$WORK"
    [ -d "$WORK/ComfyUI" ] || tar xzf "$COMFY_TAR" -C "$WORK" >>"$R/setup.log" 2>&1
    if (cd "$WORK/ComfyUI" && $PY -c "import comfy.model_management") >>"$R/setup.log" 2>&1; then
      export COMFYUI_PATH="$PWD/$WORK/ComfyUI"
    else
      COMFY_REASON="ComfyUI does not import with this machine's packages (see setup.log)"
    fi
  fi
else
  DEVICE=cuda
fi
DEVICE=${DEVICE:-cuda}

# ---------------------------------------------------------------------------------------------
# the imports every chosen stage needs, checked before any work

declare -A NEEDS=(
  [inference_same]="bench.inference exemplar_core.editor diffusers"
  [inference_same_compiled]="bench.inference exemplar_core.compile"
  [batch]="bench.batch exemplar_core.batch" [train_throughput]="bench.train train diffusers accelerate"
  [train_checkpointing]="bench.train train accelerate" [profile_edit]="bench.profile exemplar_core.editor"
  [profile_train]="bench.profile train accelerate" [nodes_interval]="bench.nodes"
  [mini_gpu]="train.mini train open_clip accelerate" [mini_verdict]="train.mini_verdict train.eval"
)
if [ "$DRY" = 0 ]; then
  modules=torch
  for stage in "${STAGES[@]}"; do modules="$modules ${NEEDS[$stage]}"; done
  if ! $PY - $modules >"$R/imports.log" 2>&1 <<'EOF'
import importlib, sys
missing = []
for name in dict.fromkeys(sys.argv[1:]):
    try:
        importlib.import_module(name)
    except Exception as err:  # an import that fails for any reason is missing here
        missing.append(f"{name} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
print("missing: " + "; ".join(missing) if missing else "imports: all present")
sys.exit(3 if missing else 0)
EOF
  then
    cat "$R/imports.log" >&2
    echo "error: the stages need modules this machine lacks; make the wheels with" \
      "bash bench/gpu_wheels.sh and carry .whl" >&2
    exit 3
  fi
  $PY - >"$R/machine.json" 2>>"$R/imports.log" <<'EOF'
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
    echo "error: $PY sees no CUDA device (run with --tiny on a CPU)" >&2
    exit 2
  fi
fi

# ---------------------------------------------------------------------------------------------
# one stage: skipped when the session's time is short, else run under its budget

run_stage() { # stage command...
  local stage=$1
  shift
  if [ "$DRY" = 1 ]; then
    printf '%s:' "$stage"
    printf ' %q' "$@"
    printf '\n'
    return
  fi
  local budget=(${BUDGETS[$stage]})
  local left=$((SESSION_SECONDS - ($(date +%s) - START)))
  local reserve=0
  [ "$stage" = mini_gpu ] && reserve=$MINI_EXPORT_RESERVE
  if [ "$((left - reserve))" -lt "${budget[0]}" ]; then
    record "$stage" skipped null 0 "${left}s of the session left, the stage needs ${budget[0]}s"
    return
  fi
  local limit=$((left - reserve < budget[1] ? left - reserve : budget[1]))
  local began rc status
  began=$(date +%s)
  timeout --signal=TERM --kill-after=15 "$limit" "$@" >"$R/$stage.log" 2>&1
  rc=$?
  status=ok
  [ $rc -ne 0 ] && status=failed
  [ $rc -eq 124 ] && status=timeout
  record "$stage" "$status" "$rc" $(($(date +%s) - began)) "limit ${limit}s"
}

skip() {
  if [ "$DRY" = 1 ]; then echo "$1: skipped: $2"; else record "$1" skipped null 0 "$2"; fi
}

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
        run_stage "$stage" $PY -m bench.inference same "${SAME[@]}" --out "$R/$stage.json"
      else
        skip "$stage" "tiny: SD-sized only (PBE_TINY_SD=1 runs it)"
      fi
      ;;
    inference_same_compiled)
      if sd_sized; then
        run_stage "$stage" $PY -m bench.inference same "${SAME[@]}" --repeats 1 --sides editor \
          --compile "$TINY_COMPILE" --out "$R/$stage.json"
      else
        skip "$stage" "tiny: SD-sized only (PBE_TINY_SD=1 runs it)"
      fi
      ;;
    train_throughput)
      run_stage "$stage" $PY -m bench.train throughput "${TRAIN[@]}" --sides "$SIDES" \
        --repeats 1 --out "$R/$stage.json"
      ;;
    batch)
      run_stage "$stage" $PY -m bench.batch "${BATCH[@]}" --out "$R/$stage.json"
      ;;
    train_checkpointing)
      run_stage "$stage" $PY -m bench.train checkpointing "${TRAIN[@]}" \
        --batches "$CKPT_BATCHES" --out "$R/$stage.json"
      ;;
    profile_edit)
      if sd_sized; then
        run_stage "$stage" $PY -m bench.profile edit --side editor "${PROFILE_EDIT[@]}" \
          --out "$R/$stage.json"
      else
        skip "$stage" "tiny: SD-sized only (PBE_TINY_SD=1 runs it)"
      fi
      ;;
    profile_train)
      run_stage "$stage" $PY -m bench.profile train "${TRAIN[@]}" --out "$R/$stage.json"
      ;;
    nodes_interval)
      if [ "$TINY" = 1 ]; then
        skip "$stage" "tiny: needs ComfyUI and the SD-sized model"
      elif [ "$DRY" = 0 ] && [ -z "${COMFYUI_PATH:-}" ]; then
        skip "$stage" "$COMFY_REASON"
      else
        run_stage "$stage" $PY -m bench.nodes interval --size 512 --steps 50 --device cuda \
          --out "$R/$stage.json"
      fi
      ;;
    mini_gpu)
      run_stage "$stage" $PY -m train.mini --preset gpu --out "$MINI_OUT" "${MINI[@]}"
      [ "$DRY" = 1 ] && continue
      model="$MINI_OUT/train/models/pbe-final.safetensors"
      if [ ! -f "$model" ] && [ -f "$MINI_OUT/train/checkpoints/latest" ]; then
        # Stopped by its budget: the trainer saved a checkpoint; export the step it reached
        # (resuming at max_steps only exports), in the seconds kept for it.
        reached=$($PY -c "import json,sys; from pathlib import Path; r=Path(sys.argv[1]); \
print(json.loads((r / (r / 'latest').read_text().strip() / 'state.json').read_text())['step'])" \
          "$MINI_OUT/train/checkpoints" 2>>"$R/$stage.log")
        if [ -n "$reached" ]; then
          BUDGETS[mini_export]="10 120"
          run_stage mini_export $PY -m train.mini --preset gpu --out "$MINI_OUT" "${MINI[@]}" \
            --steps "$reached"
        fi
      fi
      mkdir -p "$R/mini_gpu" "$OUT/mini_gpu"
      for f in "$MINI_OUT/train/train.log" "$MINI_OUT/train/summary.json"; do
        [ -f "$f" ] && cp "$f" "$R/mini_gpu/"
      done
      # Beside the archive. The device tool brings back files of at most 16 MiB: a larger model
      # (the gpu preset's is about 36 MB) comes back in 15 MiB pieces, joined after fetching with
      # cat pbe-final.safetensors.part* > pbe-final.safetensors.
      if [ -f "$model" ] && [ "$TINY" = 0 ] && [ "$(stat -c %s "$model")" -gt 15728640 ]; then
        split -b 15M -d "$model" "$OUT/mini_gpu/pbe-final.safetensors.part"
      elif [ -f "$model" ]; then
        cp "$model" "$OUT/mini_gpu/"
      fi
      pack
      ;;
    mini_verdict)
      model="$MINI_OUT/train/models/pbe-final.safetensors"
      if [ "$DRY" = 1 ] || [ -f "$model" ]; then
        run_stage "$stage" $PY -m train.mini_verdict --candidate "$model" "${VERDICT[@]}" \
          --device "$DEVICE" --out "$R/$stage"
      else
        skip "$stage" "no trained model at $model (run the mini_gpu stage first)"
      fi
      ;;
  esac
done
[ "$DRY" = 1 ] && exit 0
pack
echo "session: $(($(date +%s) - START)) s; reports, logs and the model under $R (packed in $OUT)"
