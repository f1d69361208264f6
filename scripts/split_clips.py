#!/usr/bin/env python3
"""Cuts every WAV clip of SRC in time: the first FRAC of its frames go to OUT/train/, the rest
to OUT/test/ (same names, same WAV parameters). Used by the held-out audio scripts.
Usage: scripts/split_clips.py SRC OUT FRAC"""
import os
import sys
import wave

src, out, frac = sys.argv[1], sys.argv[2], float(sys.argv[3])
for part in ("train", "test"):
    os.makedirs(os.path.join(out, part), exist_ok=True)
for name in sorted(os.listdir(src)):
    if not name.endswith(".wav"):
        continue
    with wave.open(os.path.join(src, name)) as w:
        params, n = w.getparams(), w.getnframes()
        data = w.readframes(n)
    cut = int(n * frac)
    b = params.sampwidth * params.nchannels
    for part, chunk in (("train", data[: cut * b]), ("test", data[cut * b :])):
        with wave.open(os.path.join(out, part, name), "wb") as o:
            o.setparams(params)
            o.writeframes(chunk)
