//! `inr batch`: compress a folder tree (binary-side glue).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context};
use inr::batch::{self, BatchEvent, BatchOptions, InrBatchCodec, RowStatus, Shard};
use inr::{EncodeConfig, Preset};

/// Compress every image and WAV file of a folder tree into .inr files (resumable).
///
/// Compress every image and WAV file under IN_DIR into OUT_DIR (mirrored paths, `.inr`), with a
/// resumable manifest; or merge shard manifests with `--merge OUT_DIR`.
///
/// WAV files are coded as `inr encode` codes them: the audio grid mode by default, the weight
/// mode with `--mode weights`, the modulation mode with `--mode modulations` and an audio
/// modulation `--base` (this binary embeds none); `--preset`, `--steps`, `--seed` and `--kbps`
/// apply to them (`--width`, `--depth` and `--bits` too in the weight mode, `--latent-step` in
/// the modulation mode). An audio `--base` file codes them (and picks their mode without
/// --mode); `--bpp`, `--psnr` and `--output-layer` are for images. The manifest gives images'
/// rates in `bpp` and audio's in `kbps`. A file that misses its `--bpp` (±3 %) or `--kbps` (−3 % … 0 %) target is kept
/// (rate control keeps the best file it found), warned about and listed in `off_target`
/// with `--json`.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Input folder (searched recursively; files that are neither images nor WAV are skipped).
    #[arg(required_unless_present = "merge")]
    pub in_dir: Option<PathBuf>,
    /// Output folder.
    #[arg(short, long, value_name = "OUT_DIR", required_unless_present = "merge")]
    pub output: Option<PathBuf>,
    /// Merge manifest-<i>-of-<n>.csv files in OUT_DIR into manifest.csv, then exit.
    #[arg(long, value_name = "OUT_DIR", conflicts_with_all = ["in_dir", "output"])]
    pub merge: Option<PathBuf>,
    /// Quality preset.
    #[arg(long, value_enum, default_value = "medium")]
    pub preset: Preset,
    /// Hidden layer width (overrides the preset). Weight mode: by default the preset's, but
    /// under --bpp from a random start (no base for the preset, or --base none) the width
    /// the byte budget buys, about 1.3 hidden weights per byte (codec::width_for_rate).
    #[arg(long)]
    pub width: Option<usize>,
    /// Number of sine layers (overrides the preset).
    #[arg(long)]
    pub depth: Option<usize>,
    /// Quantisation bits (overrides the preset).
    #[arg(long)]
    pub bits: Option<u8>,
    /// Fitting steps (overrides the preset).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Encoder seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only the files whose index in the sorted list is i mod n (e.g. 0/4).
    #[arg(long, value_name = "i/n")]
    pub shard: Option<Shard>,
    /// Coding mode (see `inr encode --help`): `grid` fits a latent pyramid and a small SIREN
    /// per image (about 21 s per Kodak image on two AVX-512 cores, 50–60 s on a 2-core Zen 1
    /// EPYC; --preset sets the rate weight,
    /// --steps the fitting steps, --width/--depth/--bits the synthesis); `weights` a whole
    /// network per image (minutes); `modulations` encodes in seconds from the embedded
    /// modulation base (or --base FILE.inrb); `grid-shared` fits only the latent pyramid (and
    /// the output layer, see --output-layer) of a shared synthesis network (the embedded one,
    /// or --base FILE.inrb; a few seconds per image).
    /// Default: as in `inr encode`: `grid` for images and WAV files, unless --latent-step
    /// (images: `modulations`) or a --base file's kind says otherwise (an audio base for the
    /// WAV files, an image base for the images); without --mode an image too large for the
    /// grid mode (about 50 Mpx) is coded in the weight mode, and one of fewer than 320x320
    /// pixels may take `grid-shared` when that codes it better. WAV files take `grid`, `weights`
    /// or `modulations` (with an audio modulation --base); `grid-shared` gives them a failed
    /// row.
    #[arg(long, value_enum)]
    pub mode: Option<super::encode::Mode>,
    /// `--mode grid-shared`: fit and code the shared network's output layer per image
    /// (`fitted`), use it as it is (`frozen`), or `auto` (fitted from 128x128 pixels, below both
    /// tried on RGB images and the better file kept; see `inr encode --help`).
    #[arg(long, value_enum, value_name = "WHICH")]
    pub output_layer: Option<super::encode::OutputLayerArg>,
    /// Grid modes (images): how the latent levels are upsampled (see `inr encode --help`;
    /// `b-spline` is opt-in).
    #[arg(long, value_enum)]
    pub upsampling: Option<super::encode::UpsamplingArg>,
    /// Grid modes (images): code the latents with an autoregressive context model when the
    /// file is smaller (`auto`, the default) or never (`off`; see `inr encode --help`).
    #[arg(long, value_enum, value_name = "WHEN")]
    pub arm: Option<super::encode::ArmArg>,
    /// Grid modes, images with alpha: fit the colours of fully transparent pixels too, keeping
    /// them (see `inr encode --exact-alpha`).
    #[arg(long)]
    pub exact_alpha: bool,
    /// Drop a translucent alpha channel of the images (colours kept unblended) instead of
    /// coding it (grid modes) or failing the file (other modes).
    #[arg(long)]
    pub ignore_alpha: bool,
    /// Rate target of every file, in bits per pixel (see `inr encode --bpp`; all modes).
    #[arg(long, value_name = "BPP", conflicts_with = "psnr")]
    pub bpp: Option<f64>,
    /// Quality target of every file, in dB: the smallest file at this PSNR the fit reaches
    /// (see `inr encode --psnr`; weight and grid modes).
    #[arg(long, value_name = "DB")]
    pub psnr: Option<f64>,
    /// Rate target of every WAV file, in kbit/s (audio grid and modulation modes; see `inr encode
    /// --kbps`).
    #[arg(long, value_name = "KBPS")]
    pub kbps: Option<f64>,
    /// Modulations: latent quantization step (default 0.25).
    #[arg(long, value_name = "Q")]
    pub latent_step: Option<f32>,
    /// Modulations: the base file (default: the embedded modulation base). Grid: a grid base
    /// from `inr meta-train --mode grid` (default: the embedded grid base). Weights: a weight
    /// base from `inr meta-train` (default: the embedded one for the preset). Without --mode,
    /// the base's kind picks the mode. An audio base (`inr meta-train --modality audio`) is
    /// for the WAV files instead; repeat --base to give one of each (a folder of images and
    /// WAV files). `none` (alone): random starts.
    #[arg(long, value_name = "FILE.inrb")]
    pub base: Vec<PathBuf>,
    /// Files encoded at once (default: number of cores); each encode gets cores/jobs threads.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// Re-encode and replace existing outputs.
    #[arg(long)]
    pub force: bool,
}

