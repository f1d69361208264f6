#!/bin/bash
# probe-map calibration: 100-step probes (ARM off) and full fits at each lambda, kodim01-12
BIN=${BIN:-inr}
D=${KODAK:-../shared/data/images/kodak}
for L in "$@"; do
 for n in 01 02 03 04 05 06 07 08 09 10 11 12; do
  p=$($BIN --threads 2 --quiet encode $D/kodim$n.png -o ${OUT:-.}/p.inr --lambda $L --steps 100 --arm off --force 2>&1 | tail -1)
  echo "probe kodim$n $L $p" >> ${OUT:-.}/probe.txt
  f=$($BIN --threads 2 --quiet encode $D/kodim$n.png -o ${OUT:-.}/f.inr --lambda $L --force 2>&1 | tail -1)
  echo "full kodim$n $L $f" >> ${OUT:-.}/full.txt
 done
done
echo done >> ${OUT:-.}/status
