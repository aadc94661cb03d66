#!/usr/bin/env bash
# The docs pipeline up to rendering: nbdev-proc-nbs processes every notebook into _proc/ as nbdev-preview and
# nbdev-docs hand them to Quarto (which cannot be installed on the project's machines). It must run clean and
# write nothing into nbs/, ignored files included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
listing() { git status --porcelain --ignored --untracked-files=all -- nbs; }
before=$(listing)
nbdev-proc-nbs --force  # it first tries to install Quarto, which needs root here: its "Cancelled" lines are expected
after=$(listing)
if [ "$before" != "$after" ]; then
  echo "nbdev-proc-nbs wrote into nbs/:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
test -f _proc/index.ipynb || { echo "nbdev-proc-nbs produced no _proc/index.ipynb" >&2; exit 1; }
echo "docs pipeline clean up to rendering: $(ls _proc/*.ipynb | wc -l) notebooks processed into _proc/"