/// Set by the SIGINT/SIGTERM handler: the batch stops starting new files.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The batch stopped early on SIGINT/SIGTERM (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted: {skipped} of {total} files not started (finished files are in {manifest}); \
     rerun the same command to resume"
)]
pub struct Interrupted {
    pub skipped: usize,
    pub total: usize,
    pub manifest: String,
}

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM. The first signal asks the batch to stop
/// (files in flight finish, the manifest is written); the handler then resets itself
/// (`SA_RESETHAND`), so a second signal terminates at once, as without a handler. Outputs are
/// still never partial (written to a temporary file and renamed).
#[cfg(unix)]
fn install_stop_handler() -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed `sigaction` is a valid initial value; the handler only stores to an
        // atomic, which is async-signal-safe; the pointers are valid for the calls.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot install a signal handler");
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn install_stop_handler() -> anyhow::Result<()> {
    Ok(())
}

/// How the batch codes WAV files: `inr encode`'s audio modes with the batch's flags. `base` is
/// the WAV files' side of `--base` ([`split_base`]): an audio base codes them and, without
/// --mode, picks their mode by its kind.
fn audio_mode(
    args: &BatchArgs,
    base: inr::BaseChoice,
    threads: usize,
) -> anyhow::Result<batch::AudioMode> {
    use super::encode::Mode;
    let name = super::encode::preset_name(args.preset);
    let mode = args
        .mode
        .or_else(|| custom_base(&base).map(super::encode::base_mode))
        .unwrap_or(Mode::Grid);
    if let Some(b) = custom_base(&base) {
        let kind = super::encode::base_mode(b);
        if kind != mode {
            bail!(
                "--base is an audio {} base: WAV files take it with --mode {} (not {})",
                kind.name(),
                kind.name(),
                mode.name()
            );
        }
    }
    Ok(match mode {
        Mode::Grid => {
            let mut cfg = inr::AudioGridEncodeConfig {
                seed: args.seed,
                threads: Some(threads),
                target_kbps: args.kbps,
                base: base.clone(),
                ..Default::default()
            };
            if let Some(&(_, l)) = inr::AUDIO_GRID_PRESET_LAMBDAS
                .iter()
                .find(|(n, _)| *n == name)
            {
                cfg.fit.lambda = l;
            }
            if let Some(s) = args.steps {
                cfg.fit.steps = s;
            }
            if args.arm == Some(super::encode::ArmArg::Off) {
                cfg.arm = None; // `auto` keeps the audio ARM fit (inr::AUDIO_ARM_FIT)
            }
            batch::AudioMode::Grid(cfg)
        }
        Mode::Weights => {
            if args.kbps.is_some() {
                bail!(
                    "--kbps needs the audio grid or modulation mode (the weight mode's rate is set by \
                     --preset)"
                );
            }
            batch::AudioMode::Weights(inr::AudioEncodeConfig {
                preset: args.preset,
                width: args.width,
                depth: args.depth,
                bits: args.bits,
                steps: args.steps,
                seed: args.seed,
                threads: Some(threads),
                base: base.clone(),
                ..Default::default()
            })
        }
        Mode::Modulations => {
            let d = inr::AudioModEncodeConfig::default();
            let mut fit = d.fit;
            if let Some(s) = args.steps {
                fit.steps = s;
            }
            // Without an audio modulation `--base`, each clip takes the embedded audio
            // modulation base for its channel count (the library's `base: None`).
            let base = match base {
                inr::BaseChoice::None => {
                    bail!("--mode modulations needs a base (--base default or FILE.inrb)")
                }
                c => custom_base(&c).cloned(),
            };
            if let Some(l2) = base.as_ref().and_then(inr::mod_codec_trained_l2) {
                fit.l2 = l2;
            }
            batch::AudioMode::Modulations(inr::AudioModEncodeConfig {
                fit,
                latent_step: args.latent_step.unwrap_or(d.latent_step),
                target_kbps: args.kbps,
                base,
                seed: args.seed,
                threads: Some(threads),
                ..d
            })
        }
        Mode::GridShared => {
            if args.kbps.is_some() {
                bail!("--kbps is for the audio grid and modulation modes, not --mode grid-shared");
            }
            batch::AudioMode::Refused(
                "WAV input: `inr batch --mode grid-shared` codes images only (audio: --mode \
                 grid, modulations or weights)"
                    .into(),
            )
        }
    })
}

