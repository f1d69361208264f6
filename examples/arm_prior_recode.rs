//! Re-codes the latents of ARM-coded grid files (codec-spec §5.11) with the ARM's prior models
//! (§5.11.1, flag bit 13) and prints the file sizes before and after: the exact rate effect of
//! the prior models on the same latents. Each re-coded file is read back and must hold the same
//! latents and network. Nothing is written.
//!
//!     inr encode kodim13.png -o k13.inr --bpp 0.25 --arm flat
//!     cargo run --release --example arm_prior_recode -- k13.inr ...
//!
//! (`docs/benchmarks.md`, "Prior models for the ARM-coded latents (stop 62)".)

use inr::format::{read_grid_file, write_grid_file, Limits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut before, mut after) = (0usize, 0usize);
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path)?;
        let f = read_grid_file(&bytes, &Limits::default())?;
        let Some(arm) = f.arm.clone() else {
            println!("{path}: not ARM-coded, skipped");
            continue;
        };
        let mut g = f.clone();
        g.arm = Some(arm.with_prior_models(true));
        let out = write_grid_file(&g)?;
        let back = read_grid_file(&out, &Limits::default())?;
        if back.tensors != f.tensors || back.arm.as_ref().is_none_or(|a| !a.prior_models) {
            return Err(format!("{path}: the re-coded file does not read back").into());
        }
        println!(
            "{path}: {} -> {} bytes ({:+.2} %)",
            bytes.len(),
            out.len(),
            100.0 * (out.len() as f64 / bytes.len() as f64 - 1.0)
        );
        before += bytes.len();
        after += out.len();
    }
    if before > 0 {
        println!(
            "total: {before} -> {after} bytes ({:+.2} %)",
            100.0 * (after as f64 / before as f64 - 1.0)
        );
    }
    Ok(())
}
