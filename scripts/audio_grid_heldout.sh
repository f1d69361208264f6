#!/usr/bin/env bash
# Held-out evaluation of the audio grid base (issue 7). Only three clips exist, all in the
# embedded audio grid base's training set, so every clip is split in time: the first
# $TRAIN_FRAC (default 2/3) trains a base with the same command as bases/audio-grid.inrb
# (bases/README.md), and the remaining part, never seen in training, is encoded in grid mode
# at every preset from that base and from random weights (`--base none`).
# Usage: [TRAIN_FRAC=0.6667] scripts/audio_grid_heldout.sh [AUDIO_DIR] [OUT_DIR] [THREADS]
# Writes OUT_DIR/heldout.csv (clip,preset,start,kbps,psnr_db,snr_db,encode_s_per_s) and
# OUT_DIR/heldout-base.inrb (the base trained on the first parts).
set -euo pipefail
DIR=${1:-/work/shared/data/audio}
OUT=${2:-bench-results/audio/grid-heldout}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
FRAC=${TRAIN_FRAC:-0.6667}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
python3 "$(dirname "$0")/split_clips.py" "$DIR" "$TMP" "$FRAC"
base="$OUT/heldout-base.inrb"
"$INR" --quiet --threads "$THREADS" meta-train --modality audio --mode grid "$TMP/train" \
  -o "$TMP/base.inrb"
mv "$TMP/base.inrb" "$base"
echo "clip,preset,start,kbps,psnr_db,snr_db,encode_s_per_s" > "$OUT/heldout.csv"
for wav in "$TMP/test"/*.wav; do
  clip=$(basename "$wav" .wav)
  for preset in tiny small medium large huge; do
    for start in none "$base"; do
      enc=$("$INR" --json --threads "$THREADS" encode "$wav" -o "$TMP/$clip.inr" --mode grid \
        --preset "$preset" --base "$start" --force)
      python3 "$(dirname "$0")/audio_row.py" "$enc" "$clip" "$preset" "$(basename "$start")" >> "$OUT/heldout.csv"
    done
  done
done
cat "$OUT/heldout.csv"
