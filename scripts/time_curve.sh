#!/usr/bin/env bash
# PSNR vs encode seconds (issue 5): on every PNG of a directory, weight mode at a fixed target
# rate, for each preset of $PRESETS, each start of $BASES (`default` = the embedded meta-learned
# base, `none` = random init) and each step count of $STEPS:
#   inr encode IMG --mode weights --preset P --base B --steps S --bpp $BPP
# Real file sizes, decoded PSNR, wall-clock encode seconds as `inr encode --json` reports them
# (fitting, rate control, quantization-aware fine-tuning, coding).
# Usage: [BPP=0.25] [PRESETS="small medium"] [BASES="default none"] [STEPS="125 250 500 1000 2000"] \
#        scripts/time_curve.sh IMAGE_DIR OUT_CSV [THREADS]
# Writes image,preset,base,steps,target_bpp,bpp,psnr_db,encode_s. Rows are appended as they
# finish, so an interrupted run keeps what it measured.
set -euo pipefail
DIR=${1:?image directory}
OUT=${2:?output CSV}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
BPP=${BPP:-0.25}
PRESETS=${PRESETS:-small medium}
BASES=${BASES:-default none}
STEPS=${STEPS:-125 250 500 1000 2000}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$(dirname "$OUT")"
echo "image,preset,base,steps,target_bpp,bpp,psnr_db,encode_s" > "$OUT"
for png in "$DIR"/*.png; do
  img=$(basename "$png" .png)
  for p in $PRESETS; do
    for b in $BASES; do
      for s in $STEPS; do
        enc=$("$INR" --json --threads "$THREADS" encode "$png" -o "$TMP/x.inr" --force --mode weights \
          --preset "$p" --base "$b" --steps "$s" --bpp "$BPP")
        python3 - "$img" "$p" "$b" "$s" "$BPP" "$enc" >> "$OUT" <<'PY'
import json, sys
img, p, b, s, target, enc = sys.argv[1:7]
e = json.loads(enc)
print("%s,%s,%s,%s,%s,%.4f,%.3f,%.1f" % (img, p, b, s, target, e["bpp"], e["psnr"], e["time_s"]))
PY
      done
    done
  done
done
