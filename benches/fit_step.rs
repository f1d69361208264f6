//! One Adam step of SIREN fitting (65,536-pixel minibatch of a 768x512 image) and a full
//! 768x512 render, for the architectures named in the image codec issue.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inr::bench_api::*;
use inr::format::{write_file, Arch, InrFile, QTensor, Step};

fn arch(width: u16, depth: u8, pe: u8) -> Arch {
    Arch {
        coord_dims: 2,
        out_channels: 3,
        width,
        depth,
        pe_freqs: pe,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    }
}

fn image() -> (u32, u32, Vec<u8>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/images/kodak/kodim01.png"
    );
    match image::open(path) {
        Ok(i) => {
            let i = i.to_rgb8();
            (i.width(), i.height(), i.into_raw())
        }
        // Synthetic fallback so the bench runs without ../shared.
        Err(_) => (
            768,
            512,
            (0..768 * 512 * 3).map(|i| (i * 7 % 251) as u8).collect(),
        ),
    }
}

fn bench(c: &mut Criterion) {
    let (w, h, data) = image();
    let mut g = c.benchmark_group("fit_step_65536px");
    g.sample_size(10);
    g.throughput(Throughput::Elements(65536));
    for (width, depth, pe) in [(28u16, 10u8, 0u8), (20, 5, 0), (48, 10, 0)] {
        let a = arch(width, depth, pe);
        let grid = Grid2::new(&a, w, h);
        let sig = Signal {
            grid: &grid,
            target: data.iter().map(|&v| v as f32 / 127.5 - 1.0).collect(),
            original: &data,
        };
        let init = siren_init(&shape_of(&a), 1);
        let mut f = Fitter::new(a, &sig, init, 1);
        g.bench_function(format!("{depth}x{width}"), |b| {
            b.iter(|| f.step(65536, 1e-4, None))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("render_768x512");
    g.sample_size(10);
    g.throughput(Throughput::Elements(w as u64 * h as u64));
    // 10x60: the large preset, the width of the seeded-support comparisons.
    for (width, depth) in [(28u16, 10u8), (48, 10), (60, 10)] {
        let a = arch(width, depth, 0);
        let p = siren_init(&shape_of(&a), 1);
        g.bench_function(format!("{depth}x{width}"), |b| {
            b.iter(|| render(&a, &p, w, h))
        });
    }
    g.finish();

    // Whole-file decode of a 768x512 image: parse, entropy-decode, render (10x44, medium-sized).
    let a = arch(44, 10, 0);
    let p = siren_init(&shape_of(&a), 3);
    let mut off = 0;
    let tensors = a
        .tensor_lens()
        .iter()
        .enumerate()
        .map(|(t, &n)| {
            let bits = if t < 2 || t % 2 == 1 { 14 } else { 6 };
            let m = ((1i32 << (bits - 1)) - 1) as f32;
            let w = &p[off..off + n];
            off += n;
            let max = w.iter().fold(1e-6f32, |x, v| x.max(v.abs()));
            let step = Step::from_f32(max / m);
            let s = step.to_f32();
            let symbols = w
                .iter()
                .map(|v| (v / s).round().clamp(-m, m) as i32)
                .collect();
            QTensor {
                step,
                bits,
                symbols,
            }
        })
        .collect();
    let file = InrFile {
        width: 768,
        height: 512,
        arch: a,
        bits: 14,
        tensors,
        base_id: None,
        masks: Vec::new(),
        seeded_masks: false,
        base_masks: false,
        codebooks: Vec::new(),
    };
    let bytes = write_file(&file).expect("valid file");
    let mut g = c.benchmark_group("decode_file_768x512");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("10x44", |b| {
        b.iter(|| inr::decode(&bytes, &inr::DecodeOptions::default()).expect("decodes"))
    });
    g.finish();

    // The polynomial sincos alone, 1M values into a buffer (elementwise cost of the sine
    // layers; this bench is compiled for the baseline target, so SSE2 4-wide).
    let xs: Vec<f32> = (0..1 << 20).map(|i| (i as f32 * 0.001) - 500.0).collect();
    let mut out = vec![0.0f32; xs.len()];
    let mut g = c.benchmark_group("sincos");
    g.throughput(Throughput::Elements(xs.len() as u64));
    g.bench_function("1M", |b| {
        b.iter(|| {
            for (o, &x) in out.iter_mut().zip(&xs) {
                let (s, c) = sincos(x);
                *o = s + c;
            }
        })
    });
    g.finish();

    #[cfg(feature = "candle")]
    sgemm_candle(c);
}

/// The machine's sgemm throughput through candle (gemm crate, runtime SIMD dispatch), as the
/// ceiling to compare the fused SIREN step against: 2 * 1024^3 flops per iteration. Only with
/// `--features candle`.
#[cfg(feature = "candle")]
fn sgemm_candle(c: &mut Criterion) {
    let dev = candle_core::Device::Cpu;
    let a = candle_core::Tensor::ones((1024, 1024), candle_core::DType::F32, &dev).expect("tensor");
    let mut g = c.benchmark_group("sgemm_candle");
    g.sample_size(10);
    g.throughput(Throughput::Elements(2 * 1024 * 1024 * 1024));
    g.bench_function("1024", |b| b.iter(|| a.matmul(&a).expect("matmul")));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
