//! How much PSNR does quantization cost, and where? Fits a 10x28 SIREN to a 256x256 Kodak crop
//! for 600 steps, then quantizes (without fine-tuning) with the hidden matrices at `bits` and the
//! first layer and all biases at `sensitive` bits. This measurement is why `inr` gives those
//! few hundred values 14 bits.
//!
//! `cargo run --release --example quant_sensitivity [IMAGE]`
use inr::bench_api::*;
use inr::format::Arch;
fn main() {
    let i = image::open("/work/shared/data/images/small/kodim15_center256.png")
        .unwrap()
        .to_rgb8();
    let (w, h) = i.dimensions();
    let data = i.into_raw();
    let a = Arch {
        coord_dims: 2,
        out_channels: 3,
        width: 28,
        depth: 10,
        pe_freqs: 0,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    };
    let grid = Grid2::new(&a, w, h);
    let sig = Signal {
        grid: &grid,
        target: data.iter().map(|&v| v as f32 / 127.5 - 1.0).collect(),
        original: &data,
    };
    let mut f = Fitter::new(a, &sig, siren_init(&shape_of(&a), 1), 1);
    let ph = Phase {
        steps: 600,
        lr: 3e-4,
        lr_end_frac: 0.05,
        batch: 16384,
        eval_every: 100,
        stop_at_psnr: None,
    };
    let p = f.run_phase(&ph, None, 0, 600, &mut |_| {});
    println!("fp32 {p:.2}");
    let base = f.params.clone();
    for (bits, sb) in [
        (8u8, 8u8),
        (8, 12),
        (8, 14),
        (7, 12),
        (7, 14),
        (6, 14),
        (5, 14),
    ] {
        let tb = tensor_bits(&a, bits, sb);
        let q = QuantSpec::choose(&a, &base, &tb, None);
        let mut all = base.clone();
        q.apply(&a, &base, &mut all);
        f.params = all.clone();
        println!("bits {bits} sensitive {sb}: {:.2}", f.eval(None));
    }
}
