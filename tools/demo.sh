#!/usr/bin/env bash
# The demo: train on scikit-learn's digits with the default backend, then time opt.step() for every backend.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python bench/demo.py "$@"
