//! `inr encode`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::ValueEnum as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use inr::{BitAllocation, EncodeConfig, Preset, Progress, PruneMethod, PruneScope};

use super::{check_output, json_psnr, load_input, path_str, print_json, say, Ctx};

/// Encode an image or a WAV file into a .inr file.
///
/// Fits a neural representation to the signal, quantizes and entropy-codes it.
///
/// By default (`--mode grid`) the encoder fits a pyramid of latent grids and a small SIREN that
/// reads them, under a rate–distortion objective (`--preset` sets the rate weight: tiny is the
/// smallest file, huge the best quality); about 21 s per 768x512 image on two AVX-512 cores,
/// 50–60 s on a 2-core Zen 1 EPYC (AVX2). See
/// `--mode` for the other modes and when they are picked without it.
///
/// WAV input (detected from the content) is coded as audio, by default in the audio grid mode
/// (per segment of --window frames, rows of latents and a small 1-D SIREN; see --mode); prints PSNR (waveform mapped to [0, 1]), SNR, kbit/s and the time.
///
/// Prints `PSNR <dB>  bpp <bits/pixel>  bytes <file size>  time <s>` (or a JSON object with
/// --json). The output is written atomically; an existing file is replaced only with --force,
/// and the input file is never overwritten. Same input and flags give the same bytes.
#[derive(clap::Args, Debug)]
#[command(after_long_help = super::INPUT_POLICY)]
pub struct EncodeArgs {
    /// Input image (format detected from the content).
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Output .inr file.
    #[arg(short, long, value_name = "OUT.inr")]
    pub output: PathBuf,
    /// Quality preset, from the smallest file to the best quality. Grid mode: the rate weight λ
    /// (tiny 0.03, small 0.012, medium 0.005, large 0.002, huge 0.0008: about 0.07, 0.14, 0.29,
    /// 0.58 and 1.1 bpp on the Kodak images kodim13-16); weight mode: the network's size, bits
    /// and steps.
    #[arg(long, value_enum, default_value_t = Preset::Medium)]
    pub preset: Preset,
    /// Hidden layer width (overrides the preset). Weight mode: by default the preset's, but
    /// under --bpp from a random start (no base for the preset, or --base none) the width
    /// the byte budget buys, about 1.3 hidden weights per byte (codec::width_for_rate).
    #[arg(long, value_name = "N")]
    pub width: Option<usize>,
    /// Number of sine layers (overrides the preset).
    #[arg(long, value_name = "N")]
    pub depth: Option<usize>,
    /// Weight quantization bits (overrides the preset).
    #[arg(long, value_name = "N")]
    pub bits: Option<u8>,
    /// Fitting steps (overrides the preset).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Seed of the network initialisation (results are deterministic for a given seed).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Quality target in dB (weight mode): fitting stops once the rendered network is 0.5 dB
    /// above it (checked every 100 steps), then the hidden matrices' quantization steps are
    /// made as coarse as the target allows: the smallest file at this PSNR that the network
    /// reaches. In grid mode: λ placed by one or two 100-step probes (fits of 500 steps or
    /// more; else from a table), then fits and shorter refits until a refit lands within 0 …
    /// +0.1 dB of the target (at most 2.6 fits' worth of steps; without refits any fit, 0 …
    /// +0.2 dB); each file over the target is trimmed down to it (latents moved one step
    /// towards their ARM prediction, or the rounding dead zone widened); the smallest file at
    /// the target is kept. A warning is printed when it is missed (use a larger preset or more --steps).
    #[arg(long, value_name = "DB", visible_alias = "psnr")]
    pub target_psnr: Option<f64>,
    /// Expert: Fourier features per coordinate (0 = plain coordinates, the default).
    #[arg(long, value_name = "N")]
    pub pe_freqs: Option<u8>,
    /// Expert: SIREN w0 of the first layer (default 30).
    #[arg(long, value_name = "N")]
    pub w0: Option<u16>,
    /// Expert: Adam learning rate (default 0.6/steps, within 3e-4 ..= 2e-3·min(1, 32/width), at
    /// most 1.2e-3 from a base: 3e-4 at the presets' step counts, more for short fits).
    #[arg(long, value_name = "LR")]
    pub lr: Option<f32>,
    /// Expert: pixels per minibatch (default 65536 or 32768 by preset).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Start of fitting: `default` (the meta-learned base embedded for the chosen preset, if
    /// any; else random), `none` (random SIREN init: the file then needs no base), or a base
    /// file FILE.inrb from `inr meta-train` (its architecture replaces the preset's; the
    /// decoder then needs the same file, given with `inr decode --base`). With `--mode grid`,
    /// `default` is the embedded grid base (the meta-learned start of the synthesis network
    /// for the default levels, width, depth and w0), and FILE.inrb a grid base from `inr
    /// meta-train --mode grid` (its architecture replaces the grid settings); grid files never
    /// need a base to decode. With `--mode grid-shared`, `default` is the embedded shared
    /// synthesis for the rate weight and FILE.inrb a network from `inr meta-train --mode
    /// grid-shared` (the decoder then needs it); `none` is refused. For WAV input,
    /// `default` is the embedded audio base matching the preset's network and window (the
    /// medium preset on mono 16 kHz clips), and FILE.inrb must be an audio base from `inr
    /// meta-train --modality audio` (its network and window replace the preset's).
    #[arg(long, value_name = "default|none|FILE.inrb", default_value = "default")]
    pub base: String,
    /// Audio: frames per window (default: the preset's window duration at the input's rate;
    /// --mode grid: frames per segment, default 262144).
    #[arg(long, value_name = "N")]
    pub window: Option<u32>,
    /// Keep this fraction (0..=1) of the hidden weight matrices' weights: gradual magnitude
    /// pruning during fitting, masks stored in the file's sparsity section.
    /// With --bpp: fixed density (1 = dense), only the step sizes move to hit the rate.
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,
    /// How pruning shares the density among the matrices (default: per-layer).
    #[arg(long, value_enum)]
    pub prune_scope: Option<PruneScope>,
    /// How pruning finds the masks: `magnitude` (gradual magnitude pruning, cubic schedule),
    /// `l0` (hard-concrete L0 gates whose expected density a Lagrange multiplier drives to
    /// --density, then exactly that density is kept), `seeded` (a fixed pseudo-random support
    /// the decoder regenerates: the file stores 4 bytes per matrix instead of a mask) or
    /// `base` (the support of a sparse --base from `inr meta-train --support learned`, fixed
    /// from the first step; 4 bytes per matrix, the decoder needs that base anyway).
    /// Default: magnitude.
    #[arg(long, value_enum)]
    pub prune_method: Option<PruneMethod>,
    /// Bit widths of the hidden matrices: `sensitivity` (per matrix, by measured PSNR loss
    /// per byte, under the budget of the uniform allocation) or `uniform` (the preset's or
    /// --bits for all). Under --bpp, sensitivity spends the budget of the width rate control
    /// chose, for every --prune-method (k-means aside). Default: sensitivity.
    #[arg(long, value_enum)]
    pub bit_allocation: Option<BitAllocation>,
    /// Fit with the per-tensor learning-rate multipliers of a --base trained with `inr
    /// meta-train --meta-sgd` (weights mode). Off by default: they cost 0.7 dB at 300 steps on
    /// kodim13-16 (bench-results/bases-v2/README.md, "Meta-SGD").
    #[arg(long)]
    pub base_lr_scale: bool,
    /// Weight sharing (Deep Compression): each hidden matrix keeps only K distinct values,
    /// 1-D k-means centroids (linear initialisation) fine-tuned with the shared gradient in
    /// the quantization phase; the file stores the codebooks and entropy-codes the indices.
    /// Combines with --density (the pruned weights get a centroid held at 0). With --bpp, K is
    /// the largest allowed: the largest K up to it whose file fits the rate is used (density
    /// then only by --density). Image weight mode only.
    #[arg(long, value_name = "K")]
    pub kmeans: Option<usize>,
    /// Rate control: aim the file at this many bits per pixel (within ±3 % when the network
    /// can reach it; a file further below is kept only when it is also the better one);
    /// density and step sizes are chosen on the real coded size. Use a wide
    /// network (e.g. --preset small or larger); a warning is printed when the target is missed.
    /// In grid mode: λ placed by one or two 100-step probes (fits of 500 steps or more; else
    /// from a calibration table), then fits and shorter refits until one lands within −3 … +1 %,
    /// or up to +4 % when trimming it costs at most 0.15 dB (at most 2.6 fits' worth of steps);
    /// a kept file still over is trimmed: latents moved
    /// one step towards their ARM prediction where that saves the most bits for the least
    /// error, or the latents' rounding dead zone widened (files without an ARM).
    #[arg(long, value_name = "BPP", conflicts_with = "target_psnr")]
    pub bpp: Option<f64>,
    /// `--mode grid-shared`: whether the shared network's output layer (51 values) is also
    /// fitted per image and coded, at the best of --bits' widths (`fitted`: on kodim13-16
    /// +0.3 dB at 0.13 bpp), or used as it is, so that the file codes no network weights at
    /// all (`frozen`). `auto`: fitted for images of 128x128 pixels or more, and for any gray
    /// image or image with alpha (the network's outputs are RGB; `frozen` refuses those);
    /// a smaller RGB image is coded both ways and the better file kept (lower `MSE + λ·bpp`,
    /// or the one --bpp or --psnr prefers; a flat 64x64 image: 102 bytes at 20.9 dB frozen,
    /// 138 bytes at 45.9 dB fitted).
    #[arg(long, value_enum, value_name = "WHICH")]
    pub output_layer: Option<OutputLayerArg>,
    /// Coding mode. Default for images: `grid`, unless flags of one other mode are given
    /// (`--density`, `--kmeans`, `--prune-*`, `--bit-allocation`, `--pe-freqs`, `--batch`:
    /// `weights`; `--latent-*`: `modulations`; `--output-layer`: `grid-shared`) or `--base`
    /// names a weight or modulation base; an image too large for the grid mode (more than
    /// 2^26 latents, about 50 Mpx) is coded in the weight mode, with a note; an image of
    /// fewer than 320x320 pixels in the grid mode is also coded with the shared synthesis
    /// (`grid-shared` at 500 steps, about half the time) and the better file is kept (lower `MSE +
    /// λ·bpp`, or the one --bpp or --psnr prefers; not with --base, nor with --levels,
    /// --width, --depth or --w0 other than the defaults): its own network costs about 350
    /// bytes, too much for a small image (on 64x64 crops of kodim13-16 the shared synthesis's
    /// `MSE + λ·bpp` was 15–34 % lower for RGB). Gray images and images with alpha are tried
    /// too, with an output layer of their own channel count. An RGB image below 128x128
    /// pixels tries the shared network twice, with its output layer as it is and fitted, and
    /// keeps the best of the three files (a flat 64x64 image: 382 bytes at 40.6 dB with its own
    /// network, 138 bytes at 45.9 dB with the fitted layer).
    /// `weights` fits and stores a whole network per image (minutes; below the grid mode at
    /// every measured rate on Kodak); `modulations` stores only a grid of latent vectors for a shared meta-learned network
    /// (seconds; needs a modulation base: the embedded one by default, or --base FILE.inrb
    /// from `inr meta-train --mode modulations`). In this mode --steps counts latent steps
    /// (default 50), --lr is the latents' Adam rate (default 0.05) and --bpp moves only the
    /// latent quantization step. `grid` fits, per image, a pyramid of latent grids and a small
    /// SIREN that reads them, under a rate–distortion objective (no base needed; about
    /// 21 s per Kodak image on 2 AVX-512 cores, 50–60 s on a 2-core Zen 1 EPYC): the preset
    /// picks the rate weight (tiny 0.03 … huge 0.0008), --steps the fitting budget in
    /// full-resolution steps (default 1000, about 21 s; 60 take 1.8 s, 100 take 3.2 s, 160
    /// take 4.2 s, 200 take 5.2 s, 250 take 6.3 s on kodim14 on the AVX-512 machine; below
    /// 150 most of the budget is spent on cheaper half-resolution steps first), --lr the
    /// latents' Adam rate (default for images 40 / steps within 0.02 … 0.4), --width/--depth/--w0
    /// the synthesis SIREN (default 16 x 2, w0 2) and --bits its weight precision (default: the
    /// best of 5, 6, 7, 8, 10). `grid-shared` fits and stores the latent pyramid and the
    /// output layer (51 values; see --output-layer) of a shared synthesis network
    /// embedded in the binary (codec-spec §13.8; one network for λ >= 0.01, another below;
    /// --base FILE.inrb from `inr meta-train --mode grid-shared` instead, which the decoder
    /// then needs): about 4 s per Kodak image at the default --steps 200 (500 for images
    /// below 320x320 pixels and images with alpha, which need the longer fit); the preset,
    /// --lambda, --bpp and --psnr work as in `grid`, --bits sets the output layer's width.
    /// The embedded networks are RGB: gray images and images with alpha get an output layer
    /// of their own with as many outputs as they have channels (always fitted and coded;
    /// kodim15's 128x128 crop with a disc of alpha: 1,186 bytes at 26.3 dB with 200 steps,
    /// 706 bytes at 29.7 dB with 500).
    /// For a WAV input, `grid` (the
    /// default) codes segments of --window frames (default 262144) as rows of latent levels
    /// and a small synthesis network per segment, started from the embedded audio grid base
    /// for mono clips (--base none: random; about 12 kbit/s and 42 dB on 16 kHz speech at
    /// medium): the preset picks λ (tiny 0.002 … huge 0.00001), --kbps aims at a rate, --steps
    /// sets the fit (default 200, about 0.25 s per second of 16 kHz audio on two cores);
    /// `weights` codes windows of small networks (its medium preset starts from the embedded
    /// audio weight base); `modulations` codes the clip as one row of latents for an audio
    /// modulation base (`inr meta-train --modality audio --mode modulations`; --kbps sets the
    /// rate, every frame is used in every latent step unless --latent-frac says otherwise).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Grid: rate weight λ of `MSE + λ·bpp` (audio: bits per frame; overrides the preset;
    /// larger = smaller file).
    #[arg(long, value_name = "L")]
    pub lambda: Option<f32>,
    /// Grid: number of latent levels (strides 1, 2, 4, …; default 8).
    #[arg(long, value_name = "N")]
    pub levels: Option<u8>,
    /// Grid (images): how the latent levels are upsampled to the pixels. `b-spline` (four cubic
    /// B-spline taps per axis, flag bit 10 of codec-spec §13.5): 1.5 % lower `MSE + λ·bpp`
    /// than `bilinear` on seven Kodak images at λ = 0.005 (from −4.7 % to +2.1 %), 1.6x the
    /// encode time, and worse under --bpp, whose tables are bilinear (docs/benchmarks.md, "B-spline
    /// upsampling").
    #[arg(long, value_enum)]
    pub upsampling: Option<UpsamplingArg>,
    /// Grid: `auto` (the default) fits an autoregressive context model (ARM, a 12-unit network
    /// over each latent's coded neighbours, codec-spec §5.11) to the latents of images of 2^17
    /// latents or more, and of audio segments of 2^15 or more, and codes them with it when the
    /// file is smaller: 2-11 % smaller latent streams on kodim13-16, about 1 s more per fit,
    /// 0.2 s instead of 0.05 s to decode a Kodak image; image latents use the ARM's prior models
    /// (§5.11.1) when they are smaller, about 2 % smaller files at 0.25 bpp. `flat` codes with
    /// the flat models only (as before stop 62). `off` never fits an ARM.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub arm: Option<ArmArg>,
    /// Modulations: quantization step of the latents (default 0.25; larger = smaller file).
    #[arg(long, value_name = "Q", conflicts_with = "bpp")]
    pub latent_step: Option<f32>,
    /// Modulations: fraction of the pixels used per latent step (default 0.25; audio: of the
    /// frames, default 1).
    #[arg(long, value_name = "F")]
    pub latent_frac: Option<f32>,
    /// Modulations: quantization-aware fine-tuning steps of the latents (default 20; 0 = off).
    #[arg(long, value_name = "N")]
    pub latent_qat_steps: Option<usize>,
    /// Modulations: L2 penalty on the latents (default: the one the base was trained with).
    #[arg(long, value_name = "L")]
    pub latent_l2: Option<f32>,
    /// Audio rate control, modulations and grid modes: aim the real file size at this many
    /// kbit/s (modulations: moves only the latent quantization step; grid: at most six fits,
    /// λ from a table then along the measured rates, the file within 3 % below the target
    /// when one lands there).
    #[arg(long, value_name = "KBPS", conflicts_with_all = ["latent_step", "bpp"])]
    pub kbps: Option<f64>,
    /// Drop a translucent alpha channel (colours kept unblended) instead of coding it (grid mode)
    /// or refusing the image (other modes).
    #[arg(long)]
    pub ignore_alpha: bool,
    /// Grid mode, images with alpha: fit every colour sample at full weight, so that fully
    /// transparent pixels keep their colours. By default colour errors are weighted by opacity
    /// squared (the error of colours premultiplied by alpha, which PSNR measures for such
    /// images): hidden colours cost nothing and decode to arbitrary values.
    #[arg(long)]
    pub exact_alpha: bool,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `inr encode --mode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Weights,
    Modulations,
    Grid,
    /// Grid latents for a shared synthesis network (codec-spec §13.8).
    GridShared,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Weights => "weights",
            Mode::Modulations => "modulations",
            Mode::Grid => "grid",
            Mode::GridShared => "grid-shared",
        }
    }
}

/// `--output-layer` (see [`inr::OutputLayer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputLayerArg {
    Auto,
    Fitted,
    Frozen,
}

impl From<OutputLayerArg> for inr::OutputLayer {
    fn from(a: OutputLayerArg) -> Self {
        match a {
            OutputLayerArg::Auto => inr::OutputLayer::Auto,
            OutputLayerArg::Fitted => inr::OutputLayer::Fitted,
            OutputLayerArg::Frozen => inr::OutputLayer::Frozen,
        }
    }
}

/// `--arm` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArmArg {
    /// Code the latents with an ARM when the file is smaller (with its prior models when they
    /// are smaller still).
    Auto,
    /// As `auto`, but with the ARM's flat models only (no flag bit 13).
    Flat,
    /// Never code the latents with an ARM.
    Off,
}

