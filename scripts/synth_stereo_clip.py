#!/usr/bin/env python3
"""Writes the synthetic 10 s, 44.1 kHz, 16-bit stereo clip the README times the audio grid
encoder on (a vibrato tone and a harmonic, the right channel a mix of the left and another
tone). Usage: scripts/synth_stereo_clip.py OUT.wav"""
import math
import struct
import sys
import wave

sr, n = 44100, 44100 * 10
w = wave.open(sys.argv[1], "wb")
w.setnchannels(2)
w.setsampwidth(2)
w.setframerate(sr)
frames = bytearray()
for i in range(n):
    t = i / sr
    a = 0.3 * math.sin(2 * math.pi * (220 + 40 * math.sin(2 * math.pi * 0.5 * t)) * t) \
        + 0.1 * math.sin(2 * math.pi * 660 * t)
    b = 0.8 * a + 0.1 * math.sin(2 * math.pi * 330 * t)
    frames += struct.pack("<hh", int(a * 20000), int(b * 20000))
w.writeframes(bytes(frames))
w.close()
