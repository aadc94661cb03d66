#!/usr/bin/env bash
# The tests: every notebook (nbdev-test) and the long matrix in tests/ (pytest). Triton runs in its
# CPU interpreter unless a GPU is present; cells flagged `gpu` or `slow` are skipped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if ! .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then export TRITON_INTERPRET=1; fi
export PATH="$PWD/.venv/bin:$PATH"
nbdev-export
if [ "${CI:-}" = true ] && [ -n "$(git status --porcelain -- fastoptim 2>/dev/null)" ]; then
  echo "fastoptim/ differs from what the notebooks export: run nbdev-export and commit." >&2
  git status --porcelain -- fastoptim >&2
  exit 1
fi
python tools/readme.py --check
nbdev-test --n-workers 2
python -m pytest tests -q -p no:cacheprovider