impl ArmArg {
    /// The encoder's ARM settings for this choice.
    pub(super) fn fit(self) -> Option<inr::ArmFit> {
        match self {
            ArmArg::Auto => Some(inr::ArmFit::default()),
            ArmArg::Flat => Some(inr::ArmFit {
                prior_models: false,
                ..inr::ArmFit::default()
            }),
            ArmArg::Off => None,
        }
    }
}

/// `--upsampling` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsamplingArg {
    /// Two taps per axis (the default).
    Bilinear,
    /// Four cubic B-spline taps per axis.
    #[value(name = "b-spline")]
    BSpline,
}

impl From<UpsamplingArg> for inr::format::Upsampling {
    fn from(u: UpsamplingArg) -> Self {
        match u {
            UpsamplingArg::Bilinear => inr::format::Upsampling::Bilinear,
            UpsamplingArg::BSpline => inr::format::Upsampling::BSpline,
        }
    }
}

/// The settings of a grid encoder (image or audio) that the shared flags set.
pub(super) struct GridFlags<'a> {
    pub fit: &'a mut inr::GridFit,
    pub levels: &'a mut u8,
    pub width: &'a mut u16,
    pub depth: &'a mut u8,
    pub w0: &'a mut u16,
    pub net_bits: &'a mut Vec<u8>,
    pub base: &'a mut inr::BaseChoice,
}

