//! `inr meta-train --mode modulations`: learn a modulation base (shared network and
//! latent-to-shift map) with first-order meta-learning through the encoder's latent fit.

use anyhow::{bail, Context as _};
use inr::base::{Base, ModSpec};
use inr::format::Arch;
use inr::modulation::{self, Adam, LatentFit, ModMetaConfig, ModMetaState, ModNet};

use super::meta_train::{checkpoint_path, finish, load_dir, MetaTrainArgs};
use super::{say, Ctx};

/// Description stored in the base (no timestamps: the same run gives the same bytes).
fn description(cfg: &ModMetaConfig, arch: &Arch, names: &[String], done: usize) -> String {
    serde_json::json!({
        "trainer": "inr meta-train --mode modulations (first-order, latent fit inner loop)",
        if arch.coord_dims == 1 { "clips" } else { "images" }: names,
        "arch": arch,
        "config": cfg,
        "iterations_done": done,
    })
    .to_string()
}

/// The training signals: images, or mono clips (a modulation base for audio).
enum Data {
    Images(Vec<inr::media::Image>),
    Clips(Vec<inr::audio::Audio>),
}

pub fn run(args: MetaTrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let audio = args.modality == "audio";
    if !audio && args.channels != 3 {
        bail!("image modulation bases are RGB (--channels 3)");
    }
    let latent_dim = args.latent_dim.unwrap_or(if audio { 32 } else { 24 });
    let cell = args.cell.unwrap_or(if audio { 32 } else { 16 });
    if latent_dim == 0 || cell < 2 {
        bail!("--latent-dim must be >= 1 and --cell >= 2");
    }
    if !audio && args.w0.is_some() {
        bail!("--w0 is for audio modulation bases");
    }
    let arch = Arch {
        coord_dims: if audio { 1 } else { 2 },
        out_channels: if audio { 1 } else { 3 },
        width: args.width.unwrap_or(64).clamp(1, 4096) as u16,
        depth: args.depth.unwrap_or(4).clamp(1, 64) as u8,
        pe_freqs: args.freqs.unwrap_or(if audio { 7 } else { 4 }),
        pe_base_milli: 2000,
        w0_first: args.w0.unwrap_or(30).max(1),
        w0_hidden: 30,
    };
    if audio {
        arch.validate_net(&inr::format::Limits::default())?;
    } else {
        arch.validate(&inr::format::Limits::default())?;
    }
    let spec = ModSpec { latent_dim, cell };
    let (data, names, val_images, val_clips) = if audio {
        let (clips, names) = super::meta_train_audio::load_clips(&args.data)?;
        let val = match &args.val {
            Some(d) => super::meta_train_audio::load_clips(d)?
                .0
                .into_iter()
                .map(|a| a.samples)
                .collect(),
            None => Vec::new(),
        };
        (Data::Clips(clips), names, Vec::new(), val)
    } else {
        let (images, names) = load_dir(&args.data, 3)?;
        let val = match &args.val {
            Some(d) => load_dir(d, 3)?.0,
            None => Vec::new(),
        };
        (Data::Images(images), names, val, Vec::new())
    };
    let has_val = !val_images.is_empty() || !val_clips.is_empty();
    let cfg = ModMetaConfig {
        iterations: args.iterations.unwrap_or(1000),
        tasks: args.tasks.max(1),
        crop_min: args
            .crop_min
            .unwrap_or(if audio { 2048 } else { 48 })
            .max(1),
        crop_max: args
            .crop_max
            .unwrap_or(if audio { 4096 } else { 96 })
            .max(1),
        inner: LatentFit {
            steps: args.inner_steps.unwrap_or(if audio { 20 } else { 16 }),
            lr: args.inner_lr.unwrap_or(0.05),
            frac: 1.0,
            l2: args.latent_l2,
        },
        outer_lr: args.outer_lr.unwrap_or(1e-3),
        noise: args.noise,
        seed: args.seed,
    };
    let vfit = LatentFit {
        steps: args.val_steps,
        frac: 0.5,
        ..cfg.inner
    };
    let ckpt = checkpoint_path(&args.output);
    let mut state_path = ckpt.as_os_str().to_owned();
    state_path.push(".json");
    let state_path = std::path::PathBuf::from(state_path);
    let mut net = ModNet::init(
        arch,
        usize::from(spec.latent_dim),
        u32::from(spec.cell),
        args.seed,
    );
    let mut opt = Adam::new(net.params.len() + net.map.len());
    let mut start = 0;
    if args.resume {
        let text = std::fs::read_to_string(&state_path)
            .with_context(|| format!("cannot read {}", state_path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).context("bad checkpoint")?;
        let saved: ModMetaConfig =
            serde_json::from_value(v["config"].clone()).context("checkpoint has no config")?;
        let saved_arch: Arch =
            serde_json::from_value(v["arch"].clone()).context("checkpoint has no arch")?;
        if saved != cfg || saved_arch != arch {
            bail!("checkpoint was written with other settings; rerun with the same flags");
        }
        let st: ModMetaState =
            serde_json::from_value(v["state"].clone()).context("checkpoint has no state")?;
        net = ModNet::from_flat(arch, net.latent_dim, net.cell, &st.flat)
            .context("checkpoint weights do not match the architecture")?;
        opt = st.opt;
        start = st.iteration;
        say(format!("resuming at iteration {start}"))?;
    }
    let val_at = |net: &ModNet| {
        if audio {
            modulation::validate_audio(net, &val_clips, &vfit)
        } else {
            modulation::validate(net, &val_images, &vfit)
        }
    };
    if has_val && start == 0 {
        say(format!(
            "validation: initial network, PSNR after {} latent steps: {:.2} dB",
            args.val_steps,
            val_at(&net)
        ))?;
    }
    let mut meter =
        super::meta_train::Meter::new(ctx.quiet, cfg.iterations, start, args.checkpoint_every);
    let save = |net: &ModNet, opt: &Adam, n: usize| -> anyhow::Result<()> {
        let b = Base::new_modulation(arch, spec, net.flat(), description(&cfg, &arch, &names, n))?;
        inr::util::write_atomic(&ckpt, &b.to_bytes()?, true)?;
        let st = ModMetaState {
            iteration: n,
            flat: net.flat(),
            opt: opt.clone(),
        };
        let v = serde_json::json!({"config": cfg, "arch": arch, "state": st});
        inr::util::write_atomic(&state_path, v.to_string().as_bytes(), true)?;
        Ok(())
    };
    for i in start..cfg.iterations {
        let psnr = match &data {
            Data::Images(images) => {
                modulation::meta_train_step(&mut net, &mut opt, images, &cfg, i)
            }
            Data::Clips(clips) => {
                modulation::meta_train_step_audio(&mut net, &mut opt, clips, &cfg, i)
            }
        };
        let (n, mean, checkpoint) = meter.record(i, psnr);
        if checkpoint {
            save(&net, &opt, n).with_context(|| format!("cannot write {}", ckpt.display()))?;
        }
        if has_val && n % args.val_every.max(1) == 0 {
            let v = val_at(&net);
            meter.pb.suspend(|| {
                eprintln!(
                    "iteration {n}: validation PSNR after {} latent steps {v:.2} dB, recent \
                     task PSNR {mean:.2} dB, {:.0} s",
                    args.val_steps,
                    meter.t0.elapsed().as_secs_f64()
                )
            });
        }
    }
    meter.pb.finish_and_clear();
    let done = cfg.iterations.max(start);
    let base = Base::new_modulation(
        arch,
        spec,
        net.flat(),
        description(&cfg, &arch, &names, done),
    )?;
    let extra = serde_json::json!({
        "latent_dim": spec.latent_dim,
        "cell": spec.cell,
        "images": names,
    });
    finish(&args, ctx, &meter, &base, done, extra, |secs| {
        format!(
            "wrote {} (modulation base {:016x}, {}x{} network, latent {} per {}-{} cell, {done} \
             iterations, {secs:.0} s)",
            args.output.display(),
            base.id(),
            arch.depth,
            arch.width,
            spec.latent_dim,
            spec.cell,
            if audio { "frame" } else { "px" }
        )
    })
}
