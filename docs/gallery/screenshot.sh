#!/bin/bash
# Screenshot of report.html / compare.html for docs/gallery (headless Chromium, then made small
# with Pillow: 1000 px wide, 256 colours).
#   docs/gallery/screenshot.sh PAGE.html OUT.png [HEIGHT] [browse]
# browse: only the image browser (a copy of the page with a script that hides the sections above it).
set -euo pipefail
page=$1 out=$2 height=${3:-2400} part=${4:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$part" = browse ]; then
  copy=$(dirname "$page")/.screenshot_browse.html  # beside the page: report_images/ resolve
  trap 'rm -rf "$tmp" "$copy"' EXIT
  sed 's#</body>#<script>(function(){var h=document.getElementById("browse-nav").previousElementSibling;for(var e=document.body.firstElementChild;e\&\&e!==h;e=e.nextElementSibling)if(e.tagName!=="H1")e.style.display="none";})();</script></body>#' \
    "$page" > "$copy"
  page=$copy
fi
"${CHROMIUM:-chromium}" --headless --disable-gpu --no-sandbox --hide-scrollbars --user-data-dir="$tmp/profile" \
  --screenshot="$tmp/shot.png" --window-size=1280,"$height" "file://$(readlink -f "$page")" 2>/dev/null
"${PYTHON:-python}" - "$tmp/shot.png" "$out" <<'PY'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
im = im.resize((1000, round(im.height * 1000 / im.width)), Image.LANCZOS)
im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(sys.argv[2], optimize=True)
print(sys.argv[2], im.size)
PY