impl GridFlags<'_> {
    /// Applies the preset's λ (from `lambdas`), --lambda, --lr, --levels, --width, --depth,
    /// --w0, --bits and --base of `args` (not --steps, whose meaning differs by modality).
    pub fn apply(self, args: &EncodeArgs, lambdas: &[(&str, f32)]) -> anyhow::Result<()> {
        let name = preset_name(args.preset);
        if let Some(&(_, l)) = lambdas.iter().find(|(n, _)| *n == name) {
            self.fit.lambda = l;
        }
        if let Some(l) = args.lambda {
            self.fit.lambda = l;
        }
        if let Some(lr) = args.lr {
            self.fit.lr_latent = Some(lr);
        }
        if let Some(n) = args.levels {
            *self.levels = n;
        }
        if let Some(w) = args.width {
            *self.width = u16::try_from(w).context("--width")?;
        }
        if let Some(d) = args.depth {
            *self.depth = u8::try_from(d).context("--depth")?;
        }
        if let Some(w0) = args.w0 {
            *self.w0 = w0;
        }
        if let Some(b) = args.bits {
            *self.net_bits = vec![b];
        }
        *self.base = super::base_choice(&args.base)?;
        let arch_flags = args.levels.is_some()
            || args.width.is_some()
            || args.depth.is_some()
            || args.w0.is_some();
        if matches!(self.base, inr::BaseChoice::Custom(_)) && arch_flags {
            anyhow::bail!(
                "--base FILE.inrb sets the grid synthesis architecture; drop --levels, --width, \
                 --depth and --w0"
            );
        }
        Ok(())
    }
}

