#!/usr/bin/env bash
# The tests: every notebook (nbdev-test), the docs pipeline up to rendering (nbdev-proc-nbs), and the long
# matrix in tests/ (pytest). Triton runs in its CPU interpreter unless a GPU is present; cells flagged `gpu`
# or `slow` are skipped. About 15 minutes on a 2-core VM after the one-off install (clean clones of 2026-12-02: 898 s).
set -euo pipefail
start=$SECONDS
say() { echo "== [$(date +%T), $((SECONDS - start)) s] $*"; }
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if ! .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then export TRITON_INTERPRET=1; fi
export PATH="$PWD/.venv/bin:$PATH"
say "exporting the notebooks to fastoptim/"
nbdev-export
if [ "${CI:-}" = true ] && [ -n "$(git status --porcelain -- fastoptim 2>/dev/null)" ]; then
  echo "fastoptim/ differs from what the notebooks export: run nbdev-export and commit." >&2
  git status --porcelain -- fastoptim >&2
  exit 1
fi
python tools/readme.py --check
say "running every notebook (about 7 minutes; each is listed as it ends, with its time)"
nbdev-test --n-workers 2 --do-print --timing
say "processing the notebooks for the docs, as Quarto would get them (tools/proc_nbs.sh)"
bash tools/proc_nbs.sh
say "the test matrix in tests/, on every core (about 7 minutes; a dot per test, the slowest listed at the end)"
python -m pytest tests -q -p no:cacheprovider -n auto --durations=10
say "all tests passed"
