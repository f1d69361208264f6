#!/usr/bin/env bash
# Held-out evaluation of the meta-learned audio base (issue 7). Only three clips exist, all in
# the embedded base's training set, so this splits every clip in time: the first $TRAIN_FRAC
# (default 2/3) of each clip trains a base with the same command and settings as
# bases/audio-medium.inrb (bases/README.md), and the remaining part, never seen in training,
# is encoded with the medium preset from that base and from random weights.
# Usage: [TRAIN_FRAC=0.6667] scripts/audio_heldout.sh [AUDIO_DIR] [OUT_DIR] [THREADS]
# Writes OUT_DIR/heldout.csv (clip,start,kbps,psnr_db,snr_db,encode_s_per_s,base) and
# OUT_DIR/heldout-base.inrb (the base trained on the first parts).
set -euo pipefail
DIR=${1:-/work/shared/data/audio}
OUT=${2:-bench-results/audio/heldout}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
FRAC=${TRAIN_FRAC:-0.6667}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT" "$TMP/train" "$TMP/test"
python3 "$(dirname "$0")/split_clips.py" "$DIR" "$TMP" "$FRAC"
base="$OUT/heldout-base.inrb"
"$INR" --quiet --threads "$THREADS" meta-train --modality audio "$TMP/train" -o "$TMP/base.inrb" \
  --preset medium --iterations 2000 --tasks 16 --checkpoint-every 500
mv "$TMP/base.inrb" "$base"
echo "clip,start,kbps,psnr_db,snr_db,encode_s_per_s,base" > "$OUT/heldout.csv"
for wav in "$TMP/test"/*.wav; do
  clip=$(basename "$wav" .wav)
  for start in none "$base"; do
    enc=$("$INR" --json --threads "$THREADS" encode "$wav" -o "$TMP/$clip.inr" --mode weights --base "$start" --force)
    python3 - "$enc" "$clip" "$(basename "$start")" >> "$OUT/heldout.csv" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print("%s,%s,%.3f,%.3f,%.3f,%.3f,%s" % (sys.argv[2], sys.argv[3], d["kbps"], d["psnr"], d["snr"],
      d["encode_s_per_audio_s"], d.get("base") or "none"))
PY
  done
done
cat "$OUT/heldout.csv"
