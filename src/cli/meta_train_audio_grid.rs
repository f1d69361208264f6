//! `inr meta-train --modality audio --mode grid`: learn an audio grid base (codec-spec §10.5,
//! modality 2: the start of the segment networks of `inr encode clip.wav --mode grid`) with
//! Reptile over the audio grid encoder's own fits of random crops, with checkpoints and resume.

use anyhow::Context as _;
use inr::base::Base;
use inr::grid_meta::{self, AudioGridMetaConfig};

use super::meta_train::{
    checkpoint_path, finish, read_checkpoint, write_checkpoint, MetaTrainArgs,
};
use super::meta_train_audio::load_clips;
use super::{say, Ctx};

/// Description stored in the base: everything needed to reproduce it (no timestamps, so the
/// same run gives the same bytes and id).
fn description(cfg: &AudioGridMetaConfig, names: &[String], done: usize) -> String {
    serde_json::json!({
        "trainer": "inr meta-train --modality audio --mode grid (Reptile over audio grid fits)",
        "clips": names,
        "config": cfg,
        "iterations_done": done,
    })
    .to_string()
}

pub fn run(args: MetaTrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let d = AudioGridMetaConfig::default();
    let cfg = AudioGridMetaConfig {
        iterations: args.iterations.unwrap_or(d.iterations),
        budget: args.inner_steps.unwrap_or(d.budget).max(1),
        outer_lr: args.outer_lr.unwrap_or(d.outer_lr),
        crop: args.window.unwrap_or(d.crop).max(1),
        seed: args.seed,
        ..d
    };
    let enc = inr::AudioGridEncodeConfig::default();
    let mut ecfg = inr::AudioGridEncodeConfig {
        w0: args.w0.unwrap_or(enc.w0),
        levels: args.levels.unwrap_or(enc.levels),
        ..enc
    };
    if let Some(w) = args.width {
        ecfg.width = u16::try_from(w).context("--width must be at most 65535")?;
    }
    if let Some(dp) = args.depth {
        ecfg.depth = u8::try_from(dp).context("--depth must be at most 8")?;
    }
    // Clips are mixed down to mono: the base is for mono clips.
    let arch = ecfg.arch(1);
    inr::format::validate_audio_grid_arch(&arch, &inr::format::Limits::default())?;
    let (clips, names) = load_clips(&args.data)?;
    let ckpt = checkpoint_path(&args.output);
    let (mut params, from) = if args.resume {
        let (b, _, done) = read_checkpoint(&ckpt, &cfg, |b| b.grid_audio && b.arch == arch)?;
        say(format!(
            "resuming at iteration {done} from {}",
            ckpt.display()
        ))?;
        (b.params, done)
    } else {
        (inr::grid::init_params(&arch, args.seed), 0)
    };
    let mut meter =
        super::meta_train::Meter::new(ctx.quiet, cfg.iterations, from, args.checkpoint_every);
    let mut err: Option<anyhow::Error> = None;
    // The global thread pool (`--threads`) runs the fits.
    let done = grid_meta::train_audio(&arch, &clips, &cfg, &mut params, from, &mut |i, p, psnr| {
        let (n, _, checkpoint) = meter.record(i, psnr);
        if checkpoint {
            let b = Base::new_audio_grid(arch, p.to_vec(), description(&cfg, &names, n));
            if let Err(e) = write_checkpoint(&ckpt, b) {
                err = Some(e);
                return false;
            }
        }
        true
    });
    meter.pb.finish_and_clear();
    if let Some(e) = err {
        return Err(e);
    }
    let base = Base::new_audio_grid(arch, params, description(&cfg, &names, done))?;
    let extra = serde_json::json!({
        "kind": "audio grid",
        "clips": names,
    });
    finish(&args, ctx, &meter, &base, done, extra, |secs| {
        format!(
            "wrote {} (audio grid base {:016x}, {} levels, {}x{} synthesis, {done} iterations, \
             {secs:.0} s)",
            args.output.display(),
            base.id(),
            arch.coord_dims,
            arch.depth,
            arch.width
        )
    })
}
