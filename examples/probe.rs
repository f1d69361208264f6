//! Development probe: encode one image with expert settings and print PSNR, estimated rate,
//! and time. `cargo run --release --example probe -- IMG key=value...`
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let img = image::open(&args[1]).expect("open").to_rgb8();
    let (w, h) = img.dimensions();
    let img = inr::media::Image {
        width: w,
        height: h,
        channels: 3,
        data: img.into_raw(),
    };
    let mut cfg = inr::EncodeConfig::default();
    for kv in &args[2..] {
        let (k, v) = kv.split_once('=').expect("key=value");
        match k {
            "width" => cfg.width = Some(v.parse().unwrap()),
            "depth" => cfg.depth = Some(v.parse().unwrap()),
            "steps" => cfg.steps = Some(v.parse().unwrap()),
            "bits" => cfg.bits = Some(v.parse().unwrap()),
            "lr" => cfg.lr = Some(v.parse().unwrap()),
            "pe" => cfg.pe_freqs = Some(v.parse().unwrap()),
            "w0" => cfg.w0 = Some(v.parse().unwrap()),
            "batch" => cfg.batch = Some(v.parse().unwrap()),
            "seed" => cfg.seed = v.parse().unwrap(),
            _ => panic!("unknown key {k}"),
        }
    }
    let t = Instant::now();
    let mut last = 0.0;
    let enc = inr::encode_image(&img, &cfg, &mut |p: &inr::Progress| {
        if let Some(ps) = p.psnr {
            if p.step % 500 == 0 || p.step == p.total {
                eprintln!("  {} {}/{} psnr {ps:.2}", p.phase, p.step, p.total);
            }
            last = ps;
        }
    })
    .expect("encode");
    let secs = t.elapsed().as_secs_f64();
    let f = inr::format::read_file(&enc.bytes, &Default::default()).unwrap();
    // Empirical entropy of all symbols (one shared histogram), as a rate estimate.
    let mut hist = std::collections::BTreeMap::new();
    let mut n = 0usize;
    for t in &f.tensors {
        for &s in &t.symbols {
            *hist.entry(s).or_insert(0usize) += 1;
            n += 1;
        }
    }
    let bits: f64 = hist
        .values()
        .map(|&c| -(c as f64) * (c as f64 / n as f64).log2())
        .sum();
    let bpp = (bits + 8.0 * 64.0) / (w as f64 * h as f64);
    println!(
        "{} {:?} params {} psnr {:.3} est_bpp {:.4} bits/param {:.2} secs {:.1} last {:.2}",
        args[1].rsplit('/').next().unwrap(),
        &args[2..],
        n,
        enc.psnr,
        bpp,
        bits / n as f64,
        secs,
        last
    );
}
