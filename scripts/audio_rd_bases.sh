#!/usr/bin/env bash
# Audio RD with one (non-embedded) base per preset: for every clip and preset, --base none vs
# --base $BASE_DIR/audio-$preset.inrb (the medium preset uses the embedded base, "default").
# Usage: [BASE_DIR=bench-results/audio/bases] scripts/audio_rd_bases.sh [AUDIO_DIR] [OUT_CSV] [THREADS]
# Columns as scripts/audio_rd.sh.
set -euo pipefail
DIR=${1:-/work/shared/data/audio}
OUT=${2:-bench-results/audio/audio_rd_bases.csv}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
BASE_DIR=${BASE_DIR:-bench-results/audio/bases}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "clip,preset,bytes,kbps,psnr_db,snr_db,encode_s,duration_s,encode_s_per_s,decode_s,base" > "$OUT"
for wav in "$DIR"/*.wav; do
  clip=$(basename "$wav" .wav)
  for preset in tiny small medium large huge; do
    if [ "$preset" = medium ]; then b=default; else b="$BASE_DIR/audio-$preset.inrb"; fi
    for base in none "$b"; do
      extra=()
      if [ "$base" != none ] && [ "$base" != default ]; then extra=(--base "$base"); fi
      enc=$("$INR" --json --threads "$THREADS" encode "$wav" -o "$TMP/$clip.inr" --mode weights --preset "$preset" --base "$base" --force)
      t0=$(date +%s.%N)
      "$INR" --quiet --threads "$THREADS" decode "$TMP/$clip.inr" -o "$TMP/$clip.wav" --force "${extra[@]}"
      t1=$(date +%s.%N)
      python3 - "$enc" "$clip" "$preset" "$t0" "$t1" >> "$OUT" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print("%s,%s,%d,%.3f,%.3f,%.3f,%.2f,%.3f,%.3f,%.3f,%s" % (sys.argv[2], sys.argv[3], d["bytes"], d["kbps"],
      d["psnr"], d["snr"], d["time_s"], d["duration_s"], d["encode_s_per_audio_s"],
      float(sys.argv[5]) - float(sys.argv[4]), d.get("base") or "none"))
PY
    done
  done
done
cat "$OUT"
