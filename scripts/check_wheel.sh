#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment and run the README's default job
# from a temporary directory outside the checkout: the installed package must carry its own data
# (digits weights and checksums, taxonomies, recipes). CI runs this after the tests.
#
# The fresh environment takes probes from the wheel only; its dependencies (torch and the rest,
# pinned by constraints.txt when .venv was made) are read from .venv's site-packages through a
# path file, so nothing large is installed twice and torch stays the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" .
wheel=$(ls "$tmp"/dist/probes-*.whl)
.venv/bin/python - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["probes/py.typed", "probes/data/digits/SHA256SUMS", "probes/data/digits/unet/diffusion_pytorch_model.safetensors",
        "probes/data/digits/classifier/model.safetensors", "probes/taxonomies/digits-shape.yaml",
        "probes/recipes/digits.yaml"]
missing = [n for n in need if n not in names]
assert not missing, f"the wheel lacks {missing}"
PY

.venv/bin/python -m venv --without-pip "$tmp/venv"
site=$("$tmp/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
deps=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$deps" > "$site/probes-check-dependencies.pth"
.venv/bin/python -m pip --python "$tmp/venv/bin/python" install -q --no-deps -c constraints.txt "$wheel"

mkdir "$tmp/work"
cd "$tmp/work"
export -n PYTHONPATH 2>/dev/null || true
unset PYTHONPATH
"$tmp/venv/bin/python" - "$tmp/venv" "$root" <<'PY'
import sys
from pathlib import Path
import probes
where = Path(probes.__file__).resolve()
assert Path(sys.argv[1]).resolve() in where.parents, f"probes imported from {where}, not the fresh install"
assert Path(sys.argv[2]).resolve() not in where.parents
PY
"$tmp/venv/bin/python" -m probes taxonomy show digits-shape >/dev/null
# The README's first command, minus the setup it does for a checkout.
"$tmp/venv/bin/probes" run digits --out runs/digits --overwrite
test -s runs/digits/tree.json && test -s runs/digits/curves.csv
echo "check_wheel: the wheel ran the default job from $tmp/work in $((SECONDS - start)) s" >&2
