#!/usr/bin/env bash
# Audio rate-distortion sweep: every preset on every WAV clip of a directory.
# Usage: scripts/audio_rd.sh [AUDIO_DIR] [OUT_CSV] [THREADS]
# Writes clip,preset,bytes,kbps,psnr_db,snr_db,encode_s,duration_s,encode_s_per_s,decode_s.
# PSNR maps the waveform to [0,1] (COIN++ convention); kbps comes from the real file size.
set -euo pipefail
DIR=${1:-/work/shared/data/audio}
OUT=${2:-bench-results/audio/audio_rd.csv}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "clip,preset,bytes,kbps,psnr_db,snr_db,encode_s,duration_s,encode_s_per_s,decode_s" > "$OUT"
for wav in "$DIR"/*.wav; do
  clip=$(basename "$wav" .wav)
  for preset in tiny small medium large huge; do
    enc=$("$INR" --json --threads "$THREADS" encode "$wav" -o "$TMP/$clip.inr" --preset "$preset" --force)
    t0=$(date +%s.%N)
    "$INR" --quiet --threads "$THREADS" decode "$TMP/$clip.inr" -o "$TMP/$clip.wav" --force
    t1=$(date +%s.%N)
    python3 - "$enc" "$clip" "$preset" "$t0" "$t1" >> "$OUT" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print("%s,%s,%d,%.3f,%.3f,%.3f,%.2f,%.3f,%.3f,%.3f" % (sys.argv[2], sys.argv[3], d["bytes"], d["kbps"],
      d["psnr"], d["snr"], d["time_s"], d["duration_s"], d["encode_s_per_audio_s"],
      float(sys.argv[5]) - float(sys.argv[4])))
PY
  done
done
cat "$OUT"
