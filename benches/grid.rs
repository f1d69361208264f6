//! Grid mode (codec-spec §13) on a 768x512 image with the default synthesis (8 levels,
//! 16 x 2 SIREN): one fitting step's distortion pass (forward + backward through the fused
//! kernels, latent scatter), the per-step rate term and Adam update as `grid::fit` does them
//! (measured as 10 whole fitting steps), and the decoder's render; and the same pass and steps
//! with the network held fixed (a shared synthesis, codec-spec §13.8: no weight gradient);
//! and an audio segment (codec-spec §14: one row of 262,144 mono frames, the default audio
//! grid synthesis): its distortion pass and 10 fitting steps. `fit_10_steps_9_levels` is
//! `fit_10_steps` with 9 latent levels (a count that does not divide the 16 SIMD lanes).
//! `cargo bench --bench grid`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inr::grid::{self, GridFit, Packed, Pyramid, Sampler};

fn target(w: usize, h: usize) -> Vec<f32> {
    // Deterministic texture in [-1, 1] (no file I/O in the bench).
    let mut t = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = ((x * 7 + y * 3 + c * 50) % 256) as f32 / 255.0;
                let s = ((x as f32 * 0.05 + c as f32).sin() * (y as f32 * 0.03).cos()) * 0.4;
                t.push((v * 0.5 + s).clamp(-1.0, 1.0));
            }
        }
    }
    t
}

fn bench(c: &mut Criterion) {
    let (w, h) = (768u32, 512u32);
    let cfg = inr::GridEncodeConfig::default();
    let arch = inr::grid_arch(&cfg, 3);
    let pyr = Pyramid::new(w, h, cfg.levels);
    let sm = Sampler::new(pyr.clone(), w, h);
    let tgt = target(w as usize, h as usize);
    let params = grid::init_params(&arch, 0);
    let lat: Vec<f32> = (0..pyr.n_latents)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.3)
        .collect();
    let pk = Packed::new(&arch, &params);
    let mut scratch = Vec::new();
    let mut g = c.benchmark_group("grid_768x512");
    g.sample_size(10);
    g.throughput(Throughput::Elements(u64::from(w * h)));
    g.bench_function("distortion_pass", |b| {
        b.iter(|| grid::distortion_grad(&params, &pk, &sm, &lat, &tgt, &mut scratch))
    });
    g.bench_function("distortion_pass_latents_only", |b| {
        b.iter(|| grid::distortion_grad_with(&params, &pk, &sm, &lat, &tgt, &mut scratch, None))
    });
    let last = usize::from(arch.depth);
    g.bench_function("distortion_pass_output_layer", |b| {
        b.iter(|| {
            grid::distortion_grad_with(&params, &pk, &sm, &lat, &tgt, &mut scratch, Some(last))
        })
    });
    let fit = GridFit {
        steps: 10,
        ..Default::default()
    };
    g.bench_function("fit_10_steps", |b| {
        b.iter(|| grid::fit(&arch, &pyr, &tgt, &fit, 0, &mut |_| {}))
    });
    let frozen = GridFit {
        net: grid::NetTraining::Frozen,
        ..fit
    };
    g.bench_function("fit_10_steps_latents_only", |b| {
        b.iter(|| grid::fit(&arch, &pyr, &tgt, &frozen, 0, &mut |_| {}))
    });
    let head = GridFit {
        net: grid::NetTraining::Head,
        ..fit
    };
    g.bench_function("fit_10_steps_output_layer", |b| {
        b.iter(|| grid::fit(&arch, &pyr, &tgt, &head, 0, &mut |_| {}))
    });
    g.bench_function("render", |b| {
        b.iter(|| grid::render(&arch, &params, &lat, &sm))
    });
    // A level count that does not divide 16 (`--levels 9`), for the sampling's y passes.
    let cfg9 = inr::GridEncodeConfig {
        levels: 9,
        ..cfg.clone()
    };
    let (arch9, pyr9) = (inr::grid_arch(&cfg9, 3), Pyramid::new(w, h, 9));
    g.bench_function("fit_10_steps_9_levels", |b| {
        b.iter(|| grid::fit(&arch9, &pyr9, &tgt, &fit, 0, &mut |_| {}))
    });
    g.finish();
}

fn bench_audio(c: &mut Criterion) {
    let cfg = inr::AudioGridEncodeConfig::default();
    let arch = cfg.arch(1);
    let n = inr::DEFAULT_SEGMENT as usize;
    let pyr = Pyramid::new(n as u32, 1, cfg.levels);
    let sm = Sampler::new(pyr.clone(), n as u32, 1);
    let tgt: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 0.031).sin() * 0.5 + (i as f32 * 0.0017).sin() * 0.3)
        .collect();
    let params = grid::init_params(&arch, 0);
    let lat: Vec<f32> = (0..pyr.n_latents)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.3)
        .collect();
    let pk = Packed::new(&arch, &params);
    let mut scratch = Vec::new();
    let mut g = c.benchmark_group("audio_grid_segment_262144");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("distortion_pass", |b| {
        b.iter(|| grid::distortion_grad(&params, &pk, &sm, &lat, &tgt, &mut scratch))
    });
    let fit = GridFit {
        steps: 10,
        ..cfg.fit
    };
    g.bench_function("fit_10_steps", |b| {
        b.iter(|| grid::fit(&arch, &pyr, &tgt, &fit, 0, &mut |_| {}))
    });
    g.finish();
}

criterion_group!(benches, bench, bench_audio);
criterion_main!(benches);
