#!/bin/bash
# Small images, RGB, gray and with alpha: the image's own synthesis (`--mode grid`, 1,000
# steps) against the embedded RGB shared synthesis with an output layer of the image's channel
# count (`--mode grid-shared --steps S`, codec-spec §13.8), and the file `inr encode` keeps
# without --mode (which tries the shared synthesis on images below 320x320 pixels), on centre
# crops of Kodak images. docs/benchmarks.md, "Small gray and alpha images (stop 53)".
#
#   # the report: kodim13-16 (unseen by every base), the try's 500 steps
#   INR=target/release/inr OUT=bench-results/small-channels-stop53 VARIANTS="rgb g a" \
#     scripts/small_channels.sh
#   # where SHARED_TRY_STEPS comes from: training images, three budgets, no --mode run
#   INR=target/release/inr OUT=bench-results/small-channels-steps-stop53 IMAGES="03 05 07 11" \
#     SIZES="64 128 256" VARIANTS="rgb g a" PRESETS="small medium" STEPS="200 500 1000" AUTO=0 \
#     scripts/small_channels.sh
#
# IMG=DIR keeps the test images there (by default they are made in a temporary folder).
set -euo pipefail
INR=${INR:-target/release/inr}
OUT=${OUT:-bench-results/small-channels-stop53}
KODAK=${KODAK:-../shared/data/images/kodak}
IMAGES=${IMAGES:-"13 14 15 16"}
SIZES=${SIZES:-"64 128"}
VARIANTS=${VARIANTS:-"g a"}
PRESETS=${PRESETS:-"small medium large"}
STEPS=${STEPS:-"500"}
AUTO=${AUTO:-1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
IMG=${IMG:-$tmp}
mkdir -p "$OUT" "$IMG"
for i in $IMAGES; do
  # shellcheck disable=SC2086
  python3 scripts/small_variants.py "$KODAK/kodim$i.png" "$IMG" "kodim$i" $SIZES
done
row() { # image variant size preset run ARGS...: one encode, one CSV row
  local i=$1 v=$2 n=$3 p=$4 run=$5 f
  shift 5
  f="$IMG/kodim${i}_${n}.png"
  [ "$v" = rgb ] || f="$IMG/kodim${i}_${n}_$v.png"
  "$INR" --threads 2 --json encode "$f" -o "$tmp/x.inr" --preset "$p" --force "$@" |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('kodim$i,$v,$n,$p,$run,%s,%d,%.3f,%.4f,%.2f' % (d['mode'], d['bytes'], d['psnr'], d['bpp'], d['time_s']))"
}
echo "image,variant,size,preset,run,mode,bytes,psnr,bpp,seconds" > "$OUT/results.csv"
for n in $SIZES; do
  for v in $VARIANTS; do
    for i in $IMAGES; do
      for p in $PRESETS; do
        row "$i" "$v" "$n" "$p" own --mode grid >> "$OUT/results.csv"
        for s in $STEPS; do
          row "$i" "$v" "$n" "$p" "shared$s" --mode grid-shared --steps "$s" >> "$OUT/results.csv"
        done
        if [ "$AUTO" = 1 ]; then
          row "$i" "$v" "$n" "$p" auto >> "$OUT/results.csv"
        fi
      done
    done
  done
done
# Means over the images per variant, size and preset: each run's bytes, PSNR and seconds, and
# the mean change of `MSE + λ·bpp` against the image's own synthesis, for each run and for the
# better of the own and each shared file; for `auto`, how often it kept the shared file.
python3 - "$OUT/results.csv" <<'PY' | tee "$OUT/summary.txt"
import csv, collections, sys
lam = {"tiny": 0.03, "small": 0.012, "medium": 0.005, "large": 0.002, "huge": 0.0008}
rows = list(csv.DictReader(open(sys.argv[1])))
runs = list(dict.fromkeys(r["run"] for r in rows))
by = {(r["image"], r["variant"], r["size"], r["preset"], r["run"]): r for r in rows}
cost = lambda r: 10 ** (-float(r["psnr"]) / 10) + lam[r["preset"]] * float(r["bpp"])
groups = collections.defaultdict(list)
for (img, v, n, p, run) in by:
    if run == "own":
        groups[(v, int(n), p)].append(img)
for (v, n, p) in sorted(groups, key=lambda k: (k[0], k[1], list(lam).index(k[2]))):
    imgs = groups[(v, n, p)]
    parts = []
    for run in runs:
        rs = [(by[(i, v, str(n), p, run)], by[(i, v, str(n), p, "own")]) for i in imgs]
        m = lambda f: sum(f(r) for r, _ in rs) / len(rs)
        text = (f"{run} {m(lambda r: int(r['bytes'])):.0f} B {m(lambda r: float(r['psnr'])):.2f} dB "
                f"{m(lambda r: float(r['seconds'])):.2f} s")
        if run != "own":
            ch = sum(cost(r) / cost(o) - 1 for r, o in rs) / len(rs) * 100
            best = sum(min(cost(r), cost(o)) / cost(o) - 1 for r, o in rs) / len(rs) * 100
            text += f" {ch:+.1f} %"
            if run.startswith("shared"):
                text += f" (better of two {best:+.1f} %)"
            else:
                text += f" (shared kept {sum(r['mode'] == 'grid-shared' for r, _ in rs)} of {len(rs)})"
        parts.append(text)
    print(f"{v} {n}x{n} {p}: " + " | ".join(parts))
PY
