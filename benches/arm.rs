//! The encoder's ARM fit (`arm_fit::fit_arm`, codec-spec §5.11): Adam on minibatches of
//! latents through the 13 → H → H → 2 ReLU network, on a synthetic pyramid of correlated
//! integer latents in the image layout (768x512, 8 levels) and in the audio one-row layout
//! (one 262,144-frame segment), 100 steps of 4,096 and of 1,024 latents respectively (the
//! codecs run 1,200 and 2,400). `cargo bench --bench arm`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inr::arm::ArmLayout;
use inr::arm_fit::{fit_arm, ArmFit};
use inr::entropy::ArmShape;

/// Levels of `cols x rows` halving per level, coarsest first (coding order), with integer
/// latents that follow a smooth field plus deterministic noise, so the ARM has structure to
/// learn; values in -6..=6.
fn pyramid(cols: usize, rows: usize, levels: usize) -> Vec<(Vec<i32>, usize)> {
    let mut out = Vec::new();
    let mut s = 0x9e37_79b9u32;
    for l in (0..levels).rev() {
        let (c, r) = ((cols >> l).max(1), (rows >> l).max(1));
        let mut g = Vec::with_capacity(c * r);
        for y in 0..r {
            for x in 0..c {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let noise = (s % 5) as f32 - 2.0;
                let field = ((x as f32 * 0.07).sin() + (y as f32 * 0.05).cos()) * 2.0;
                let v = (field * (l as f32 + 1.0) / levels as f32 + noise * 0.6).round();
                g.push(v.clamp(-6.0, 6.0) as i32);
            }
        }
        out.push((g, c));
    }
    out
}

fn shapes(p: &[(Vec<i32>, usize)], layout: ArmLayout) -> Vec<(&[i32], ArmShape)> {
    let levels = p.len();
    p.iter()
        .enumerate()
        .map(|(k, (g, cols))| {
            let shape = ArmShape {
                len: g.len(),
                cols: *cols,
                max_abs: 6,
                res_max_abs: 12,
                level: levels - 1 - k,
                layout,
            };
            (g.as_slice(), shape)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("arm_fit");
    g.sample_size(10);
    let image = pyramid(768, 512, 8);
    let grids = shapes(&image, ArmLayout::Image);
    let cfg = ArmFit {
        steps: 100,
        ..ArmFit::default()
    };
    g.throughput(Throughput::Elements((cfg.steps * cfg.batch) as u64));
    g.bench_function("image_768x512_100x4096", |b| {
        b.iter(|| fit_arm(&grids, 8, &cfg))
    });
    let audio = pyramid(262_144, 1, 8);
    let grids = shapes(&audio, ArmLayout::Line);
    let cfg = ArmFit {
        steps: 100,
        batch: 1024,
        ..ArmFit::default()
    };
    g.throughput(Throughput::Elements((cfg.steps * cfg.batch) as u64));
    g.bench_function("audio_262144_100x1024", |b| {
        b.iter(|| fit_arm(&grids, 8, &cfg))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
