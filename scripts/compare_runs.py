#!/usr/bin/env python3
"""Compare two runs of scripts/small_channels.sh (its results.csv files), encoder before and
after a change: the mean change of each file's `MSE + λ·bpp` per variant, size, preset and run
(with the per-image changes), then the change of the better of the own and the shared file.

    scripts/compare_runs.py BEFORE/results.csv AFTER/results.csv

Used by docs/benchmarks.md, "Clamped outputs in the training loss (stop 54)".
"""
import collections
import csv
import sys

LAMBDA = {"tiny": 0.03, "small": 0.012, "medium": 0.005, "large": 0.002, "huge": 0.0008}


def load(path):
    return {(r["image"], r["variant"], r["size"], r["preset"], r["run"]): r
            for r in csv.DictReader(open(path))}


def cost(r):
    return 10 ** (-float(r["psnr"]) / 10) + LAMBDA[r["preset"]] * float(r["bpp"])


def main(before_path, after_path):
    a, b = load(before_path), load(after_path)
    cells = collections.defaultdict(list)
    for k in a:
        if k in b:
            cells[(k[1], int(k[2]), k[3], k[4])].append((cost(b[k]) / cost(a[k]) - 1) * 100)
    order = lambda k: (k[0], k[1], list(LAMBDA).index(k[2]), k[3])
    for key in sorted(cells, key=order):
        v = cells[key]
        print(*key, "%+.1f %%" % (sum(v) / len(v)), " ".join("%+.1f" % x for x in v))
    images = sorted({k[0] for k in a})
    for (variant, size, preset) in sorted({k[1:4] for k in a},
                                          key=lambda k: (k[0], int(k[1]), list(LAMBDA).index(k[2]))):
        changes = []
        for i in images:
            keys = [(i, variant, size, preset, run) for run in ("own", "shared500")]
            if all(k in a and k in b for k in keys):
                changes.append((min(cost(b[k]) for k in keys) / min(cost(a[k]) for k in keys) - 1) * 100)
        if changes:
            print("better of own and shared500", variant, size, preset,
                  "%+.1f %%" % (sum(changes) / len(changes)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
