#!/usr/bin/env bash
# Creates .venv with a CPU torch (pinned here only, never in requirements.txt),
# the library's requirements, the test tools and the Fashion-MNIST data set; with --browser
# also the browser the browser tests drive (Debian's chromium; scripts/setup_comfyui.sh asks).
# Idempotent: a second run only checks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install -q "$TORCH_PIN"
fi
# A stamp of the requirement files skips pip (several seconds) when nothing changed.
stamp=.venv/.requirements.sha256
want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-64)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$py" -m pip install -q -r requirements.txt -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# Debian packages: the Fashion-MNIST data set, and the browser (Debian's chromium; the browser
# tests never use a Playwright-downloaded one) with a font so that pages render text.
apt_packages=()
fmnist=/usr/share/datasets/fashion-mnist
if [ ! -e "$fmnist/train-images-idx3-ubyte.gz" ] && [ ! -e "$fmnist/train-images-idx3-ubyte" ]; then
  apt_packages+=(dataset-fashion-mnist)
fi
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
  apt_packages+=(chromium fonts-dejavu-core)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_packages[@]}" >/dev/null
  else
    echo "warning: apt-get is unavailable; install ${apt_packages[*]} by hand" >&2
  fi
fi
