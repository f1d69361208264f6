#!/usr/bin/env python3
"""One CSV row (clip,preset,start,kbps,psnr_db,snr_db,encode_s_per_s) from the JSON that
`inr --json encode clip.wav` prints. Shared by the audio benchmark scripts.
Usage: scripts/audio_row.py JSON CLIP PRESET START"""
import json
import sys

d = json.loads(sys.argv[1])
print("%s,%s,%s,%.3f,%.3f,%.3f,%.3f" % (sys.argv[2], sys.argv[3], sys.argv[4], d["kbps"],
      d["psnr"], d["snr"], d["encode_s_per_audio_s"]))
