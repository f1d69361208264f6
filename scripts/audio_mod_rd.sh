#!/usr/bin/env bash
# Audio modulation mode against the windowed weight mode on held-out audio (issue 7).
# Only three clips exist, so every clip is cut in time: the first $TRAIN_FRAC (default 2/3)
# trains an audio modulation base (`inr meta-train --modality audio --mode modulations`,
# settings below, override with META_FLAGS), and the remaining part, never seen in training,
# is encoded
#   - in modulation mode at the latent steps $STEPS (default "0.125 0.25 0.5 1"), and
#   - in weight mode with the presets $PRESETS (default "tiny small medium"), random start.
# Usage: [TRAIN_FRAC=0.6667] [META_FLAGS=...] scripts/audio_mod_rd.sh [AUDIO_DIR] [OUT_DIR] [THREADS]
# Writes OUT_DIR/audio_mod_rd.csv (clip,mode,setting,kbps,psnr_db,snr_db,encode_s_per_s) and
# OUT_DIR/audio-mod-heldout.inrb (the base trained on the first parts).
set -euo pipefail
DIR=${1:-/work/shared/data/audio}
OUT=${2:-bench-results/audio/modulations}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
FRAC=${TRAIN_FRAC:-0.6667}
STEPS=${STEPS:-0.125 0.25 0.5 1}
PRESETS=${PRESETS:-tiny small medium}
META_FLAGS=${META_FLAGS:---iterations 300 --tasks 4 --inner-steps 20 --cell 32 --latent-dim 32}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT" "$TMP/train" "$TMP/test"
python3 "$(dirname "$0")/split_clips.py" "$DIR" "$TMP" "$FRAC"
base="$OUT/audio-mod-heldout.inrb"
start=$(date +%s)
# shellcheck disable=SC2086
"$INR" --quiet --threads "$THREADS" meta-train --modality audio --mode modulations "$TMP/train" \
  -o "$TMP/base.inrb" $META_FLAGS
echo "base trained in $(( $(date +%s) - start )) s with: $META_FLAGS"
mv "$TMP/base.inrb" "$base"
csv="$OUT/audio_mod_rd.csv"
echo "clip,mode,setting,kbps,psnr_db,snr_db,encode_s_per_s" > "$csv"
row() {
  python3 - "$1" "$2" "$3" "$4" >> "$csv" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print("%s,%s,%s,%.3f,%.3f,%.3f,%.3f" % (sys.argv[2], sys.argv[3], sys.argv[4], d["kbps"],
      d["psnr"], d["snr"], d["encode_s_per_audio_s"]))
PY
}
for wav in "$TMP/test"/*.wav; do
  clip=$(basename "$wav" .wav)
  for q in $STEPS; do
    row "$("$INR" --json --threads "$THREADS" encode "$wav" -o "$TMP/m.inr" --mode modulations \
      --base "$base" --latent-step "$q" --force)" "$clip" modulations "$q"
  done
  for p in $PRESETS; do
    row "$("$INR" --json --threads "$THREADS" encode "$wav" -o "$TMP/w.inr" --mode weights --preset "$p" \
      --base none --force)" "$clip" weights "$p"
  done
done
cat "$csv"
