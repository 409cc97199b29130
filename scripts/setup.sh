#!/usr/bin/env bash
# Create or refresh the virtual environment at .venv and the WordNet data nltk reads.
# Safe to run again: it reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi

# The constraints keep torch on its CPU build where there is no GPU (see constraints.txt).
stamp=.venv/.probes-install-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing probes and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi

# Plain `import torchvision` (and so diffusers, open_clip, timm) fails on CPU torch with the CUDA
# torchvision build the pins give; a startup hook in site-packages patches it on first import.
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
.venv/bin/python -m probes._compat "$site" >/dev/null

# WordNet for nltk. Offline machines take Debian's WordNet 3.0 packages; elsewhere
# `probes wordnet setup` falls back to nltk's own download.
if ! .venv/bin/python -c "import nltk; nltk.data.find('corpora/wordnet')" >/dev/null 2>&1; then
  if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's WordNet packages" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null
  fi
  .venv/bin/probes wordnet setup
fi

# Headless Chromium for the report.html tests (they skip without it).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "setup: installing Debian's chromium (headless checks of report.html)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
