//! `inr meta-train --modality audio`: learn an audio base (codec-spec §10.4) with Reptile over
//! random windows of WAV clips, with checkpoints and resume (as the image trainer).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use inr::audio::{Audio, AudioSpec};
use inr::base::Base;
use inr::meta::{self, AudioMetaConfig, AudioTask};
use inr::AudioEncodeConfig;

use super::meta_train::{
    checkpoint_path, finish, read_checkpoint, write_checkpoint, MetaTrainArgs,
};
use super::Ctx;

/// Default encoder steps per window.
const INNER_STEPS: usize = 16;
/// Validation windows taken from the --val clips (evenly spread).
const MAX_VAL_WINDOWS: usize = 48;

/// An informational line on stderr (stdout carries only the result, JSON with `--json`).
fn note(ctx: &Ctx, line: impl std::fmt::Display) {
    if !ctx.quiet {
        eprintln!("{line}");
    }
}

/// Mixes a clip down to mono (mean of the channels).
fn to_mono(a: Audio) -> Audio {
    let c = usize::from(a.spec.channels.max(1));
    if c == 1 {
        return a;
    }
    let samples = a
        .samples
        .chunks_exact(c)
        .map(|f| f.iter().sum::<f32>() / c as f32)
        .collect();
    Audio {
        spec: AudioSpec {
            channels: 1,
            ..a.spec
        },
        samples,
    }
}

