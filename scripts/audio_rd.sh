#!/usr/bin/env bash
# Audio rate-distortion sweep: every preset on every WAV clip of a directory, with each base
# choice of $BASES (default: "default none", i.e. the embedded audio base where one matches the
# preset, and random initialisation).
# Usage: [BASES="default none"] [PRESETS="tiny small medium large huge"] \
#        scripts/audio_rd.sh [AUDIO_DIR] [OUT_CSV] [THREADS]
# Writes clip,preset,bytes,kbps,psnr_db,snr_db,encode_s,duration_s,encode_s_per_s,decode_s,base
# (base = the id of the base the file was coded from, or "none").
# PSNR maps the waveform to [0,1] (COIN++ convention); kbps comes from the real file size.
set -euo pipefail
DIR=${1:-/work/shared/data/audio}
OUT=${2:-bench-results/audio/audio_rd.csv}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
BASES=${BASES:-default none}
PRESETS=${PRESETS:-tiny small medium large huge}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "clip,preset,bytes,kbps,psnr_db,snr_db,encode_s,duration_s,encode_s_per_s,decode_s,base" > "$OUT"
for wav in "$DIR"/*.wav; do
  clip=$(basename "$wav" .wav)
  for preset in $PRESETS; do
    for base in $BASES; do
      enc=$("$INR" --json --threads "$THREADS" encode "$wav" -o "$TMP/$clip.inr" --mode weights --preset "$preset" --base "$base" --force)
      # Skip a "default" run that used no base (identical to --base none).
      if [ "$base" = default ] && [[ "$BASES" == *none* ]] && [[ "$enc" == *'"base":null'* ]]; then
        continue
      fi
      t0=$(date +%s.%N)
      "$INR" --quiet --threads "$THREADS" decode "$TMP/$clip.inr" -o "$TMP/$clip.wav" --force
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
