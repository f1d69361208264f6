#!/usr/bin/env python3
"""Stereo test clips from the shared mono clips (all shared clips are mono): the speech and
Brahms clips with a right channel that is the left delayed by 1 ms (16 frames) at 0.7 times
the level, and speech on the left with the trumpet clip on the right (unrelated channels).
Usage: scripts/stereo_from_mono.py SHARED_AUDIO_DIR OUT_DIR"""
import os
import struct
import sys
import wave


def read(path):
    with wave.open(path) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        n = w.getnframes()
        return w.getframerate(), list(struct.unpack("<%dh" % n, w.readframes(n)))


def write(path, rate, left, right):
    n = min(len(left), len(right))
    with wave.open(path, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<hh", left[i], right[i]) for i in range(n)))


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rate, brahms = read(os.path.join(src, "music_brahms_hungarian_dance5.wav"))
    _, speech = read(os.path.join(src, "speech_librispeech_5703-47212-0000.wav"))
    _, trumpet = read(os.path.join(src, "music_solo_trumpet.wav"))
    d = 16
    delayed = lambda x: [0] * d + [int(0.7 * v) for v in x[:-d]]
    write(os.path.join(out, "brahms_delay.wav"), rate, brahms, delayed(brahms))
    write(os.path.join(out, "speech_delay.wav"), rate, speech, delayed(speech))
    write(os.path.join(out, "speech_trumpet.wav"), rate, speech, trumpet)


if __name__ == "__main__":
    main()
