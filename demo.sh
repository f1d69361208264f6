#!/usr/bin/env bash
# The main job: encode a sample image with the embedded defaults, decode it, print PSNR and bpp.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked --quiet
out="${TMPDIR:-/tmp}/inr-demo"
mkdir -p "$out"
./target/release/inr encode samples/kodim15_center256.png -o "$out/kodim15_center256.inr" --force
./target/release/inr decode "$out/kodim15_center256.inr" -o "$out/kodim15_center256.png" --ref samples/kodim15_center256.png --force
./target/release/inr info "$out/kodim15_center256.inr"
echo "decoded image: $out/kodim15_center256.png"
