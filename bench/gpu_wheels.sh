#!/usr/bin/env bash
# The Python packages bench/gpu_session.sh needs that the GPU machine lacks, as wheels in .whl/
# (ignored by git), made HERE, on a machine with network access, before the GPU session:
#
#   bash bench/gpu_wheels.sh        # then carry .whl to the GPU machine
#
# The GPU machine's python3 (3.12, x86-64) holds torch, torchvision, accelerate, transformers,
# peft, timm, safetensors, huggingface_hub, tqdm, regex, numpy and pillow, and has no network.
# What exemplar_core, train and bench import beyond those (their import lines against the
# machine's package list): diffusers (bench.inference's diffusers side, bench.train's minimal
# loop, the checkpoint conversion) and open_clip (the CLIP tower), with the needs the machine
# does not have: importlib_metadata and lazy-importer (diffusers), ftfy and wcwidth (open_clip).
# Together about 8.5 MiB (diffusers 6.1 MiB, open_clip_torch 1.5 MiB, wcwidth 0.8 MiB), well
# under the 64 MiB that travels with the working tree. gpu_session.sh checks each stage's
# imports first and stops at once naming anything still missing.
# Versions: those this project is tested with; one version of each.
set -eu
PY=${PYTHON:-python3}
rm -rf .whl
mkdir -p .whl
$PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
  importlib_metadata==10.2.0 lazy-importer==0.1.0
du -sh .whl
ls -la .whl
