#!/usr/bin/env python3
"""Refits grid_codec's PROBE_MAP.psnr (stop 61): a full 1,000-step fit's PSNR predicted from a
100-step probe's at the same lambda as `a(lambda) + B * p`, with one B for every lambda (least
squares on the deviations from each lambda's means), `a` the mean residual at each lambda,
then kept from falling as lambda falls (pool-adjacent-violators): the full fit's gain over the
probe does not shrink when it may spend more rate. Also prints the stop-33 map's error and
per-lambda free fits for comparison.

Usage: scripts/psnr_map_fit.py DIR
DIR holds probe.txt and full.txt written by DIR/run.sh (bench-results/probe-map-kodim01-12-stop61):
lines `probe|full kodimNN LAMBDA PSNR x dB  bpp y  bytes n  time t s`.
"""
import math
import sys

d = sys.argv[1] if len(sys.argv) > 1 else "."


def load(f):
    out = {}
    for line in open(f):
        w = line.split()
        out[(w[1], float(w[2]))] = (float(w[7]), float(w[4]))  # bpp, PSNR
    return out


P = load(d + "/probe.txt")
F = load(d + "/full.txt")
lams = sorted({k[1] for k in F}, reverse=True)
rows = {l: [(k[0], P[k][1], F[k][1]) for k in sorted(F) if k[1] == l and k in P] for l in lams}

STOP33 = [(0.01, 4.417, 0.868), (0.00366, 8.373, 0.758), (0.00135, 2.730, 0.940)]


def map_at(m, ll):
    ln = math.log
    if ll >= ln(m[0][0]):
        return m[0][1], m[0][2]
    if ll <= ln(m[-1][0]):
        return m[-1][1], m[-1][2]
    for w0, w1 in zip(m, m[1:]):
        l0, l1 = ln(w0[0]), ln(w1[0])
        if l1 <= ll <= l0:
            f = (l0 - ll) / (l0 - l1)
            return w0[1] + f * (w1[1] - w0[1]), w0[2] + f * (w1[2] - w0[2])


def rms(a, b, rs):
    return math.sqrt(sum((a + b * p - y) ** 2 for _, p, y in rs) / len(rs))


num = den = 0.0
for rs in rows.values():
    mp = sum(r[1] for r in rs) / len(rs)
    my = sum(r[2] for r in rs) / len(rs)
    num += sum((r[1] - mp) * (r[2] - my) for r in rs)
    den += sum((r[1] - mp) ** 2 for r in rs)
B = num / den
A = [sum(y - B * p for _, p, y in rows[l]) / len(rows[l]) for l in lams]


def pav(y):
    blocks = [[v, 1] for v in y]
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] > blocks[i + 1][0]:
            n = blocks[i][1] + blocks[i + 1][1]
            blocks[i] = [(blocks[i][0] * blocks[i][1] + blocks[i + 1][0] * blocks[i + 1][1]) / n, n]
            del blocks[i + 1]
            i = max(i - 1, 0)
        else:
            i += 1
    return [v for v, n in blocks for _ in range(n)]


M = pav(A)
print(f"B = {B:.3f}")
for l, a, m in zip(lams, A, M):
    rs = rows[l]
    n = len(rs)
    mp = sum(r[1] for r in rs) / n
    my = sum(r[2] for r in rs) / n
    bf = sum((r[1] - mp) * (r[2] - my) for r in rs) / sum((r[1] - mp) ** 2 for r in rs)
    af = my - bf * mp
    oa, ob = map_at(STOP33, math.log(l))
    bias = sum(oa + ob * p - y for _, p, y in rs) / n
    print(
        f"lambda {l}: n={n} full {my:.2f} dB probe {mp:.2f} dB | a={a:.3f} -> {m:.3f} rms {rms(m, B, rs):.3f}"
        f" | free a={af:.3f} b={bf:.3f} rms {rms(af, bf, rs):.3f} | stop-33 map rms {rms(oa, ob, rs):.3f}"
        f" bias {bias:+.3f}"
    )
    print("   residuals " + " ".join(f"{im[-2:]}:{m + B * p - y:+.2f}" for im, p, y in rs))