/// The grid-mode settings of `args` (`shared`: `--mode grid-shared`).
pub(super) fn grid_config(
    args: &EncodeArgs,
    ctx: &Ctx,
    shared: bool,
) -> anyhow::Result<inr::GridEncodeConfig> {
    if args.density.is_some() {
        anyhow::bail!("--mode grid does not prune (--density)");
    }
    if shared
        && (args.levels.is_some()
            || args.width.is_some()
            || args.depth.is_some()
            || args.w0.is_some())
    {
        anyhow::bail!(
            "--mode grid-shared: the shared synthesis network (the base) sets --levels, --width, \
             --depth and --w0"
        );
    }
    let output_layer = args.output_layer.map_or(inr::OutputLayer::Auto, Into::into);
    if output_layer == inr::OutputLayer::Frozen && args.bits.is_some() {
        anyhow::bail!(
            "--output-layer frozen codes no network weights: drop --bits (otherwise it sets the \
             output layer's bit width)"
        );
    }
    let mut cfg = inr::GridEncodeConfig {
        seed: args.seed,
        threads: ctx.threads,
        shared,
        output_layer,
        ..Default::default()
    };
    if shared {
        // Small images and images with alpha fit longer (`shared_min_budget`).
        cfg.fit.set_budget(inr::GRID_SHARED_STEPS);
        cfg.shared_min_budget = inr::SHARED_TRY_STEPS;
    }
    let lambdas = &inr::GRID_PRESET_LAMBDAS;
    let g = GridFlags {
        fit: &mut cfg.fit,
        levels: &mut cfg.levels,
        width: &mut cfg.width,
        depth: &mut cfg.depth,
        w0: &mut cfg.w0,
        net_bits: &mut cfg.net_bits,
        base: &mut cfg.base,
    };
    g.apply(args, lambdas)?;
    if let Some(s) = args.steps {
        cfg.fit.set_budget(s);
        cfg.shared_min_budget = 0;
    }
    if let Some(u) = args.upsampling {
        cfg.fit.upsampling = u.into();
    }
    if let Some(a) = args.arm {
        cfg.arm = a.fit();
    }
    cfg.target_bpp = args.bpp;
    cfg.target_psnr = args.target_psnr;
    cfg.exact_alpha = args.exact_alpha;
    Ok(cfg)
}

