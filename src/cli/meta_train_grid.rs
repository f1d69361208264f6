//! `inr meta-train --mode grid`: learn a grid base (the start of grid-mode synthesis networks)
//! with Reptile over the grid encoder's own fits, with checkpoints and resume.

use anyhow::{bail, Context as _};
use inr::base::Base;
use inr::format::Arch;
use inr::grid::GridStart;
use inr::grid_meta::{self, GridMetaConfig};

use super::meta_train::{
    checkpoint_path, finish, load_dir, read_checkpoint, write_checkpoint, MetaTrainArgs,
};
use super::{say, Ctx};

/// Description stored in the base: everything needed to reproduce it (no timestamps, so the
/// same run gives the same bytes and id). A checkpoint also keeps the entropy model's and the
/// predictor's part of the start, so that a resumed run is exact.
fn description(
    cfg: &GridMetaConfig,
    names: &[String],
    done: usize,
    state: Option<&GridStart>,
) -> String {
    let mut d = serde_json::json!({
        "trainer": "inr meta-train --mode grid (Reptile over grid fits)",
        "images": names,
        "config": cfg,
        "iterations_done": done,
    });
    if let Some(s) = state {
        // Bit patterns, so that a resumed run is exact.
        let bits = |v: &mut dyn Iterator<Item = &f32>| v.map(|x| x.to_bits()).collect::<Vec<_>>();
        d["state"] = serde_json::json!({
            "log_scales": bits(&mut s.log_scales.iter()),
            "pred_coefs": bits(&mut s.pred_coefs.iter().flatten()),
        });
    }
    d.to_string()
}

/// The checkpoint's start and completed iterations, checked against this run's settings.
fn load_checkpoint(
    path: &std::path::Path,
    cfg: &GridMetaConfig,
    arch: &Arch,
) -> anyhow::Result<(GridStart, usize)> {
    let (b, d, done) = read_checkpoint(path, cfg, |b| b.grid && b.arch == *arch)?;
    let mut start = grid_meta::start_of(arch, b.params);
    let floats = |key: &str, n: usize| -> anyhow::Result<Vec<f32>> {
        let bits: Vec<u32> = serde_json::from_value(d["state"][key].clone())
            .with_context(|| format!("checkpoint has no {key} state"))?;
        if bits.len() != n {
            bail!(
                "checkpoint {} has a {key} state of the wrong size",
                path.display()
            );
        }
        Ok(bits.into_iter().map(f32::from_bits).collect())
    };
    start.log_scales = floats("log_scales", start.log_scales.len())?;
    let taps = inr::entropy::GRID_PRED_TAPS;
    let coefs = floats("pred_coefs", start.pred_coefs.len() * taps)?;
    for (c, v) in start.pred_coefs.iter_mut().zip(coefs.chunks_exact(taps)) {
        c.copy_from_slice(v);
    }
    Ok((start, done))
}

/// The grid encoder settings of `args` (levels, width, depth, w0 over the defaults) and its
/// synthesis architecture, checked as a grid file's.
fn grid_encoder(args: &MetaTrainArgs, ctx: &Ctx) -> anyhow::Result<(inr::GridEncodeConfig, Arch)> {
    let enc = inr::GridEncodeConfig::default();
    let mut ecfg = inr::GridEncodeConfig {
        w0: args.w0.unwrap_or(enc.w0),
        levels: args.levels.unwrap_or(enc.levels),
        threads: ctx.threads,
        ..enc
    };
    if let Some(w) = args.width {
        ecfg.width = u16::try_from(w).context("--width must be at most 65535")?;
    }
    if let Some(dp) = args.depth {
        ecfg.depth = u8::try_from(dp).context("--depth must be at most 8")?;
    }
    let arch = inr::grid_arch(&ecfg, args.channels);
    inr::format::validate_grid_arch(&arch, &inr::format::Limits::default())?;
    Ok((ecfg, arch))
}

