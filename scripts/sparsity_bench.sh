#!/usr/bin/env bash
# Sparsity / weight-sharing benchmark (issue 4): on every PNG of a directory, at each target
# rate of $BPPS, weight mode with
#   dense      --preset $DENSE --bpp B --density 1   (a smaller dense network, uniform
#                                                    quantization, steps moved to the rate)
#   magnitude  --preset $SPARSE --bpp B              (a wider network; rate control picks the
#                                                    density; gradual magnitude pruning)
#   l0         --preset $SPARSE --bpp B --prune-method l0   (same, hard-concrete L0 gates)
#   kmeans     --preset $SPARSE --bpp B --density D --kmeans $K   (D = the density the
#                                                    magnitude run chose; rate control picks the
#                                                    number of centroids, at most K)
#   seeded     --preset $SPARSE --bpp B --prune-method seeded   (a fixed pseudo-random
#                                                    support, no mask bits, codec-spec §4.6.1)
# all with --steps $STEPS --base none (equal fitting steps). Real file sizes, decoded PSNR.
# Since stop 45 --bpp from a random start picks the width from the byte budget
# (codec::width_for_rate), so the presets then set only the steps' minibatch; WIDTH=N passes
# --width N to every method (WIDTH=60 with the default presets gives the earlier 10x60 rows,
# but DENSE=small then needs its own run with WIDTH=32).
# DENSITY_CSV=FILE (with METHODS without magnitude) takes the k-means density from an earlier
# run's magnitude rows instead of rerunning magnitude.
# Usage: [BPPS="0.25"] [METHODS="dense magnitude l0 kmeans"] [DENSE=small] [SPARSE=large] [STEPS=1000] [K=256] [PRUNE_SCOPE=per-layer] [WIDTH=N] \
#        scripts/sparsity_bench.sh IMAGE_DIR OUT_CSV [THREADS]
# Writes image,target_bpp,method,bpp,psnr_db,encode_s,density,kmeans (kmeans: the largest
# codebook in the file; density: non-zero
# fraction of W_1..W_D as `inr info` reports it).
set -euo pipefail
DIR=${1:?image directory}
OUT=${2:?output CSV}
THREADS=${3:-2}
INR=${INR:-target/release/inr}
BPPS=${BPPS:-0.25}
DENSE=${DENSE:-small}
SPARSE=${SPARSE:-large}
STEPS=${STEPS:-1000}
K=${K:-256}
METHODS=${METHODS:-dense magnitude l0 kmeans seeded} # kmeans also runs magnitude (uses its density)
SCOPE=${PRUNE_SCOPE:-per-layer}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$(dirname "$OUT")"
echo "image,target_bpp,method,bpp,psnr_db,encode_s,density,kmeans" > "$OUT"
row() { # image target method kmeans file json
  local info
  info=$("$INR" --json info "$5")
  python3 - "$1" "$2" "$3" "$4" "$6" "$info" >> "$OUT" <<'PY'
import json, sys
img, target, method, k, enc, info = sys.argv[1:7]
e, i = json.loads(enc), json.loads(info)
if k != "-":  # the largest codebook rate control chose (at most K)
    k = str(max(i["info"]["codebooks"]["sizes"]))
print("%s,%s,%s,%.4f,%.3f,%.1f,%.4f,%s" % (img, target, method, e["bpp"], e["psnr"], e["time_s"],
      i["weights"]["hidden_density"], k))
PY
}
density_of() { # file -> non-zero fraction of the hidden matrices W_1..W_D
  "$INR" --json info "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["weights"]["hidden_density"])'
}
for png in "$DIR"/*.png; do
  img=$(basename "$png" .png)
  for b in $BPPS; do
    common=(--json --threads "$THREADS" encode "$png" --steps "$STEPS" --base none --prune-scope "$SCOPE" --force ${WIDTH:+--width "$WIDTH"} --preset)
    f="$TMP/$img.inr"
    has() { [[ " $METHODS " == *" $1 "* ]]; }
    if has dense; then
      enc=$("$INR" "${common[@]}" "$DENSE" -o "$f" --bpp "$b" --density 1); row "$img" "$b" dense - "$f" "$enc"
    fi
    if [[ -n "${DENSITY_CSV:-}" ]] && ! has magnitude; then
      # k-means at the density an earlier magnitude run chose (its CSV), without rerunning it
      d=$(awk -F, -v i="$img" -v t="$b" '$1 == i && $2 == t && $3 == "magnitude" {print $7}' "$DENSITY_CSV")
      [[ -n "$d" ]] || { echo "no magnitude row for $img at $b in $DENSITY_CSV" >&2; exit 1; }
    elif has magnitude || has kmeans; then
      enc=$("$INR" "${common[@]}" "$SPARSE" -o "$f" --bpp "$b"); row "$img" "$b" magnitude - "$f" "$enc"
      d=$(density_of "$f")
    fi
    if has l0; then
      enc=$("$INR" "${common[@]}" "$SPARSE" -o "$f" --bpp "$b" --prune-method l0); row "$img" "$b" l0 - "$f" "$enc"
    fi
    if has kmeans; then
      enc=$("$INR" "${common[@]}" "$SPARSE" -o "$f" --bpp "$b" --density "$d" --kmeans "$K"); row "$img" "$b" kmeans "$K" "$f" "$enc"
    fi
    if has seeded; then
      enc=$("$INR" "${common[@]}" "$SPARSE" -o "$f" --bpp "$b" --prune-method seeded); row "$img" "$b" seeded - "$f" "$enc"
    fi
    echo "$img $b done" >&2
  done
done
