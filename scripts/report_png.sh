#!/usr/bin/env bash
# docs/report.png: the top of report.html of the README's default run (digits), drawn by headless
# Chromium. Rerun after any change to the report: bash scripts/report_png.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/probes run digits --out "$tmp/run" --quiet
chromium=$(command -v chromium || command -v chromium-browser || command -v google-chrome)
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --user-data-dir="$tmp/profile" \
  --window-size=1200,1500 --screenshot="$tmp/report.png" "file://$tmp/run/report.html" 2>/dev/null
.venv/bin/python - "$tmp/report.png" docs/report.png <<'PY'
import sys
from PIL import Image
Image.open(sys.argv[1]).convert("RGB").save(sys.argv[2], optimize=True)
PY
echo "wrote docs/report.png" >&2
