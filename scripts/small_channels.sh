#!/bin/bash
# Small gray and alpha images: the image's own synthesis (`--mode grid`) against the embedded
# RGB shared synthesis with an output layer of the image's channel count (`--mode grid-shared`,
# codec-spec §13.8), at three presets, on centre crops of kodim13-16 (unseen by every base).
# docs/benchmarks.md, "Small gray and alpha images (stop 53)".
#
#   INR=target/release/inr OUT=bench-results/small-channels-stop53 scripts/small_channels.sh
#
# (IMG=DIR keeps the test images there; by default they are made in a temporary folder.)
set -euo pipefail
INR=${INR:-target/release/inr}
OUT=${OUT:-bench-results/small-channels-stop53}
KODAK=${KODAK:-../shared/data/images/kodak}
SIZES=${SIZES:-"64 128"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
IMG=${IMG:-$tmp}
mkdir -p "$OUT" "$IMG"
for i in 13 14 15 16; do
  # shellcheck disable=SC2086
  python3 scripts/small_variants.py "$KODAK/kodim$i.png" "$IMG" "kodim$i" $SIZES
done
echo "image,variant,size,preset,mode,bytes,psnr,bpp,seconds" > "$OUT/results.csv"
for n in $SIZES; do
  for v in g a; do
    for i in 13 14 15 16; do
      for p in small medium large; do
        for m in grid grid-shared; do
          "$INR" --threads 2 --json encode "$IMG/kodim${i}_${n}_$v.png" -o "$tmp/x.inr" \
            --mode $m --preset $p --force |
            python3 -c "import json,sys; d=json.load(sys.stdin); print('kodim$i,$v,$n,$p,$m,%d,%.3f,%.4f,%.2f' % (d['bytes'], d['psnr'], d['bpp'], d['time_s']))" \
            >> "$OUT/results.csv"
        done
      done
    done
  done
done
# Per variant, size and preset: the means of each mode, and of the file `inr encode` keeps
# without --mode (the lower MSE + λ·bpp).
python3 - "$OUT/results.csv" <<'PY' | tee "$OUT/summary.txt"
import csv, collections, sys
lam = {"small": 0.012, "medium": 0.005, "large": 0.002}
rows = list(csv.DictReader(open(sys.argv[1])))
by = {(r["image"], r["variant"], r["size"], r["preset"], r["mode"]): r for r in rows}
groups = collections.defaultdict(list)
for (img, v, n, p, m), r in by.items():
    if m == "grid":
        groups[(v, int(n), p)].append((r, by[(img, v, n, p, "grid-shared")]))
cost = lambda r, p: 10 ** (-float(r["psnr"]) / 10) + lam[p] * float(r["bpp"])
print("variant size preset | own bytes dB s | shared bytes dB s | kept bytes dB | cost change | shared kept")
for (v, n, p) in sorted(groups, key=lambda k: (k[0], k[1], list(lam).index(k[2]))):
    g = groups[(v, n, p)]
    mean = lambda f: sum(f(x) for x in g) / len(g)
    kept = [s if cost(s, p) < cost(o, p) else o for o, s in g]
    change = mean(lambda x: min(cost(x[0], p), cost(x[1], p)) / cost(x[0], p) - 1) * 100
    print(f"{v} {n} {p} | {mean(lambda x: int(x[0]['bytes'])):.0f} {mean(lambda x: float(x[0]['psnr'])):.2f} "
          f"{mean(lambda x: float(x[0]['seconds'])):.2f} | {mean(lambda x: int(x[1]['bytes'])):.0f} "
          f"{mean(lambda x: float(x[1]['psnr'])):.2f} {mean(lambda x: float(x[1]['seconds'])):.2f} | "
          f"{sum(int(k['bytes']) for k in kept) / len(g):.0f} {sum(float(k['psnr']) for k in kept) / len(g):.2f} | "
          f"{change:+.1f} % | {sum(k['mode'] == 'grid-shared' for k in kept)} of {len(g)}")
PY
