#!/usr/bin/env python3
"""Hostile-file check of the decoder through the CLI: random mutations of .inr files, each
with its CRC recomputed (so that the parser behind the CRC check is reached), decoded by
`inr decode`. Any exit code other than 0 (decoded) or 1 (a reported error), a panic message or
a decode running past the timeout is written to `bad_*.inr` and counted.

    INR=target/release/inr N=400 SEED=7 scripts/mutate_decode.py a.inr b.inr ...

Mutations: 1-4 bit flips, 1-8 random bytes, 1-3 extreme values in the first 64 bytes (the
headers), a truncation (CRC appended), or 1-16 inserted bytes. Files whose name starts with
`au` are decoded to WAV, the others to PNG. Standard library only.
"""
import os
import random
import struct
import subprocess
import sys
import tempfile
import zlib

INR = os.environ.get("INR", "target/release/inr")
N = int(os.environ.get("N", "400"))
random.seed(int(os.environ.get("SEED", "7")))


def mutate(src: bytes) -> bytearray:
    b = bytearray(src)
    kind = random.choice(["flip", "bytes", "header", "trunc", "insert"])
    if kind == "flip":
        for _ in range(random.randint(1, 4)):
            i = random.randrange(len(b) - 4)
            b[i] ^= 1 << random.randrange(8)
    elif kind == "bytes":
        for _ in range(random.randint(1, 8)):
            b[random.randrange(len(b) - 4)] = random.randrange(256)
    elif kind == "header":
        for _ in range(random.randint(1, 3)):
            i = random.randrange(min(64, len(b) - 4))
            b[i] = random.choice([0, 1, 0x7F, 0x80, 0xFF, random.randrange(256)])
    elif kind == "trunc":
        b = b[: random.randrange(8, len(b) - 4)] + b"\0\0\0\0"
    else:
        i = random.randrange(len(b) - 4)
        b[i:i] = bytes(random.randrange(256) for _ in range(random.randint(1, 16)))
    # codec-spec §4.3: CRC-32 of everything before the last four bytes, little-endian.
    b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])) & 0xFFFFFFFF)
    return b


def main() -> int:
    files = sys.argv[1:]
    if not files:
        print(__doc__)
        return 2
    tmp = tempfile.mkdtemp(prefix="inr-mutate-")
    bad, seen = 0, {}
    for f in files:
        src = open(f, "rb").read()
        out = os.path.join(tmp, "out.wav" if os.path.basename(f).startswith("au") else "out.png")
        for t in range(N):
            m = mutate(src)
            path = os.path.join(tmp, "m.inr")
            open(path, "wb").write(m)
            try:
                r = subprocess.run([INR, "decode", path, "-o", out, "--force", "-q"],
                                   capture_output=True, timeout=20)
                key = (os.path.basename(f), r.returncode)
                seen[key] = seen.get(key, 0) + 1
                if r.returncode not in (0, 1) or b"panicked" in r.stderr:
                    bad += 1
                    open(f"bad_{os.path.basename(f)}_{t}.inr", "wb").write(m)
                    print("BAD", f, t, r.returncode, r.stderr[-300:])
            except subprocess.TimeoutExpired:
                bad += 1
                open(f"bad_{os.path.basename(f)}_{t}.inr", "wb").write(m)
                print("HANG", f, t)
    for (name, rc), n in sorted(seen.items()):
        print(f"{name}: exit {rc} x {n}")
    print(f"bad: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