/// `--base` as the images' base and as the WAV files': `default` and `none` (alone) for both;
/// files for the modality each one's kind is for, at most one each (the other keeps its
/// default).
fn split_base(args: &BatchArgs) -> anyhow::Result<(inr::BaseChoice, inr::BaseChoice)> {
    use inr::BaseChoice;
    let (mut image, mut audio) = (BaseChoice::Default, BaseChoice::Default);
    for p in &args.base {
        let c = super::base_choice(&p.to_string_lossy())?;
        let BaseChoice::Custom(b) = &c else {
            if args.base.len() > 1 {
                bail!("--base default or none stands alone (it applies to images and WAV files)");
            }
            return Ok((c.clone(), c));
        };
        let (side, what) = if b.is_audio() {
            (&mut audio, "audio")
        } else {
            (&mut image, "image")
        };
        if !matches!(side, BaseChoice::Default) {
            bail!("--base: two {what} bases; give at most one for images and one for WAV files");
        }
        *side = c;
    }
    Ok((image, audio))
}

/// The base of a [`inr::BaseChoice::Custom`].
fn custom_base(c: &inr::BaseChoice) -> Option<&inr::base::Base> {
    match c {
        inr::BaseChoice::Custom(b) => Some(b),
        _ => None,
    }
}

/// The images' coding mode: `--mode`; without it, `modulations` for `--latent-step`, the
/// kind of an image `--base` (`base`, from [`split_base`]), else `grid` (each image too large
/// for it then falls back to the weight mode).
fn image_mode(args: &BatchArgs, base: &inr::BaseChoice) -> anyhow::Result<super::encode::Mode> {
    use super::encode::Mode;
    if let Some(m) = args.mode {
        return Ok(m);
    }
    let from_base = custom_base(base).map(super::encode::base_mode);
    match (args.latent_step.is_some(), from_base) {
        (true, Some(m)) if m != Mode::Modulations => bail!(
            "--latent-step is for --mode modulations and --base is for --mode {}: pick one \
             with --mode",
            m.name()
        ),
        (true, _) => Ok(Mode::Modulations),
        (false, m) => Ok(m.unwrap_or(Mode::Grid)),
    }
}

