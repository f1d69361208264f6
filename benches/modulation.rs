//! Modulation mode (codec-spec §12) on a 768x512 image with the embedded modulation base:
//! one latent step (a pass over a quarter of the pixels plus the latent gradient), one
//! full-image pass, and the decoder's render. `cargo bench --bench modulation`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inr::media::Image;
use inr::modulation::{self, ModNet, Packed, Target};

fn image() -> Image {
    // Deterministic texture (no file I/O in the bench).
    let (w, h) = (768u32, 512u32);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3u32 {
                let v = ((x * 7 + y * 3 + c * 50) % 256) as f32;
                let s =
                    128.0 + 100.0 * ((x as f32 * 0.05 + c as f32).sin() * (y as f32 * 0.03).cos());
                data.push(((v + s) * 0.5) as u8);
            }
        }
    }
    Image {
        width: w,
        height: h,
        channels: 3,
        data,
    }
}

fn bench(c: &mut Criterion) {
    let Some(base) = inr::base::embedded_modulation() else {
        return;
    };
    let Some(spec) = base.modulation else {
        return;
    };
    let Some(net) = ModNet::from_flat(
        base.arch,
        usize::from(spec.latent_dim),
        u32::from(spec.cell),
        &base.params,
    ) else {
        return;
    };
    let img = image();
    let pk = Packed::new(&net);
    let tgt = Target::new(&net, &img);
    let z = vec![0.01f32; tgt.grid.nodes() * net.latent_dim];
    let shifts = net.node_shifts(&z);
    let mut g = c.benchmark_group("modulation_768x512");
    g.sample_size(10);
    g.throughput(Throughput::Elements(u64::from(img.width * img.height)));
    g.bench_function("latent_step_frac_0.25", |b| {
        b.iter(|| {
            let out = modulation::pass(&net, &pk, &tgt, &net.node_shifts(&z), 0.25, 1, false);
            modulation::latent_grad(&net, &out.g_nodes, &z, 1.0, out.count)
        })
    });
    g.bench_function("pass_full", |b| {
        b.iter(|| modulation::pass(&net, &pk, &tgt, &shifts, 1.0, 1, false))
    });
    g.bench_function("render", |b| {
        b.iter(|| modulation::render(&net, &z, img.width, img.height))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
