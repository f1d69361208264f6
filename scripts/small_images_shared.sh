#!/usr/bin/env bash
# Small images: the per-image grid synthesis (--mode grid) against the embedded shared one
# (--mode grid-shared) on centre crops of training images, to place `inr::SHARED_TRY_PIXELS`.
# Crops of 32 ... 384 pixels of kodim03/05/07/11 (PPM; needs `convert FILE.png ppm:-` from
# ImageMagick), each at the small, medium and large presets, one thread.
# Usage: [INR=target/release/inr] scripts/small_images_shared.sh KODAK_DIR OUT_CSV
# Writes image,size,preset,mode,bpp,psnr_db,encode_s; summarise with
# scripts/small_images_shared.py OUT_CSV.
set -euo pipefail
KODAK=${1:?Kodak image directory}
OUT=${2:?output CSV}
INR=${INR:-target/release/inr}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "image,size,preset,mode,bpp,psnr_db,encode_s" > "$OUT"
for i in 03 05 07 11; do
  convert "$KODAK/kodim$i.png" ppm:- > "$TMP/full.ppm"
  for s in 32 64 128 192 256 384; do
    python3 - "$TMP/full.ppm" "$s" "$TMP/k${i}_$s.ppm" <<'PY'
import sys
src, s, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = open(src, "rb").read()
fields, i = [], 0
while len(fields) < 4:  # P6 header: magic, width, height, maxval (comments skipped)
    while d[i:i + 1].isspace():
        i += 1
    if d[i:i + 1] == b"#":
        while d[i:i + 1] != b"\n":
            i += 1
        continue
    j = i
    while not d[j:j + 1].isspace():
        j += 1
    fields.append(d[i:j])
    i = j
px, w, h = d[i + 1:], int(fields[1]), int(fields[2])
x0, y0 = (w - s) // 2, (h - s) // 2
rows = b"".join(px[((y0 + y) * w + x0) * 3:((y0 + y) * w + x0 + s) * 3] for y in range(s))
open(out, "wb").write(b"P6\n%d %d\n255\n" % (s, s) + rows)
PY
    for p in small medium large; do
      for m in grid grid-shared; do
        j=$("$INR" --threads 1 --json -q encode "$TMP/k${i}_$s.ppm" -o "$TMP/x.inr" --force --mode "$m" --preset "$p")
        echo "$j" | python3 -c 'import json, sys
e = json.load(sys.stdin)
print("%s,%s,%s,%s,%.4f,%.3f,%.2f" % (sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], e["bpp"], e["psnr"], e["time_s"]))' "k${i}_$s" "$s" "$p" "$m" >> "$OUT"
      done
    done
  done
done