pub fn run(args: MetaTrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let d = GridMetaConfig::default();
    let cfg = GridMetaConfig {
        iterations: args.iterations.unwrap_or(d.iterations),
        budget: args.inner_steps.unwrap_or(d.budget).max(1),
        outer_lr: args.outer_lr.unwrap_or(d.outer_lr),
        outer_lr_end: args.outer_lr_end.unwrap_or(d.outer_lr_end),
        crop_min: args.crop_min.unwrap_or(d.crop_min).max(1),
        crop_max: args.crop_max.unwrap_or(d.crop_max).max(1),
        seed: args.seed,
        ..d
    };
    let (ecfg, arch) = grid_encoder(&args, ctx)?;
    let (images, names) = load_dir(&args.data, args.channels)?;
    let val = match &args.val {
        Some(dir) => load_dir(dir, args.channels)?.0,
        None => Vec::new(),
    };
    let ckpt = checkpoint_path(&args.output);
    let (mut start, from) = if args.resume {
        let (s, done) = load_checkpoint(&ckpt, &cfg, &arch)?;
        say(format!(
            "resuming at iteration {done} from {}",
            ckpt.display()
        ))?;
        (s, done)
    } else {
        (grid_meta::initial_start(&arch, args.seed), 0)
    };
    // Validation: the grid encoder at the medium preset's λ with a budget of --val-steps.
    let vlambda = 0.005;
    let validate =
        |params: Option<&[f32]>| grid_meta::validate(&val, &ecfg, params, vlambda, args.val_steps);
    let val_random = if val.is_empty() {
        None
    } else {
        let (j, p, b) = validate(None)?;
        say(format!(
            "validation: random start, {}-step fits at λ = {vlambda}: MSE + λ·bpp {j:.4e} \
             ({p:.2} dB, {b:.3} bpp)",
            args.val_steps
        ))?;
        Some(j)
    };
    let mut meter =
        super::meta_train::Meter::new(ctx.quiet, cfg.iterations, from, args.checkpoint_every);
    let mut err: Option<anyhow::Error> = None;
    let done = grid_meta::train(&arch, &images, &cfg, &mut start, from, &mut |i, s, psnr| {
        let (n, mean, checkpoint) = meter.record(i, psnr);
        if checkpoint {
            let r = write_checkpoint(
                &ckpt,
                Base::new_grid(
                    arch,
                    s.params.clone(),
                    description(&cfg, &names, n, Some(s)),
                ),
            );
            if let Err(e) = r {
                err = Some(e);
                return false;
            }
        }
        if let Some(jr) = val_random.filter(|_| n % args.val_every.max(1) == 0) {
            match validate(Some(&s.params)) {
                Ok((j, p, b)) => meter.pb.suspend(|| {
                    eprintln!(
                        "iteration {n}: validation MSE + λ·bpp {j:.4e} ({:+.1} % against the \
                         random start; {p:.2} dB, {b:.3} bpp), recent task PSNR {mean:.2} dB, \
                         {:.0} s",
                        100.0 * (j / jr - 1.0),
                        meter.t0.elapsed().as_secs_f64()
                    )
                }),
                Err(e) => {
                    err = Some(anyhow::Error::from(e).context("validation failed"));
                    return false;
                }
            }
        }
        true
    });
    meter.pb.finish_and_clear();
    if let Some(e) = err {
        return Err(e);
    }
    let base = Base::new_grid(arch, start.params, description(&cfg, &names, done, None))?;
    let extra = serde_json::json!({
        "kind": "grid",
        "images": names,
    });
    finish(&args, ctx, &meter, &base, done, extra, |secs| {
        format!(
            "wrote {} (grid base {:016x}, {} levels, {}x{} synthesis, {done} iterations, {secs:.0} s)",
            args.output.display(),
            base.id(),
            arch.coord_dims,
            arch.depth,
            arch.width
        )
    })
}

