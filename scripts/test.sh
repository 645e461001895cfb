#!/usr/bin/env bash
# The one test command: sets up everything the tests need (venv with CPU torch, the
# Fashion-MNIST data set, a real ComfyUI server for the host tests), then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k sampler`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_comfyui.sh  # runs scripts/setup.sh first
exec .venv/bin/python -m pytest "$@"
