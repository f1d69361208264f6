#!/usr/bin/env bash
# Stereo clips in the audio grid mode: random start against a mono base's start (its output
# layer copied to both channels). All shared clips are mono, so the stereo clips are made from
# them (scripts/stereo_from_mono.py: a delayed, quieter copy on the right, or two unrelated
# clips), from the parts of the clips that the held-out base never saw: every clip is cut as in
# scripts/audio_grid_heldout.sh (first 2/3 train, last 1/3 test) and the stereo clips are made
# from the test parts. Starts: `none` (random weights), the held-out mono base
# (bench-results/audio/grid-heldout/heldout-base.inrb, trained on the first parts only) and the
# embedded mono base (`default`; trained on the whole clips, so in-sample here).
# Usage: scripts/stereo_start.sh [AUDIO_DIR] [OUT_DIR] [THREADS]
# Writes OUT_DIR/stereo_start.csv (clip,preset,start,kbps,psnr_db,snr_db,encode_s_per_s).
set -euo pipefail
DIR=${1:-/work/shared/data/audio}
OUT=${2:-bench-results/audio/stereo-start}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
HELDOUT=${HELDOUT:-bench-results/audio/grid-heldout/heldout-base.inrb}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
python3 "$(dirname "$0")/split_clips.py" "$DIR" "$TMP" 0.6667
python3 "$(dirname "$0")/stereo_from_mono.py" "$TMP/test" "$TMP/stereo"
echo "clip,preset,start,kbps,psnr_db,snr_db,encode_s_per_s" > "$OUT/stereo_start.csv"
for wav in "$TMP/stereo"/*.wav; do
  clip=$(basename "$wav" .wav)
  for preset in tiny small medium large huge; do
    for start in none "$HELDOUT" default; do
      args=(--base "$start")
      [ "$start" = default ] && args=()
      enc=$("$INR" --json --threads "$THREADS" encode "$wav" -o "$TMP/$clip.inr" --mode grid \
        --preset "$preset" "${args[@]}" --force)
      python3 "$(dirname "$0")/audio_row.py" "$enc" "$clip" "$preset" "$(basename "$start" .inrb)" >> "$OUT/stereo_start.csv"
    done
  done
done
cat "$OUT/stereo_start.csv"
