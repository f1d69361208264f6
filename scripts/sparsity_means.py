#!/usr/bin/env python3
"""Means of scripts/sparsity_bench.sh CSVs (issue 4's table), per method and target rate.

Usage: scripts/sparsity_means.py CSV[@TARGET] [CSV[@TARGET] ...]

Rows of every CSV are pooled (e.g. kodim01-12 and kodim13-16 runs of the same settings); a
later row for the same image, target and method replaces an earlier one. For each (method,
target) it prints the number of images, mean bpp, mean PSNR, mean encode seconds, the density
range, the worst rate deviation from the target, and the mean PSNR against COIN's published
Kodak figure at that rate (../shared/anchors.md: 24.2 dB at 0.125, 25.8 at 0.25, 27.8 at 0.5
bpp; all 24 images). CSVs of the early runs have no target_bpp or density column: name their
target as CSV@TARGET. Standard library only.
"""
import csv
import sys

COIN = {0.125: 24.2, 0.25: 25.8, 0.5: 27.8}


def main(paths):
    if not paths:
        sys.exit(__doc__)
    rows = {}
    for arg in paths:
        path, _, target = arg.partition("@")
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                r.setdefault("target_bpp", target)
                if not r["target_bpp"]:
                    sys.exit("%s has no target_bpp column: name it as %s@TARGET" % (path, path))
                rows[(r["image"], float(r["target_bpp"]), r["method"])] = r
    groups = {}
    for (_, target, method), r in rows.items():
        groups.setdefault((method, target), []).append(r)
    print("method     target  images  bpp     PSNR   encode_s  density      worst_rate  vs_COIN")
    for (method, target), rs in sorted(groups.items()):
        n = len(rs)
        bpp = sum(float(r["bpp"]) for r in rs) / n
        psnr = sum(float(r["psnr_db"]) for r in rs) / n
        secs = sum(float(r["encode_s"]) for r in rs) / n
        dens = [float(r["density"]) for r in rs if r.get("density")]
        dens_s = "%.2f-%.2f" % (min(dens), max(dens)) if len(dens) == n else "-"
        worst = max((float(r["bpp"]) / target - 1.0 for r in rs), key=abs)
        coin = COIN.get(target)
        vs = "%+.2f dB" % (psnr - coin) if coin is not None else "-"
        print("%-10s %-7g %-7d %.4f  %.2f  %-9.1f %-12s %+6.1f %%    %s"
              % (method, target, n, bpp, psnr, secs, dens_s, 100 * worst, vs))


if __name__ == "__main__":
    main(sys.argv[1:])
