//! Scratch experiment driver for modulation meta-training (not part of the product).
use inr::format::Arch;
use inr::media::{load_image, Image};
use inr::modulation::*;
use std::time::Instant;

fn load_dir(d: &str) -> Vec<Image> {
    let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v.iter().map(|p| load_image(p).unwrap().image).collect()
}
fn center(img: &Image, s: u32) -> Image {
    let x0 = (img.width - s) / 2;
    let y0 = (img.height - s) / 2;
    inr::meta::augmented_crop(img, x0, y0, s, s, 0)
}

fn rd(net: &ModNet, val: &[Image], fit: &LatentFit) -> String {
    let pk = Packed::new(net);
    let steps = [0.0f32, 0.12, 0.25, 0.5, 1.0];
    let mut ps = vec![0.0; steps.len()];
    let mut bpp = vec![0.0; steps.len()];
    for (k, img) in val.iter().enumerate() {
        let tgt = Target::new(net, img);
        let z = fit_latents(net, &pk, &tgt, fit, k as u64, &mut |_| {});
        for (j, &q) in steps.iter().enumerate() {
            if q == 0.0 {
                ps[j] += psnr_of(net, &z, img);
                continue;
            }
            let d = net.latent_dim;
            let h = net.map.len() / d;
            let norms: Vec<f32> = net.map.chunks(h).map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt()).collect();
            let mean = norms.iter().sum::<f32>() / d as f32;
            let pc = std::env::var("PERCH").is_ok();
            let qs: Vec<f32> = norms.iter().map(|n| if pc { q * mean / n } else { q }).collect();
            let zq: Vec<f32> = z.iter().enumerate().map(|(k, v)| { let q = qs[k % d]; (v / q).round() * q }).collect();
            ps[j] += psnr_of(net, &zq, img);
            let chans: Vec<Vec<i32>> = (0..d).map(|i| z.iter().skip(i).step_by(d).map(|v| (v / qs[i]).round().clamp(-32767.0, 32767.0) as i32).collect()).collect();
            let refs: Vec<&[i32]> = chans.iter().map(|c| &c[..]).collect();
            let bits = inr::entropy::estimate_bits(&refs, 32767).unwrap();
            bpp[j] += bits as f64 / (img.width * img.height) as f64;
        }
    }
    let n = val.len() as f64;
    steps.iter().enumerate().map(|(j, q)| format!("q{q}:{:.3}/{:.2}", bpp[j] / n, ps[j] / n)).collect::<Vec<_>>().join(" ")
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() == 3 && a[1] == "seam" {
        return seam_main(&a[2]);
    }
    let get = |k: &str, d: &str| -> String {
        a.iter().position(|x| x == k).map(|i| a[i + 1].clone()).unwrap_or(d.to_string())
    };
    let width: u16 = get("--width", "64").parse().unwrap();
    let depth: u8 = get("--depth", "4").parse().unwrap();
    let d: usize = get("--dim", "24").parse().unwrap();
    let cell: u32 = get("--cell", "16").parse().unwrap();
    let k: u8 = get("--freqs", "4").parse().unwrap();
    let iters: usize = get("--iters", "200").parse().unwrap();
    let arch = Arch { coord_dims: 2, out_channels: 3, width, depth, pe_freqs: k, pe_base_milli: 2000,
        w0_first: get("--w0f", "30").parse().unwrap(), w0_hidden: get("--w0h", "30").parse().unwrap() };
    let train = load_dir(&get("--train", "/work/data/train"));
    let val: Vec<Image> = load_dir(&get("--val", "/work/data/val")).iter().map(|i| center(i, 256)).collect();
    let mut net = ModNet::init(arch, d, cell, 1);
    let cfg = ModMetaConfig {
        iterations: iters,
        tasks: get("--tasks", "4").parse().unwrap(),
        crop_min: get("--crop-min", "48").parse().unwrap(),
        crop_max: get("--crop-max", "96").parse().unwrap(),
        inner: LatentFit { steps: get("--inner", "10").parse().unwrap(), lr: get("--ilr", "0.05").parse().unwrap(), frac: 1.0, l2: get("--l2", "0").parse().unwrap() },
        outer_lr: get("--olr", "1e-3").parse().unwrap(),
        noise: get("--noise", "0").parse().unwrap(),
        seed: 7,
    };
    let vfit = LatentFit { steps: get("--vsteps", "50").parse().unwrap(), lr: cfg.inner.lr, frac: 0.5, l2: cfg.inner.l2 };
    let every: usize = get("--every", "100").parse().unwrap();
    let out = get("--out", "/work/meta/mod.bin");
    let mut opt = Adam::new(net.params.len() + net.map.len());
    let t0 = Instant::now();
    if let Some(p) = a.iter().position(|x| x == "--load") {
        let b = std::fs::read(&a[p + 1]).unwrap();
        let f: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        net = ModNet::from_flat(arch, d, cell, &f).unwrap();
        println!("{}", rd(&net, &val, &vfit));
        return;
    }
    let v = validate(&net, &val, &vfit);
    println!("it 0 val {v:.2} ({:.0}s)", t0.elapsed().as_secs_f64());
    let mut acc = 0.0;
    for i in 0..iters {
        acc += meta_train_step(&mut net, &mut opt, &train, &cfg, i);
        if (i + 1) % every == 0 || i + 1 == iters {
            let v = rd(&net, &val, &vfit);
            println!("it {} task {:.2} {v} ({:.0}s)", i + 1, acc / every as f64, t0.elapsed().as_secs_f64());
            acc = 0.0;
            let bytes: Vec<u8> = net.flat().iter().flat_map(|f| f.to_le_bytes()).collect();
            std::fs::write(&out, bytes).unwrap();
        }
    }
}
#[allow(dead_code)]
fn seam_main(p: &str) {
    let img = load_image(std::path::Path::new(p)).unwrap().image;
    for c in [16u32, 13, 8, 32] {
        println!("period {c}: {:.3}", inr::metrics::seam_ratio(&img, c).unwrap());
    }
}
