//! `inr meta-train`: learn a base (initialisation) with Reptile, with checkpoints and resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use inr::base::Base;
use inr::media::Image;
use inr::meta::{self, MetaConfig};
use inr::{EncodeConfig, Preset};

use super::{say, Ctx};

/// Meta-learn a base network (.inrb) that encoding starts from.
///
/// Meta-learn a base network (.inrb) from a folder of images with Reptile: each iteration fits
/// a random augmented crop (flips, transpositions, crop sizes between --crop-min and
/// --crop-max) for --inner-steps encoder steps from the current base and moves the base
/// towards the result. Deterministic for a seed; checkpoints every --checkpoint-every
/// iterations to OUT.ckpt, and --resume continues from it bit-for-bit.
///
/// The result is used with `inr encode --base OUT.inrb` (and `inr decode --base OUT.inrb`).
#[derive(clap::Args, Debug)]
pub struct MetaTrainArgs {
    /// Folder of training images (non-recursive; sorted by name).
    #[arg(value_name = "DATA_DIR")]
    pub data: PathBuf,
    /// Output base file.
    #[arg(short, long, value_name = "OUT.inrb")]
    pub output: PathBuf,
    /// Signal modality: `image`, or `audio` (DATA_DIR holds WAV files, mixed down to mono;
    /// each task is a random window of the preset's length with a random time offset, gain
    /// and polarity, fitted with the audio encoder's full-batch steps; the base is for
    /// `inr encode clip.wav` with the same preset and window).
    #[arg(long, default_value = "image", value_parser = ["image", "audio"])]
    pub modality: String,
    /// Audio: frames per window (default: the preset's window at the clips' sample rate);
    /// with --mode grid, frames per task crop (default 8192).
    #[arg(long)]
    pub window: Option<u32>,
    /// What to learn: `weights` (a start for per-image weight fitting, Reptile),
    /// `modulations` (a shared network plus a latent-to-shift map for `inr encode --mode
    /// modulations`; first-order meta-learning through the encoder's latent fit) or `grid`
    /// (a start for the synthesis network of `inr encode --mode grid`, Reptile over the grid
    /// encoder's own fits at rate weights drawn from the presets' range; with --modality
    /// audio, of the audio grid mode's segment networks, on random crops of the clips with a
    /// random gain and polarity, 300 iterations of 100-step fits by default) or `grid-shared`
    /// (a shared synthesis network for `inr encode --mode grid-shared`: one grid fit, network
    /// and latents together, of a mosaic of --crop-max centre crops of the images, for
    /// --iterations steps at rate weight --lambda; no checkpoints, about 3 minutes on
    /// kodim01-12).
    #[arg(long, value_enum, default_value_t = Mode::Weights)]
    pub mode: Mode,
    /// Modulations: latent values per grid node (default 24 for images, 32 for audio).
    #[arg(long)]
    pub latent_dim: Option<u8>,
    /// Modulations: latent grid spacing in pixels, or in frames for audio (default 16 for
    /// images, 32 for audio).
    #[arg(long)]
    pub cell: Option<u8>,
    /// Modulations: periodic features per axis (frequencies 1, 2, 4, ... cycles per cell;
    /// default 4 for images, 7 for audio).
    #[arg(long)]
    pub freqs: Option<u8>,
    /// Modulations, audio: SIREN w0 of the first layer (default 30); grid: w0 of every layer
    /// (default 2).
    #[arg(long)]
    pub w0: Option<u16>,
    /// Grid-shared: rate weight λ of the joint fit (default 0.005).
    #[arg(long)]
    pub lambda: Option<f32>,
    /// Grid: latent levels of the encoder the base is for (default 8, as `inr encode --mode
    /// grid`).
    #[arg(long)]
    pub levels: Option<u8>,
    /// Modulations: crops per outer step; audio: windows per outer step (fitted in parallel,
    /// their Reptile directions averaged).
    #[arg(long, default_value_t = 4)]
    pub tasks: usize,
    /// Modulations: width of the uniform noise added to the adapted latents (a stand-in for
    /// their quantization step).
    #[arg(long, default_value_t = 0.25)]
    pub noise: f32,
    /// Modulations: L2 penalty on the latents in the latent fit (relative to the MSE).
    #[arg(long, default_value_t = 0.1)]
    pub latent_l2: f32,
    /// Architecture: the preset's network (the base must match the encoder's architecture).
    #[arg(long, value_enum, default_value_t = Preset::Medium)]
    pub preset: Preset,
    /// Hidden width (overrides the preset).
    #[arg(long)]
    pub width: Option<usize>,
    /// Number of sine layers (overrides the preset).
    #[arg(long)]
    pub depth: Option<usize>,
    /// Output channels: 3 (RGB) or 1 (gray); training images are converted.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub channels: u8,
    /// Outer iterations (default 1000; 150 for grid, 300 for audio grid); grid-shared: steps
    /// of the joint fit (default 1000).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Encoder steps per task (default 16; 20 for audio modulations; for grid, the fitting
    /// budget of each task, default 100).
    #[arg(long)]
    pub inner_steps: Option<usize>,
    /// Inner Adam learning rate (default: 3e-4 for weights, the encoder's at the presets' step
    /// counts; 0.05 for modulations and 5e-3 for audio, the encoder's).
    #[arg(long)]
    pub inner_lr: Option<f32>,
    /// Pixels per inner step.
    #[arg(long, default_value_t = 16384)]
    pub batch: usize,
    /// Reptile step size at the start (decays linearly to --outer-lr-end); for modulations,
    /// the Adam learning rate of the base (default 1e-3, cosine decay to a tenth); for grid
    /// 0.1.
    #[arg(long)]
    pub outer_lr: Option<f32>,
    /// Reptile step size at the last iteration (default 0.05; for grid 0.1).
    #[arg(long)]
    pub outer_lr_end: Option<f32>,
    /// Smallest crop side in pixels (default 192; 48 for modulations; 256 for grid).
    #[arg(long)]
    pub crop_min: Option<u32>,
    /// Largest crop side in pixels (default 768; 96 for modulations; 256 for grid); grid-shared:
    /// the side of every crop (default 512).
    #[arg(long)]
    pub crop_max: Option<u32>,
    /// Seed of the initialisation and of the task sequence.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sparse meta-learning (weights mode, images): learn the base on the seeded support of
    /// this density (the one `inr encode --prune-method seeded --density D` uses), so that
    /// per-image networks are sparse from their first step; validation uses it too.
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,
    /// With --density: `seeded` (the pseudo-random support above) or `learned` (Meta-Sparse
    /// INR: the base starts dense, or from --init, and its hidden matrices are pruned by
    /// magnitude every 10 iterations along a cubic schedule down to --density, reached after
    /// --prune-until of the iterations; the inner fits keep the current support; the result's
    /// support is its non-zero weights, which `inr encode --prune-method base` keeps).
    #[arg(long, value_enum, default_value_t = SupportArg::Seeded)]
    pub support: SupportArg,
    /// Learned support: fraction of the iterations after which the density reaches --density
    /// (0: prune once, before the first iteration).
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub prune_until: f64,
    /// Weights mode: start from this base (same architecture) instead of the random
    /// initialisation of --seed (for example a dense base to prune with --support learned).
    #[arg(long, value_name = "BASE.inrb")]
    pub init: Option<PathBuf>,
    /// Weights mode: Meta-SGD per tensor, with this step on the log learning-rate multipliers
    /// (e.g. 0.01): a learning-rate multiplier per tensor is learned with the base by a
    /// first-order hypergradient and used by the inner fits and the validation; it is stored
    /// in the base's description (`lr_scale`), and `inr encode --base` fits with it.
    #[arg(long, value_name = "BETA")]
    pub meta_sgd: Option<f32>,
    /// Validation images (a folder): mean PSNR after --val-steps encoder steps, printed every
    /// --val-every iterations, against the random initialisation.
    #[arg(long, value_name = "DIR")]
    pub val: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub val_steps: usize,
    #[arg(long, default_value_t = 250)]
    pub val_every: usize,
    /// Write OUT.ckpt every this many iterations.
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Continue from OUT.ckpt (same flags required).
    #[arg(long)]
    pub resume: bool,
    /// Overwrite OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

/// How the support of a sparse base is chosen (`--support`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupportArg {
    Seeded,
    Learned,
}

