//! Entropy layer throughput: encode / decode / estimate on 50k symbols (8-bit and 12-bit
//! alphabets, bell-shaped like fitted SIREN weights).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inr::entropy::{decode_tensors, encode_tensors, estimate_bits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 50_000;

/// Rounded Gaussian-ish symbols (sum of 4 uniforms), clamped to `-max_abs..=max_abs`.
fn symbols(max_abs: i32, seed: u64) -> Vec<i32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = f64::from(max_abs) * 0.25;
    (0..N)
        .map(|_| {
            let x: f64 = (0..4).map(|_| rng.gen_range(-1.0..1.0)).sum::<f64>() * s;
            (x.round() as i32).clamp(-max_abs, max_abs)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("entropy");
    g.throughput(Throughput::Elements(N as u64));
    for bits in [8u32, 12] {
        let max_abs = (1u32 << (bits - 1)) - 1;
        let syms = symbols(max_abs as i32, u64::from(bits));
        // Split like a network: a few tensors of different sizes.
        let parts: Vec<&[i32]> = vec![&syms[..1000], &syms[1000..1064], &syms[1064..]];
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        let bytes = encode_tensors(&parts, max_abs).expect("in range");
        eprintln!(
            "bits={bits}: {N} symbols -> {} bytes ({:.3} bits/symbol)",
            bytes.len(),
            8.0 * bytes.len() as f64 / N as f64
        );
        g.bench_with_input(BenchmarkId::new("encode", bits), &parts, |b, p| {
            b.iter(|| encode_tensors(black_box(p), max_abs).expect("in range"))
        });
        g.bench_with_input(BenchmarkId::new("estimate_bits", bits), &parts, |b, p| {
            b.iter(|| estimate_bits(black_box(p), max_abs).expect("in range"))
        });
        g.bench_with_input(BenchmarkId::new("decode", bits), &bytes, |b, bytes| {
            b.iter(|| decode_tensors(black_box(bytes), &lens, max_abs).expect("valid"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
