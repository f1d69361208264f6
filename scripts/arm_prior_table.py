#!/usr/bin/env python3
"""Prints the prior-count table of the §5.11 prior models (codec-spec §5.11.1, flag bit 13).

Scale context s (0..23) stands for ln b in [-3 + s/4, -3 + (s+1)/4): its centre is
b_s = exp(-3 + (s + 1/2)/4). Fraction class c (0..5) stands for a mean offset |f|/256 in
[c/12, (c+1)/12): its centre is mu_c = (2c + 1)/24. The prior is S = 2048 times the masses of
the unit cells around 0, 1 and -1 of a Laplace of mean mu_c and scale b_s (A, B, C), and the
ratio of two further cells, Q = exp(-1/b_s) in units of 2^-16 (the tails of a Laplace are
geometric). The table is normative (it is printed in the spec and in `src/entropy.rs`); this
script only documents where the numbers come from. Run: python3 scripts/arm_prior_table.py
"""
import math

S = 2048


def cdf(x, mu, b):
    if x < mu:
        return 0.5 * math.exp((x - mu) / b)
    return 1.0 - 0.5 * math.exp(-(x - mu) / b)


def mass(r, mu, b):
    return cdf(r + 0.5, mu, b) - cdf(r - 0.5, mu, b)


def table():
    rows = []
    for s in range(24):
        b = math.exp(-3.0 + (s + 0.5) / 4.0)
        q = min(65535, round(65536.0 * math.exp(-1.0 / b)))
        cells = []
        for c in range(6):
            mu = (2 * c + 1) / 24.0
            cells.append(tuple(round(S * mass(r, mu, b)) for r in (0, 1, -1)))
        rows.append((q, cells))
    return rows


if __name__ == "__main__":
    for s, (q, cells) in enumerate(table()):
        print(f"    ({q}, [" + ", ".join(f"[{a}, {b}, {c}]" for a, b, c in cells) + f"]), // s = {s}")
