#!/usr/bin/env bash
# The Python packages the results notebooks and their test need, in .venv-results/.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv-results"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check h5py pandas matplotlib nbclient nbformat ipykernel