/// The modulation base of `--base` (`default`: `embedded`, the embedded one) and the latent
/// fit its flags give (`frac` is the default pixel or frame fraction per step).
pub(super) fn mod_base_and_fit(
    args: &EncodeArgs,
    embedded: Option<&inr::base::Base>,
    frac: f32,
) -> anyhow::Result<(inr::base::Base, inr::LatentFit)> {
    let base = match args.base.as_str() {
        "default" => embedded.cloned(),
        "none" => anyhow::bail!("--mode modulations needs a base (--base default or FILE.inrb)"),
        path => super::load_bases(&[PathBuf::from(path)])?.pop(),
    };
    let Some(base) = base else {
        anyhow::bail!("no modulation base available (pass --base FILE.inrb)");
    };
    let d = inr::LatentFit::default();
    let fit = inr::LatentFit {
        steps: args.steps.unwrap_or(d.steps),
        lr: args.lr.unwrap_or(d.lr),
        frac: args.latent_frac.unwrap_or(frac),
        l2: args
            .latent_l2
            .or_else(|| inr::mod_codec_trained_l2(&base))
            .unwrap_or(d.l2),
    };
    Ok((base, fit))
}

fn mod_config(args: &EncodeArgs, ctx: &Ctx) -> anyhow::Result<inr::ModEncodeConfig> {
    if args.kbps.is_some() {
        anyhow::bail!("--kbps is for audio; images take --bpp");
    }
    let (base, fit) = mod_base_and_fit(
        args,
        inr::base::embedded_modulation(),
        inr::LatentFit::default().frac,
    )?;
    Ok(inr::ModEncodeConfig {
        fit,
        latent_step: args.latent_step.unwrap_or(inr::DEFAULT_LATENT_STEP),
        target_bpp: args.bpp,
        qat_steps: args.latent_qat_steps.unwrap_or(inr::DEFAULT_QAT_STEPS),
        base: Some(base),
        seed: args.seed,
        threads: ctx.threads,
    })
}

