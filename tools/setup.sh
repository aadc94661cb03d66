#!/usr/bin/env bash
# Create .venv (if missing) with fastoptim and what its demo and tests need. Sourced by demo.sh and test.sh.
# torch is installed first, on its own; everything after is constrained to that torch, so that pip never
# swaps in another build (an unconstrained torchvision would pull several GB of CUDA wheels).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv .venv
quiet() { grep -v -e 'is ignored: it is neither a file nor a directory' -e '^\[notice\]' || true; }
if ! "$PY" -c 'import torch' 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check "torch==${FASTOPTIM_TORCH:-2.13.0}" 2>&1 | quiet
fi
constraints=.venv/torch-constraint.txt
"$PY" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' 2>/dev/null > "$constraints"
if ! "$PY" -c 'import fastoptim, fastai, nbdev, sklearn, triton, pytest, optimi, pytorch_optimizer, adam_atan2_pytorch, muon, schedulefree, prodigyopt, kbeta, mlx.core, xdist, accelerate' 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check -c "$constraints" -e ".[dev]" 2>&1 | quiet
fi