/// Run the batch (or the merge).
///
/// # Errors
/// Folder/manifest problems, or at least one failed file (after the whole batch ran).
pub fn run(args: BatchArgs, quiet: bool, json: bool) -> anyhow::Result<()> {
    if let Some(dir) = &args.merge {
        let (path, rows) = batch::merge_manifests(dir)?;
        if json {
            println!("{}", serde_json::json!({ "manifest": path, "rows": rows }));
        } else if !quiet {
            println!("merged {rows} rows into {}", path.display());
        }
        return Ok(());
    }
    let (Some(in_dir), Some(out_dir)) = (&args.in_dir, &args.output) else {
        bail!("IN_DIR and -o OUT_DIR are required (or --merge OUT_DIR)");
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args
        .jobs
        .map_or(cores, |j| usize::try_from(j).unwrap_or(cores))
        .max(1);
    let (image_base, audio_base) = split_base(&args)?;
    let image_mode = image_mode(&args, &image_base)?;
    // `..Default` keeps the expert options the encoder grows (pe_freqs, w0, ...) at their
    // defaults; on a branch where every field is listed, clippy calls the update needless.
    #[allow(clippy::needless_update)]
    let config = EncodeConfig {
        preset: args.preset,
        width: args.width,
        depth: args.depth,
        bits: args.bits,
        steps: args.steps,
        seed: args.seed,
        threads: Some((cores / jobs).max(1)),
        target_bpp: args.bpp,
        target_psnr: args.psnr,
        base: if image_mode == super::encode::Mode::Weights {
            image_base.clone()
        } else {
            inr::BaseChoice::Default
        },
        ..EncodeConfig::default()
    };
    if args.output_layer.is_some() && image_mode != super::encode::Mode::GridShared {
        anyhow::bail!("--output-layer is for --mode grid-shared");
    }
    if args.upsampling.is_some()
        && !matches!(
            image_mode,
            super::encode::Mode::Grid | super::encode::Mode::GridShared
        )
    {
        anyhow::bail!("--upsampling is for the grid modes");
    }
    if args.arm.is_some()
        && !matches!(
            image_mode,
            super::encode::Mode::Grid | super::encode::Mode::GridShared
        )
    {
        anyhow::bail!("--arm is for the grid modes");
    }
    let audio = audio_mode(&args, audio_base, (cores / jobs).max(1))?;
    let weights = InrBatchCodec { config };
    let modulations;
    let grid;
    let codec: &dyn inr::batch::BatchCodec = match image_mode {
        super::encode::Mode::Weights => &weights,
        super::encode::Mode::Modulations => {
            let base = match image_base {
                inr::BaseChoice::None => {
                    bail!("--mode modulations needs a base (--base default or FILE.inrb)")
                }
                c => custom_base(&c).cloned(),
            }
            .or_else(|| inr::base::embedded_modulation().cloned());
            let Some(base) = base else {
                anyhow::bail!("no modulation base available (pass --base FILE.inrb)");
            };
            if args.psnr.is_some() {
                anyhow::bail!(
                    "--mode modulations has no quality target: use --bpp or --latent-step"
                );
            }
            let mut fit = inr::LatentFit::default();
            if let Some(s) = args.steps {
                fit.steps = s;
            }
            if let Some(l2) = inr::mod_codec_trained_l2(&base) {
                fit.l2 = l2;
            }
            modulations = inr::batch::ModBatchCodec {
                config: inr::ModEncodeConfig {
                    fit,
                    latent_step: args.latent_step.unwrap_or(inr::DEFAULT_LATENT_STEP),
                    base: Some(base),
                    seed: args.seed,
                    threads: Some((cores / jobs).max(1)),
                    target_bpp: args.bpp,
                    ..inr::ModEncodeConfig::default()
                },
            };
            &modulations
        }
        mode @ (super::encode::Mode::Grid | super::encode::Mode::GridShared) => {
            let shared = mode == super::encode::Mode::GridShared;
            let mut config = inr::GridEncodeConfig {
                seed: args.seed,
                threads: Some((cores / jobs).max(1)),
                shared,
                output_layer: args.output_layer.map_or(inr::OutputLayer::Auto, Into::into),
                ..Default::default()
            };
            if shared {
                // Small images and images with alpha fit longer (`shared_min_budget`).
                config.fit.set_budget(inr::GRID_SHARED_STEPS);
                config.shared_min_budget = inr::SHARED_TRY_STEPS;
            }
            let name = super::encode::preset_name(args.preset);
            if let Some(&(_, l)) = inr::GRID_PRESET_LAMBDAS.iter().find(|(n, _)| *n == name) {
                config.fit.lambda = l;
            }
            if let Some(s) = args.steps {
                config.fit.set_budget(s);
                config.shared_min_budget = 0;
            }
            if let Some(u) = args.upsampling {
                config.fit.upsampling = u.into();
            }
            if let Some(a) = args.arm {
                config.arm = a.fit();
            }
            config.exact_alpha = args.exact_alpha;
            config.base = image_base;
            if shared && (args.width.is_some() || args.depth.is_some()) {
                bail!("--mode grid-shared: the shared synthesis network sets --width and --depth");
            }
            if let Some(w) = args.width {
                config.width = u16::try_from(w).context("--width")?;
            }
            if let Some(d) = args.depth {
                config.depth = u8::try_from(d).context("--depth")?;
            }
            if let Some(b) = args.bits {
                config.net_bits = vec![b];
            }
            config.target_bpp = args.bpp;
            config.target_psnr = args.psnr;
            // Without --mode, an image too large for the grid mode is coded in the weight mode
            // (as `inr encode` does).
            let fallback = args.mode.is_none().then(|| weights.config.clone());
            // Without --mode, a small image may be coded with the shared synthesis when that
            // is better (as `inr encode` does).
            if args.mode.is_none() {
                config.shared_below = inr::SHARED_TRY_PIXELS;
            }
            grid = inr::batch::GridBatchCodec { config, fallback };
            &grid
        }
    };
    let opts = BatchOptions {
        shard: args.shard,
        force: args.force,
        jobs,
        cancel: Some(&INTERRUPTED),
        audio,
        ignore_alpha: args.ignore_alpha,
    };
    install_stop_handler()?;
    let bar = super::counting_bar(quiet);
    let progress = |e: &BatchEvent| match e {
        BatchEvent::Started { todo, .. } => bar.set_length(*todo as u64),
        BatchEvent::Finished { row } => {
            bar.inc(1);
            if row.status == RowStatus::Failed {
                bar.println(format!("failed: {}: {}", row.input, row.error));
            } else {
                bar.set_message(row.input.clone());
            }
        }
        _ => {}
    };
    let s = batch::run_batch(in_dir, out_dir, codec, &opts, &progress)
        .with_context(|| format!("batch {} -> {}", in_dir.display(), out_dir.display()))?;
    bar.finish_and_clear();
    let missed = batch::off_target(&s.rows, args.bpp, args.kbps);
    // Warnings, like `inr encode`'s, even with --quiet.
    for r in &missed {
        let (v, unit, t) = match (r.bpp, r.kbps) {
            (Some(v), _) => (v, "bpp", args.bpp.unwrap_or_default()),
            (_, Some(v)) => (v, "kbit/s", args.kbps.unwrap_or_default()),
            _ => continue,
        };
        eprintln!(
            "warning: {}: {v:.4} {unit}, off the target {t} {unit} (the best file rate \
             control found was kept)",
            r.input
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "manifest": s.manifest,
                "encoded": s.encoded,
                "kept": s.kept,
                "failed": s.failed,
                "interrupted": s.interrupted,
                "off_target": missed.iter().map(|r| &r.input).collect::<Vec<_>>(),
                "rows": s.rows,
            }))?
        );
    } else if !quiet {
        let off = if missed.is_empty() {
            String::new()
        } else {
            format!(" ({} off the rate target)", missed.len())
        };
        println!(
            "{} files: {} encoded, {} kept, {} failed{off}; manifest {}",
            s.rows.len() + s.interrupted,
            s.encoded,
            s.kept,
            s.failed,
            s.manifest.display()
        );
    }
    if s.interrupted > 0 {
        return Err(Interrupted {
            skipped: s.interrupted,
            total: s.rows.len() + s.interrupted,
            manifest: s.manifest.display().to_string(),
        }
        .into());
    }
    if s.failed > 0 {
        bail!(
            "{} of {} files failed (see {})",
            s.failed,
            s.rows.len(),
            s.manifest.display()
        );
    }
    Ok(())
}
