#!/usr/bin/env python3
"""Summarise scripts/small_images_shared.sh's CSV: per crop size and preset, the mean change of
`MSE + λ·bpp` from the per-image grid synthesis to the shared one (negative: the shared one is
better), how many of the crops it won, and the mean encode seconds of each."""
import collections
import csv
import sys

LAMBDA = {"tiny": 0.03, "small": 0.012, "medium": 0.005, "large": 0.002, "huge": 0.0008}
rows = list(csv.DictReader(open(sys.argv[1])))
by = {(r["image"], int(r["size"]), r["preset"], r["mode"]): r for r in rows}
change, wins, secs = collections.defaultdict(list), collections.Counter(), collections.defaultdict(list)
for (img, size, preset, mode), r in by.items():
    if mode != "grid":
        continue
    o = by[(img, size, preset, "grid-shared")]
    cost = lambda r: 10 ** (-float(r["psnr_db"]) / 10) + LAMBDA[preset] * float(r["bpp"])
    c = (cost(o) / cost(r) - 1) * 100
    change[(size, preset)].append(c)
    wins[(size, preset)] += c < 0
    secs[size].append((float(r["encode_s"]), float(o["encode_s"])))
presets = [p for p in LAMBDA if any(k[1] == p for k in change)]
print("| crop | " + " | ".join(presets) + " | s grid / shared |")
print("|---" * (len(presets) + 2) + "|")
for size in sorted({k[0] for k in change}):
    cells = []
    for p in presets:
        v = change[(size, p)]
        cells.append("%+.1f %% (%d of %d)" % (sum(v) / len(v), wins[(size, p)], len(v)))
    t = secs[size]
    print("| %dx%d | %s | %.2f / %.2f |" % (size, size, " | ".join(cells),
          sum(a for a, _ in t) / len(t), sum(b for _, b in t) / len(t)))
