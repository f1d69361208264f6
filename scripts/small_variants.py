#!/usr/bin/env python3
"""Centre crops of an 8-bit RGB PNG in three variants (stdlib only), for the measurements of
small gray and alpha images (docs/benchmarks.md, "Small gray and alpha images"). Usage:

    scripts/small_variants.py SRC.png OUTDIR PREFIX SIZE [SIZE ...]

writes OUTDIR/PREFIX_SIZE.png (RGB), PREFIX_SIZE_g.png (gray: (299 R + 587 G + 114 B) / 1000,
rounded) and PREFIX_SIZE_a.png (RGBA: scripts/alpha_disc.py's disc, `keep`, a 3-pixel ramp).
"""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from alpha_disc import read_png, write_png, disc

src, outdir, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
w, h, rgb = read_png(src)
for n in map(int, sys.argv[4:]):
    x0, y0 = (w - n) // 2, (h - n) // 2
    crop = bytearray()
    for y in range(y0, y0 + n):
        crop += rgb[(y * w + x0) * 3:(y * w + x0 + n) * 3]
    base = os.path.join(outdir, f"{prefix}_{n}")
    write_png(base + ".png", n, n, 2, crop, 3)
    gray = bytearray((crop[i] * 299 + crop[i + 1] * 587 + crop[i + 2] * 114 + 500) // 1000
                     for i in range(0, len(crop), 3))
    write_png(base + "_g.png", n, n, 0, gray, 1)
    write_png(base + "_a.png", n, n, 6, disc(n, n, crop, "keep", 3.0), 4)
