#!/usr/bin/env bash
# Fetches the Google Noto emoji (64x64 RGBA PNG) from the npm package emoji-datasource-google
# and sorts the base emoji into one folder per category (the class), for configs/emoji64.toml:
#   data/emoji64/<category>/<short_name>.png
# Skin-tone variants are left out; the "Component" category (5 skin-tone swatches) too.
# With CAPTIONS=1 each image also gets a caption sidecar, its Unicode name in lower case
# (<short_name>.txt: "grinning face with smiling eyes"), for the text-to-image config
# configs/emoji-t2i.toml:   CAPTIONS=1 tools/get_emoji.sh data/emoji-t2i
set -euo pipefail
OUT=${1:-data/emoji64}
VERSION=16.0.0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "emoji-datasource-google@$VERSION" >/dev/null && tar xzf "emoji-datasource-google-$VERSION.tgz")
python3 - "$tmp/package" "$OUT" "${CAPTIONS:-0}" <<'PY'
import json, os, shutil, sys
pkg, out, captions = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
emoji = json.load(open(os.path.join(pkg, "emoji.json")))
count = 0
for e in emoji:
    category = e["category"]
    src = os.path.join(pkg, "img", "google", "64", e["image"])
    if category == "Component" or not e.get("has_img_google") or not os.path.exists(src):
        continue
    folder = os.path.join(out, category.replace(" & ", "-and-").replace(" ", "-").lower())
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(src, os.path.join(folder, e["short_name"] + ".png"))
    if captions:
        with open(os.path.join(folder, e["short_name"] + ".txt"), "w") as f:
            f.write((e.get("name") or e["short_name"].replace("_", " ")).lower() + "\n")
    count += 1
print(f"{count} emoji in {len(os.listdir(out))} categories under {out} (images Apache-2.0, package MIT)")
PY