/// The preset's command-line name, e.g. `medium`.
pub(super) fn preset_name(p: Preset) -> String {
    p.to_possible_value().map_or_else(
        || format!("{p:?}").to_lowercase(),
        |v| v.get_name().to_string(),
    )
}

pub(super) fn progress_bar(ctx: &Ctx) -> ProgressBar {
    if ctx.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {prefix:>9} [{bar:30}] {pos}/{len} {msg} ({elapsed}, ETA {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// The image mode a base file is for (its kind).
pub(super) fn base_mode(b: &inr::base::Base) -> Mode {
    if b.grid {
        Mode::Grid
    } else if b.modulation.is_some() {
        Mode::Modulations
    } else {
        Mode::Weights
    }
}

/// The coding mode of an image: `--mode`; without it, the mode that the given mode-specific
/// flags or the `--base` file's kind imply (an error when they imply different modes), else
/// `grid`, or `weights` (with a note) for an image too large for the grid mode.
fn image_mode(
    args: &EncodeArgs,
    ctx: &Ctx,
    img: &inr::media::Image,
    notes: &mut Vec<String>,
) -> anyhow::Result<Mode> {
    if let Some(m) = args.mode {
        return Ok(m);
    }
    let flags = [
        (args.density.is_some(), "--density", Mode::Weights),
        (args.kmeans.is_some(), "--kmeans", Mode::Weights),
        (args.pe_freqs.is_some(), "--pe-freqs", Mode::Weights),
        (args.batch.is_some(), "--batch", Mode::Weights),
        (args.prune_scope.is_some(), "--prune-scope", Mode::Weights),
        (args.prune_method.is_some(), "--prune-method", Mode::Weights),
        (args.base_lr_scale, "--base-lr-scale", Mode::Weights),
        (
            args.bit_allocation.is_some(),
            "--bit-allocation",
            Mode::Weights,
        ),
        (
            args.latent_step.is_some(),
            "--latent-step",
            Mode::Modulations,
        ),
        (
            args.latent_frac.is_some(),
            "--latent-frac",
            Mode::Modulations,
        ),
        (
            args.latent_qat_steps.is_some(),
            "--latent-qat-steps",
            Mode::Modulations,
        ),
        (args.latent_l2.is_some(), "--latent-l2", Mode::Modulations),
        (args.lambda.is_some(), "--lambda", Mode::Grid),
        (args.levels.is_some(), "--levels", Mode::Grid),
        (args.upsampling.is_some(), "--upsampling", Mode::Grid),
        (args.arm.is_some(), "--arm", Mode::Grid),
        (args.exact_alpha, "--exact-alpha", Mode::Grid),
        (
            args.output_layer.is_some(),
            "--output-layer",
            Mode::GridShared,
        ),
    ];
    let mut implied: Vec<(String, Mode)> = flags
        .iter()
        .filter(|f| f.0)
        .map(|&(_, name, m)| (name.to_string(), m))
        .collect();
    if !matches!(args.base.as_str(), "default" | "none") {
        if let Some(b) = super::load_bases(&[PathBuf::from(&args.base)])?.pop() {
            if b.is_audio() {
                anyhow::bail!(
                    "base {:016x} is an audio base ({}), for WAV input; images need an image \
                     base",
                    b.id(),
                    b.kind()
                );
            }
            implied.push((format!("--base ({} base)", b.a_kind()), base_mode(&b)));
        }
    }
    if let Some((name, m)) = implied.first() {
        if let Some((other, o)) = implied.iter().find(|(_, o)| o != m) {
            anyhow::bail!(
                "{name} is for --mode {} and {other} for --mode {}: pick one with --mode",
                m.name(),
                o.name()
            );
        }
        return Ok(*m);
    }
    let grid = grid_config(args, ctx, false)?;
    if grid.too_large(img.width, img.height, img.channels) {
        notes.push(format!(
            "{}x{} is too large for the grid mode (default decoder limits, codec-spec §13.4): \
             coding in the weight mode (slower; pass --mode to choose)",
            img.width, img.height
        ));
        return Ok(Mode::Weights);
    }
    Ok(Mode::Grid)
}

/// Whether `bytes` is a grid file with a shared synthesis (§13.8: only those name a base).
pub(super) fn is_shared_grid(bytes: &[u8]) -> bool {
    inr::inspect(bytes).is_ok_and(|i| i.base_id.is_some())
}

pub fn run(args: EncodeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    check_output(&args.input, &args.output, args.force)?;
    if args.kmeans.is_some()
        && (args.mode.is_some_and(|m| m != Mode::Weights) || super::audio::is_wav(&args.input))
    {
        anyhow::bail!("--kmeans (weight sharing) works in image weight mode only");
    }
    let wav = super::audio::is_wav(&args.input);
    if args.output_layer.is_some() && (args.mode.is_some_and(|m| m != Mode::GridShared) || wav) {
        anyhow::bail!("--output-layer is for --mode grid-shared");
    }
    if wav {
        return super::audio::encode(args, ctx);
    }
    let mut loaded = load_input(&args.input, args.ignore_alpha)?;
    let mode = image_mode(&args, ctx, &loaded.image, &mut loaded.notes)?;
    ctx.notes(&loaded.notes);
    let img = &loaded.image;

    let mod_cfg = match mode {
        Mode::Modulations => Some(mod_config(&args, ctx)?),
        Mode::Weights | Mode::Grid | Mode::GridShared => None,
    };
    let mut grid_cfg = match mode {
        Mode::Grid | Mode::GridShared => Some(grid_config(&args, ctx, mode == Mode::GridShared)?),
        _ => None,
    };
    if let Some(g) = grid_cfg.as_mut().filter(|_| args.mode.is_none()) {
        g.shared_below = inr::SHARED_TRY_PIXELS;
    }
    let cfg = EncodeConfig {
        preset: args.preset,
        width: args.width,
        depth: args.depth,
        bits: args.bits,
        steps: args.steps,
        seed: args.seed,
        threads: ctx.threads,
        target_psnr: args.target_psnr,
        pe_freqs: args.pe_freqs,
        w0: args.w0,
        lr: args.lr,
        batch: args.batch,
        base: match args.base.as_str() {
            "default" | "none" => super::base_choice(&args.base)?,
            // A modulation base file was loaded above; the weight-mode start is then unused.
            _ if mod_cfg.is_some() => inr::BaseChoice::None,
            path => super::base_choice(path)?,
        },
        density: args.density,
        prune_scope: args.prune_scope.unwrap_or(PruneScope::PerLayer),
        prune_method: args.prune_method.unwrap_or(PruneMethod::Magnitude),
        target_bpp: args.bpp,
        kmeans: args.kmeans,
        bit_allocation: args.bit_allocation.unwrap_or(BitAllocation::Sensitivity),
        base_lr_scale: args.base_lr_scale,
    };

    let pb = progress_bar(ctx);
    let mut phase = "";
    let mut last_psnr: Option<f64> = None;
    let mut on_progress = |p: &Progress| {
        if p.phase != phase {
            phase = p.phase;
            pb.set_prefix(p.phase);
            pb.reset_eta();
        }
        if p.psnr.is_some() {
            last_psnr = p.psnr;
        }
        pb.set_length(p.total as u64);
        pb.set_position(p.step as u64);
        if let Some(v) = last_psnr {
            pb.set_message(format!("PSNR {v:.2} dB"));
        }
    };
    let start = Instant::now();
    let result = match (&mod_cfg, &grid_cfg) {
        (Some(m), _) => inr::encode_modulated(img, m, &mut on_progress),
        (None, Some(g)) => inr::encode_grid(img, g, &mut on_progress),
        (None, None) => inr::encode_image(img, &cfg, &mut on_progress),
    };
    pb.finish_and_clear();
    let enc = result.with_context(|| format!("cannot encode {}", args.input.display()))?;
    let secs = start.elapsed().as_secs_f64();

    inr::util::write_atomic(&args.output, &enc.bytes, args.force)
        .with_context(|| format!("cannot write {}", args.output.display()))?;

    // Without --mode a small image may have been coded with the shared synthesis.
    let mode = if mode == Mode::Grid && is_shared_grid(&enc.bytes) {
        Mode::GridShared
    } else {
        mode
    };
    let bytes = enc.bytes.len() as u64;
    let bpp = inr::metrics::bpp(bytes, img.width, img.height)?;
    if let Some(t) = args.bpp {
        if !inr::bpp_meets(bpp, t) {
            let why = if matches!(mode, Mode::Grid | Mode::GridShared) {
                "the fits and the latents' dead zone did not land in the band: the best file \
                 found was kept (more --steps may help)"
            } else if bpp < t {
                "the network cannot reach it, or spending more bytes after quantization-aware \
                 fine-tuning lowered the PSNR, so the smaller file was kept"
            } else {
                "the network cannot reach it: try another --preset or --width"
            };
            eprintln!(
                "warning: the file has {bpp:.4} bpp, outside ±3 % of the target {t} bpp ({why})"
            );
        }
    }
    if let Some(t) = args.target_psnr {
        if enc.psnr < t {
            let hint = if matches!(mode, Mode::Grid | Mode::GridShared) {
                "no fit reached it: try more --steps"
            } else {
                "the network did not reach it: try a larger --preset or more --steps"
            };
            eprintln!(
                "warning: the file has {:.2} dB, below the target {t} dB ({hint})",
                enc.psnr
            );
        }
    }
    if ctx.json {
        print_json(&serde_json::json!({
            "input": path_str(&args.input),
            "output": path_str(&args.output),
            "width": img.width,
            "height": img.height,
            "channels": img.channels,
            "preset": preset_name(args.preset),
            "mode": mode.name(),
            "lambda": grid_cfg.as_ref().map(|g| g.fit.lambda),
            "upsampling": grid_cfg.as_ref().map(|g| g.fit.upsampling.name()),
            // The grid base the synthesis started from (null: random start); with a shared
            // synthesis, the network the file names (rate control may have changed it).
            "grid_base": if mode == Mode::GridShared {
                inr::inspect(&enc.bytes).ok().and_then(|i| i.base_id)
            } else {
                grid_cfg
                    .as_ref()
                    .and_then(|g| g.start_id(img.channels))
                    .map(|id| format!("{id:016x}"))
            },
            "config": {
                "width": args.width,
                "depth": args.depth,
                "bits": args.bits,
                "steps": args.steps,
                "seed": args.seed,
                "density": args.density,
                "kmeans": args.kmeans,
                // The weight mode's choices (null in the other modes).
                "prune_method": (mode == Mode::Weights).then_some(cfg.prune_method),
                "bit_allocation": (mode == Mode::Weights).then_some(cfg.bit_allocation),
                "target_bpp": args.bpp,
                "target_psnr": args.target_psnr,
            },
            "psnr": json_psnr(enc.psnr),
            "bpp": bpp,
            "bytes": bytes,
            "time_s": secs,
            "notes": loaded.notes,
        }))
    } else {
        say(format_args!(
            "PSNR {} dB  bpp {bpp:.3}  bytes {bytes}  time {secs:.1} s",
            inr::metrics::format_psnr(enc.psnr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_names_match_the_cli() {
        assert_eq!(preset_name(Preset::Tiny), "tiny");
        assert_eq!(preset_name(Preset::Huge), "huge");
    }
}