/// What `inr meta-train` learns.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Weights,
    Modulations,
    /// A grid base: the start of the synthesis network of `inr encode --mode grid`.
    Grid,
    /// A shared synthesis network for `inr encode --mode grid-shared` (codec-spec §13.8).
    GridShared,
}

pub(super) fn load_dir(dir: &Path, channels: u8) -> anyhow::Result<(Vec<Image>, Vec<String>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut images = Vec::new();
    let mut names = Vec::new();
    for p in paths {
        let Ok(l) = inr::media::load_image(&p) else {
            continue; // not an image
        };
        images.push(to_channels(l.image, channels));
        names.push(
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    if images.is_empty() {
        bail!("no images in {}", dir.display());
    }
    Ok((images, names))
}

/// Gray to RGB by repetition, RGB to gray by the mean (rounded).
fn to_channels(img: Image, channels: u8) -> Image {
    if img.channels == channels {
        return img;
    }
    let data = if channels == 3 {
        img.data.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        img.data
            .chunks_exact(3)
            .map(|p| ((u16::from(p[0]) + u16::from(p[1]) + u16::from(p[2]) + 1) / 3) as u8)
            .collect()
    };
    Image {
        channels,
        data,
        ..img
    }
}

/// The progress of a meta-training run (every mode): the bar, the wall clock, the mean task
/// PSNR of the last 50 iterations, and when checkpoints are due.
pub(super) struct Meter {
    pub pb: indicatif::ProgressBar,
    pub t0: Instant,
    recent: Vec<f64>,
    every: usize,
    total: usize,
}

impl Meter {
    /// A run of `total` iterations resumed after `from`, checkpointing every `every`.
    pub fn new(quiet: bool, total: usize, from: usize, every: usize) -> Meter {
        let pb = super::counting_bar(quiet);
        pb.set_length(total as u64);
        pb.set_position(from as u64);
        Meter {
            pb,
            t0: Instant::now(),
            recent: Vec::new(),
            every: every.max(1),
            total,
        }
    }

    /// Records the task PSNR of iteration `i`: moves the bar and shows the recent mean.
    /// Returns the iterations done, that mean, and whether a checkpoint is due (every
    /// `every` iterations and after the last).
    pub fn record(&mut self, i: usize, psnr: f64) -> (usize, f64, bool) {
        self.recent.push(psnr);
        if self.recent.len() > 50 {
            self.recent.remove(0);
        }
        let mean = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        self.pb.set_position(i as u64 + 1);
        self.pb.set_message(format!("task PSNR {mean:.2} dB"));
        let n = i + 1;
        (n, mean, n.is_multiple_of(self.every) || n == self.total)
    }
}

/// Writes a trained base to `args.output` (atomically; an existing file only with `--force`)
/// and reports it: with `--json` its output path, id, architecture, iterations and seconds plus
/// `extra`, else the line `summary(seconds)`.
pub(super) fn finish(
    args: &MetaTrainArgs,
    ctx: &Ctx,
    meter: &Meter,
    base: &Base,
    done: usize,
    extra: serde_json::Value,
    summary: impl FnOnce(f64) -> String,
) -> anyhow::Result<()> {
    inr::util::write_atomic(&args.output, &base.to_bytes()?, args.force)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let secs = meter.t0.elapsed().as_secs_f64();
    if ctx.json {
        let mut v = serde_json::json!({
            "output": super::path_str(&args.output),
            "id": format!("{:016x}", base.id()),
            "arch": base.arch,
            "iterations": done,
            "seconds": secs,
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        return super::print_json(&v);
    }
    say(summary(secs))
}

/// A `meta-train` checkpoint: the base file at `path`, its description (JSON) and the
/// iterations it had done. Refused, naming the saved settings, unless its `config` equals `cfg`
/// and `matches` accepts the base (architecture, kind, window).
pub(super) fn read_checkpoint<C: serde::de::DeserializeOwned + PartialEq>(
    path: &Path,
    cfg: &C,
    matches: impl Fn(&Base) -> bool,
) -> anyhow::Result<(Base, serde_json::Value, usize)> {
    let bytes = super::read_limited(path, super::MAX_BASE_BYTES)?;
    let b = Base::from_bytes(&bytes, &inr::format::Limits::default())
        .with_context(|| format!("cannot load checkpoint {}", path.display()))?;
    let d: serde_json::Value =
        serde_json::from_str(&b.description).context("checkpoint description is not JSON")?;
    let saved: C =
        serde_json::from_value(d["config"].clone()).context("checkpoint has no config")?;
    if saved != *cfg || !matches(&b) {
        bail!(
            "checkpoint {} was written with other settings ({}); rerun with the same flags",
            path.display(),
            d["config"]
        );
    }
    let done = d["iterations_done"].as_u64().unwrap_or(0) as usize;
    Ok((b, d, done))
}

/// Writes a checkpoint, replacing the previous one; any error names the file.
pub(super) fn write_checkpoint(
    path: &Path,
    base: Result<Base, inr::base::BaseError>,
) -> anyhow::Result<()> {
    base.map_err(anyhow::Error::from)
        .and_then(|b| Ok(b.to_bytes()?))
        .and_then(|bytes| Ok(inr::util::write_atomic(path, &bytes, true)?))
        .with_context(|| format!("cannot write checkpoint {}", path.display()))
}

pub(super) fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

/// Description stored in the base: everything needed to reproduce it (no timestamps, so the
/// same run gives the same bytes and id).
fn description(cfg: &MetaConfig, names: &[String], done: usize, lr_scale: &[f32]) -> String {
    let mut d = serde_json::json!({
        "trainer": "inr meta-train (Reptile)",
        "images": names,
        "config": cfg,
        "iterations_done": done,
    });
    if !lr_scale.is_empty() {
        d["lr_scale"] = serde_json::json!(lr_scale);
    }
    d.to_string()
}

pub fn run(args: MetaTrainArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if args.output.exists() && !args.force {
        bail!(
            "{} exists (use --force to replace it)",
            args.output.display()
        );
    }
    if args.channels == 2 {
        bail!("--channels must be 1 or 3");
    }
    if args.density.is_some() && (args.modality == "audio" || args.mode != Mode::Weights) {
        bail!("--density is for the weights mode of images");
    }
    if args.density.is_some_and(|d| !(d > 0.0 && d <= 1.0)) {
        bail!("--density must be in (0, 1]");
    }
    if args.support == SupportArg::Learned && args.density.is_none() {
        bail!("--support learned needs --density");
    }
    if !(0.0..=1.0).contains(&args.prune_until) {
        bail!("--prune-until must be in [0, 1]");
    }
    if args.init.is_some() && (args.modality == "audio" || args.mode != Mode::Weights) {
        bail!("--init is for the weights mode of images");
    }
    if args.meta_sgd.is_some() && (args.modality == "audio" || args.mode != Mode::Weights) {
        bail!("--meta-sgd is for the weights mode of images");
    }
    if args.meta_sgd.is_some_and(|b| !(b > 0.0 && b <= 1.0)) {
        bail!("--meta-sgd must be in (0, 1]");
    }
    if args.mode == Mode::GridShared {
        if args.modality == "audio" {
            bail!("--mode grid-shared is for images");
        }
        return super::meta_train_grid::run_shared(args, ctx);
    }
    if args.mode == Mode::Grid {
        if args.modality == "audio" {
            return super::meta_train_audio_grid::run(args, ctx);
        }
        return super::meta_train_grid::run(args, ctx);
    }
    if args.levels.is_some() {
        bail!("--levels is for --mode grid");
    }
    if args.modality == "audio" {
        if args.mode == Mode::Modulations {
            return super::meta_train_mod::run(args, ctx);
        }
        return super::meta_train_audio::run(args, ctx);
    }
    if args.mode == Mode::Modulations {
        return super::meta_train_mod::run(args, ctx);
    }
    let enc = EncodeConfig {
        preset: args.preset,
        width: args.width,
        depth: args.depth,
        ..EncodeConfig::default()
    };
    let arch = enc.arch(args.channels)?;
    let (images, names) = load_dir(&args.data, args.channels)?;
    let val = match &args.val {
        Some(d) => load_dir(d, args.channels)?.0,
        None => Vec::new(),
    };
    let cfg = MetaConfig {
        iterations: args.iterations.unwrap_or(1000),
        inner_steps: args.inner_steps.unwrap_or(16),
        inner_lr: args.inner_lr.unwrap_or(3e-4),
        batch: args.batch.max(1),
        outer_lr: args.outer_lr.unwrap_or(0.5),
        outer_lr_end: args.outer_lr_end.unwrap_or(0.05),
        crop_min: args.crop_min.unwrap_or(192).max(1),
        crop_max: args.crop_max.unwrap_or(768).max(1),
        seed: args.seed,
        density: args.density,
        learned_support: (args.support == SupportArg::Learned).then_some(args.prune_until),
        init: None,
        meta_sgd: args.meta_sgd,
    };
    let init = match &args.init {
        Some(path) => {
            let bytes = super::read_limited(path, super::MAX_BASE_BYTES)?;
            let b = Base::from_bytes(&bytes, &inr::format::Limits::default())
                .with_context(|| format!("cannot load --init {}", path.display()))?;
            if b.arch != arch {
                bail!(
                    "--init {} is for another architecture than --preset/--width/--depth",
                    path.display()
                );
            }
            Some(b)
        }
        None => None,
    };
    let mut cfg = cfg;
    cfg.init = init.as_ref().map(|b| format!("{:016x}", b.id()));
    let ckpt = checkpoint_path(&args.output);
    let mut lr_scale: Vec<f32> = Vec::new();
    let (mut params, start) = if args.resume {
        let (b, d, done) = read_checkpoint(&ckpt, &cfg, |b| b.arch == arch)?;
        say(format!(
            "resuming at iteration {done} from {}",
            ckpt.display()
        ))?;
        if let Some(v) = d.get("lr_scale") {
            lr_scale = serde_json::from_value(v.clone())
                .context("checkpoint has malformed learning-rate multipliers")?;
            if lr_scale.len() != arch.num_tensors() {
                bail!(
                    "checkpoint has {} learning-rate multipliers",
                    lr_scale.len()
                );
            }
        }
        (b.params, done)
    } else if let Some(b) = init {
        (b.params, 0)
    } else {
        let shape = inr::bench_api::shape_of(&arch);
        (inr::bench_api::siren_init(&shape, args.seed), 0)
    };
    // Validation on the support the encoder will use: the seeded one, or the base's own
    // (non-zero weights) for a learned support; the random start on the seeded one.
    let seeded = cfg
        .density
        .map_or_else(Vec::new, |d| meta::seeded_support(&arch, d));
    let val_masks = |p: &[f32]| {
        if cfg.learned_support.is_some() {
            meta::nonzero_support(&arch, p)
        } else {
            seeded.clone()
        }
    };
    let random = inr::bench_api::siren_init(&inr::bench_api::shape_of(&arch), args.seed);
    let vlr = cfg.inner_lr;
    let vbatch = cfg.batch.max(32768);
    let val_random = if val.is_empty() {
        None
    } else {
        let p = meta::validate(&arch, &val, &random, (args.val_steps, vlr, vbatch), &seeded);
        say(format!(
            "validation: random init, PSNR after {} steps: {p:.2} dB",
            args.val_steps
        ))?;
        Some(p)
    };
    let mut meter = Meter::new(ctx.quiet, cfg.iterations, start, args.checkpoint_every);
    let mut err: Option<anyhow::Error> = None;
    let done = meta::train_scaled(
        &arch,
        &images,
        &cfg,
        &mut params,
        &mut lr_scale,
        start,
        &mut |i, p, s, psnr| {
            let (n, mean, checkpoint) = meter.record(i, psnr);
            if checkpoint {
                let r = write_checkpoint(
                    &ckpt,
                    Base::new(arch, p.to_vec(), description(&cfg, &names, n, s)),
                );
                if let Err(e) = r {
                    err = Some(e);
                    return false;
                }
            }
            if !val.is_empty() && n % args.val_every.max(1) == 0 {
                let inner = (args.val_steps, vlr, vbatch);
                let v = meta::validate_scaled(&arch, &val, p, inner, &val_masks(p), s);
                // With Meta-SGD, also without the multipliers: what the rates alone buy.
                let plain = (!s.is_empty())
                    .then(|| meta::validate(&arch, &val, p, inner, &val_masks(p)))
                    .map_or(String::new(), |u| {
                        format!(" ({u:.2} dB without the multipliers)")
                    });
                meter.pb.suspend(|| {
                    eprintln!(
                        "iteration {n}: validation PSNR after {} steps {v:.2} dB{plain} (random \
                     init {:.2}), recent task PSNR {mean:.2} dB, {:.0} s",
                        args.val_steps,
                        val_random.unwrap_or(f64::NAN),
                        meter.t0.elapsed().as_secs_f64()
                    );
                    if !s.is_empty() {
                        let r: Vec<String> = s.iter().map(|x| format!("{x:.2}")).collect();
                        eprintln!("  learning-rate multipliers: {}", r.join(" "));
                    }
                });
            }
            true
        },
    );
    meter.pb.finish_and_clear();
    if let Some(e) = err {
        return Err(e);
    }
    let base = Base::new(arch, params, description(&cfg, &names, done, &lr_scale))?;
    let extra = serde_json::json!({
        "images": names,
        "lr_scale": lr_scale,
    });
    finish(&args, ctx, &meter, &base, done, extra, |secs| {
        format!(
            "wrote {} (base {:016x}, {}x{} network, {done} iterations, {secs:.0} s)",
            args.output.display(),
            base.id(),
            arch.depth,
            arch.width
        )
    })
}
