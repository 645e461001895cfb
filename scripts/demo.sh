#!/usr/bin/env bash
# Main-job demo: set up the environment (idempotent), then generate every Fashion-MNIST
# class with the embedded model, plain and with the shortcut, same seed, side by side.
# Writes out/demo_grid.png and prints seconds, speed-up, base passes, class consistency.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/python" "$root/scripts/demo.py" "$@"
