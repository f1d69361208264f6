use inr::bench_api::*;
use inr::format::Arch;
fn main() {
    let i = image::open("/work/shared/data/images/small/kodim05_center64.png").unwrap().to_rgb8();
    let (w, h) = i.dimensions();
    let data = i.into_raw();
    let a = Arch { coord_dims: 2, out_channels: 3, width: 28, depth: 4, pe_freqs: 0, pe_base_milli: 2000, w0_first: 30, w0_hidden: 30 };
    let grid = Grid2::new(&a, w, h);
    let sig = Signal { grid: &grid, target: data.iter().map(|&v| v as f32 / 127.5 - 1.0).collect(), original: &data };
    let mut f = Fitter::new(a, &sig, siren_init(&shape_of(&a), 1), 1);
    for s in 0..200 { let m = f.step(4096, 1e-4, None); if s % 20 == 0 { println!("{s} mse {m} eval {}", f.eval(None)); } }
}