/// `inr meta-train --mode grid-shared`: a shared synthesis network (§13.8) from one joint fit
/// of a mosaic of the images' centre crops, starting from the embedded grid base when the
/// architecture matches.
pub fn run_shared(args: MetaTrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if args.resume {
        bail!("--mode grid-shared has no checkpoints (one fit of a few minutes): rerun it");
    }
    let d = grid_meta::SharedConfig::default();
    let cfg = grid_meta::SharedConfig {
        steps: args.iterations.unwrap_or(d.steps).max(1),
        lambda: args.lambda.unwrap_or(d.lambda),
        crop: args.crop_max.unwrap_or(d.crop).max(1),
        lr_net: args.inner_lr.unwrap_or(d.lr_net),
        seed: args.seed,
    };
    if !(cfg.lambda.is_finite() && cfg.lambda >= 0.0 && cfg.lr_net.is_finite() && cfg.lr_net > 0.0)
    {
        bail!("--lambda must be >= 0 and --inner-lr > 0");
    }
    let (_, arch) = grid_encoder(&args, ctx)?;
    let (images, names) = load_dir(&args.data, args.channels)?;
    let start = inr::base::embedded_grid_for(&arch);
    let meter = super::meta_train::Meter::new(ctx.quiet, cfg.steps, 0, cfg.steps);
    let params = grid_meta::train_shared(
        &arch,
        &images,
        &cfg,
        start.map(|b| b.params.as_slice()),
        &mut |s| meter.pb.set_position(s as u64),
    )
    .context("no training images")?;
    meter.pb.finish_and_clear();
    let desc = serde_json::json!({
        "trainer": "inr meta-train --mode grid-shared (one joint grid fit of a mosaic)",
        "images": names,
        "config": cfg,
        "start": start.map(|b| format!("{:016x}", b.id())),
    });
    let base = Base::new_grid(arch, params, desc.to_string())?;
    let extra = serde_json::json!({
        "kind": "grid-shared",
        "images": names,
    });
    finish(&args, ctx, &meter, &base, cfg.steps, extra, |secs| {
        format!(
            "wrote {} (shared synthesis {:016x}, {} levels, {}x{} network, {} steps at λ = {}, \
             {secs:.0} s)",
            args.output.display(),
            base.id(),
            arch.coord_dims,
            arch.depth,
            arch.width,
            cfg.steps,
            cfg.lambda
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint keeps the whole start (network, scales, predictor) bit for bit, and the
    /// iteration count; one from other settings is refused.
    #[test]
    fn checkpoints_restore_the_whole_start() {
        let cfg = GridMetaConfig::default();
        let enc = inr::GridEncodeConfig {
            levels: 3,
            width: 4,
            ..Default::default()
        };
        let arch = inr::grid_arch(&enc, 3);
        let mut s = grid_meta::initial_start(&arch, 1);
        for (i, v) in s.log_scales.iter_mut().enumerate() {
            *v = (i as f32 * 0.37).sin() / 3.0;
        }
        for (i, c) in s.pred_coefs.iter_mut().enumerate() {
            c[i % 5] = 1.0 / (i as f32 + 3.0);
        }
        let d = description(&cfg, &["a.png".into()], 7, Some(&s));
        let b = Base::new_grid(arch, s.params.clone(), d).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ckpt");
        std::fs::write(&p, b.to_bytes().unwrap()).unwrap();
        let (r, done) = load_checkpoint(&p, &cfg, &arch).unwrap();
        assert_eq!(done, 7);
        assert_eq!(r, s);
        let other = GridMetaConfig {
            seed: 1,
            ..cfg.clone()
        };
        assert!(load_checkpoint(&p, &other, &arch).is_err());
        // A final base (no state) is not a checkpoint.
        let fin = Base::new_grid(arch, s.params.clone(), description(&cfg, &[], 7, None));
        std::fs::write(&p, fin.unwrap().to_bytes().unwrap()).unwrap();
        assert!(load_checkpoint(&p, &cfg, &arch).is_err());
    }
}