/// The WAV files of `dir` (non-recursive, sorted by name), mixed down to mono; all must have
/// the same sample rate.
pub(super) fn load_clips(dir: &Path) -> anyhow::Result<(Vec<Audio>, Vec<String>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && super::audio::is_wav(p))
        .collect();
    paths.sort();
    let mut clips = Vec::new();
    let mut names = Vec::new();
    for p in paths {
        let a = inr::audio::load_wav(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if let Some(first) = clips.first() {
            let first: &Audio = first;
            if first.spec.sample_rate != a.spec.sample_rate {
                bail!(
                    "{} is at {} Hz, the other clips at {} Hz (expected one sample rate)",
                    p.display(),
                    a.spec.sample_rate,
                    first.spec.sample_rate
                );
            }
        }
        clips.push(to_mono(a));
        names.push(
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    if clips.is_empty() {
        bail!("no WAV files in {}", dir.display());
    }
    Ok((clips, names))
}

/// Validation windows: consecutive windows of the clips, at most [`MAX_VAL_WINDOWS`] evenly
/// spread, unscaled.
fn val_windows(clips: &[Audio], window: u32) -> Vec<AudioTask> {
    let l = window as usize;
    let mut all = Vec::new();
    for c in clips {
        for w in c.samples.chunks_exact(l) {
            all.push(AudioTask {
                samples: w.to_vec(),
                channels: 1,
                sample_rate: c.spec.sample_rate,
            });
        }
    }
    let n = all.len();
    if n <= MAX_VAL_WINDOWS {
        return all;
    }
    (0..MAX_VAL_WINDOWS)
        .map(|k| all[k * n / MAX_VAL_WINDOWS].clone())
        .collect()
}

/// Description stored in the base: everything needed to reproduce it (no timestamps).
fn description(cfg: &AudioMetaConfig, preset: &str, names: &[String], done: usize) -> String {
    serde_json::json!({
        "trainer": "inr meta-train --modality audio (Reptile)",
        "preset": preset,
        "clips": names,
        "config": cfg,
        "iterations_done": done,
    })
    .to_string()
}

pub fn run(args: MetaTrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let (clips, names) = load_clips(&args.data)?;
    let rate = clips[0].spec.sample_rate;
    let spec = AudioSpec {
        channels: 1,
        ..clips[0].spec
    };
    let enc = AudioEncodeConfig {
        preset: args.preset,
        width: args.width,
        depth: args.depth,
        window: args.window,
        ..AudioEncodeConfig::default()
    };
    let (arch, window) = enc.arch_and_window(&spec)?;
    let val = match &args.val {
        Some(d) => val_windows(&load_clips(d)?.0, window),
        None => Vec::new(),
    };
    let cfg = AudioMetaConfig {
        iterations: args.iterations.unwrap_or(1000),
        tasks: args.tasks.max(1),
        inner_steps: args.inner_steps.unwrap_or(INNER_STEPS),
        inner_lr: args.inner_lr.unwrap_or(5e-3),
        outer_lr: args.outer_lr.unwrap_or(0.5),
        outer_lr_end: args.outer_lr_end.unwrap_or(0.05),
        window,
        seed: args.seed,
        ..AudioMetaConfig::default()
    };
    let preset = super::encode::preset_name(args.preset);
    let ckpt = checkpoint_path(&args.output);
    let shape = inr::bench_api::shape_of(&arch);
    let random = inr::bench_api::siren_init(&shape, args.seed);
    let (mut params, start) = if args.resume {
        let (b, _, done) = read_checkpoint(&ckpt, &cfg, |b| {
            b.arch == arch && b.audio_window == Some(window)
        })?;
        note(
            ctx,
            format!("resuming at iteration {done} from {}", ckpt.display()),
        );
        (b.params, done)
    } else {
        (random.clone(), 0)
    };
    note(
        ctx,
        format!(
            "audio base: {} clip(s) at {rate} Hz, window {window} frames, {}x{} network \
         ({} weights), {} iterations x {} windows x {} steps",
            clips.len(),
            arch.depth,
            arch.width,
            arch.num_params(),
            cfg.iterations,
            cfg.tasks,
            cfg.inner_steps
        ),
    );
    let vlr = cfg.inner_lr;
    let val_random = if val.is_empty() {
        None
    } else {
        let p = meta::audio_validate(&arch, &val, &random, args.val_steps, vlr);
        note(
            ctx,
            format!(
                "validation: random init, PSNR after {} steps: {p:.2} dB ({} windows)",
                args.val_steps,
                val.len()
            ),
        );
        Some(p)
    };
    let mut meter =
        super::meta_train::Meter::new(ctx.quiet, cfg.iterations, start, args.checkpoint_every);
    let mut err: Option<anyhow::Error> = None;
    let done = meta::audio_train(
        &arch,
        &clips,
        &cfg,
        &mut params,
        start,
        &mut |i, p, psnr| {
            let (n, mean, checkpoint) = meter.record(i, psnr);
            if checkpoint {
                let r = write_checkpoint(
                    &ckpt,
                    Base::new_audio(
                        arch,
                        window,
                        p.to_vec(),
                        description(&cfg, &preset, &names, n),
                    ),
                );
                if let Err(e) = r {
                    err = Some(e);
                    return false;
                }
            }
            if !val.is_empty() && n % args.val_every.max(1) == 0 {
                let v = meta::audio_validate(&arch, &val, p, args.val_steps, vlr);
                meter.pb.suspend(|| {
                    eprintln!(
                        "iteration {n}: validation PSNR after {} steps {v:.2} dB (random init \
                         {:.2}), recent task PSNR {mean:.2} dB, {:.0} s",
                        args.val_steps,
                        val_random.unwrap_or(f64::NAN),
                        meter.t0.elapsed().as_secs_f64()
                    )
                });
            }
            true
        },
    );
    meter.pb.finish_and_clear();
    if let Some(e) = err {
        return Err(e);
    }
    let base = Base::new_audio(
        arch,
        window,
        params,
        description(&cfg, &preset, &names, done),
    )?;
    let extra = serde_json::json!({
        "modality": "audio",
        "window": window,
        "clips": names,
    });
    finish(&args, ctx, &meter, &base, done, extra, |secs| {
        format!(
            "wrote {} (audio base {:016x}, {}x{} network, window {window}, {done} iterations, \
             {secs:.0} s)",
            args.output.display(),
            base.id(),
            arch.depth,
            arch.width
        )
    })
}
