//! Rate–distortion sweeps: every image of a folder through every `inr` preset and a real JPEG
//! baseline, with timings, CompressAI-style JSON, per-image CSV, plots and Bjøntegaard deltas.
//!
//! Measurement rules (kept identical for every codec):
//! - the rate is `8 * file bytes / pixels` of the complete file as it would be written;
//! - PSNR is measured after decoding that file with the codec's own decoder (the `inr`
//!   encoder's self-reported PSNR is not used), over all 8-bit samples of all channels
//!   together, peak 255;
//! - `encode_s` / `decode_s` are wall-clock seconds of one encode / decode call;
//! - the per-operating-point means (`results` in `rd.json`) average bpp, PSNR and times over
//!   the images.
//!
//! Images are processed one at a time in sorted order (bounded memory). JPEG qualities of one
//! image run in parallel with rayon; `inr` encodes run one after the other because the encoder
//! already uses all cores.

pub mod audio;
pub mod bd;
pub mod jpeg;
pub mod plot;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::media::Image;
use crate::{DecodeOptions, EncodeConfig, Preset};
use bd::{BdError, RdPoint};
use jpeg::{JpegError, JpegVariant};

/// Default JPEG qualities of a sweep.
pub const DEFAULT_JPEG_QUALITIES: &[u8] = &[5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90];

/// Name of the anchor codec for Bjøntegaard deltas.
pub const BD_ANCHOR: &str = "jpeg";

/// What to measure.
#[derive(Debug, Clone)]
pub struct RdConfig {
    /// `inr` presets (one operating point each, forming the `inr` curve). Empty: no `inr`.
    pub presets: Vec<Preset>,
    /// JPEG qualities (1..=100) for every JPEG variant.
    pub jpeg_qualities: Vec<u8>,
    /// JPEG variants to run (`jpeg` is the Bjøntegaard anchor).
    pub jpeg_variants: Vec<JpegVariant>,
    /// Only the first `limit` images (in sorted order).
    pub limit: Option<usize>,
    /// Override the presets' fitting steps.
    pub steps: Option<usize>,
    /// Encoder seed.
    pub seed: u64,
    /// Draw published reference curves (COIN, Strümpler et al.; 24 Kodak images) on the plot.
    pub published_anchors: bool,
    /// Modulation mode (`inr-mod` curve): one point per latent quantization step. Empty: none.
    pub mod_latent_steps: Vec<f32>,
    /// Latent fitting steps of the modulation points (default: the encoder's).
    pub mod_fit_steps: Option<usize>,
    /// Modulation base (default: the embedded one).
    pub mod_base: Option<crate::base::Base>,
    /// Grid mode (`inr-grid` curve): one point per rate weight λ. Empty: none.
    pub grid_lambdas: Vec<f32>,
    /// Grid mode under rate control (`inr-grid-bpp` curve): one point per target in bits per
    /// pixel (`GridEncodeConfig::target_bpp`: λ searched, the file trimmed to fit). Empty: none.
    pub grid_bpps: Vec<f64>,
    /// Grid mode under quality control (`inr-grid-psnr` curve): one point per target PSNR in
    /// dB (the smallest file at that PSNR the fit reaches, as `inr encode --mode grid --psnr`).
    /// Empty: none.
    pub grid_psnrs: Vec<f64>,
    /// Fitting steps of the grid points (default: the encoder's).
    pub grid_fit_steps: Option<usize>,
    /// Grid mode with a shared synthesis (`inr-grid-shared` curve, §13.8): one point per rate
    /// weight λ, [`crate::GRID_SHARED_STEPS`] latent steps unless `grid_fit_steps` says
    /// otherwise. Empty: none.
    pub shared_lambdas: Vec<f32>,
    /// The shared synthesis of those points (`Default`: the embedded one).
    pub shared_base: crate::BaseChoice,
    /// Those points keep the shared network's output layer (§13.8 without flag bit 7, as
    /// `inr encode --output-layer frozen`; curve `inr-grid-shared-frozen`); else it is fitted
    /// on every image (`--output-layer fitted`).
    pub shared_frozen: bool,
    /// Start of the weight-mode presets' fits (`Default`: the embedded base of each preset).
    pub base: crate::BaseChoice,
    /// Drop a translucent alpha channel of the images (colours kept unblended) instead of
    /// refusing them: the JPEG baselines code no alpha.
    pub ignore_alpha: bool,
}

impl Default for RdConfig {
    fn default() -> Self {
        RdConfig {
            presets: vec![Preset::Tiny, Preset::Small, Preset::Medium],
            jpeg_qualities: DEFAULT_JPEG_QUALITIES.to_vec(),
            jpeg_variants: vec![JpegVariant::Turbo, JpegVariant::Moz],
            limit: None,
            steps: None,
            seed: 0,
            published_anchors: false,
            mod_latent_steps: Vec::new(),
            mod_fit_steps: None,
            mod_base: None,
            grid_lambdas: Vec::new(),
            grid_bpps: Vec::new(),
            grid_psnrs: Vec::new(),
            grid_fit_steps: None,
            shared_lambdas: Vec::new(),
            shared_base: crate::BaseChoice::Default,
            shared_frozen: false,
            base: crate::BaseChoice::Default,
            ignore_alpha: false,
        }
    }
}

/// Errors of a sweep.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("no images found in {0} (expected at least one PNG/JPEG/... file)")]
    NoImages(PathBuf),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("JPEG failed on {image} at quality {quality}: {source}")]
    Jpeg {
        image: String,
        quality: u8,
        #[source]
        source: JpegError,
    },
    #[error("inr encode failed on {image} with preset {preset}: {source}")]
    Encode {
        image: String,
        preset: String,
        #[source]
        source: crate::EncodeError,
    },
    #[error("inr decode failed on {image} with preset {preset}: {source}")]
    Decode {
        image: String,
        preset: String,
        #[source]
        source: crate::DecodeError,
    },
    #[error("decoded image of {image} ({codec} {param}) has a different shape than the original")]
    Shape {
        image: String,
        codec: String,
        param: String,
    },
    #[error("plot failed: {0}")]
    Plot(String),
    #[error("{0} exists (use --force to overwrite)")]
    Exists(PathBuf),
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
}

/// One measured operating point on one image.
#[derive(Debug, Clone, Serialize)]
pub struct PointResult {
    pub codec: String,
    /// Quality (JPEG) or preset name (`inr`).
    pub param: String,
    pub bytes: u64,
    pub bpp: f64,
    pub psnr: f64,
    pub encode_s: f64,
    pub decode_s: f64,
}

/// All operating points of one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    /// File name relative to the data folder.
    pub file: String,
    /// Name of its CSV file in the report folder (without folder).
    pub csv: String,
    pub width: u32,
    pub height: u32,
    pub points: Vec<PointResult>,
}

/// CompressAI-style per-operating-point means.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CodecResults {
    pub param: Vec<String>,
    pub bpp: Vec<f64>,
    pub psnr: Vec<f64>,
    pub encode_s: Vec<f64>,
    pub decode_s: Vec<f64>,
}

/// One codec's curve, averaged over the images.
#[derive(Debug, Clone, Serialize)]
pub struct CodecSummary {
    pub name: String,
    pub description: String,
    pub results: CodecResults,
}

/// Bjøntegaard deltas of one codec against the anchor, on the mean curves.
#[derive(Debug, Clone, Serialize)]
pub struct BdResult {
    pub codec: String,
    pub anchor: String,
    /// Percent; negative is better than the anchor.
    pub bd_rate_percent: Option<f64>,
    /// dB; positive is better than the anchor.
    pub bd_psnr_db: Option<f64>,
    /// Why a delta could not be computed (e.g. the curves do not overlap).
    pub error: Option<String>,
}

/// Everything a sweep measured.
#[derive(Debug, Clone, Serialize)]
pub struct RdReport {
    pub description: String,
    pub codecs: Vec<CodecSummary>,
    pub bd: Vec<BdResult>,
    pub images: Vec<ImageResult>,
}

/// Progress of a sweep, sent after every measured operating point (`fit: None`) and while an
/// `inr` encode is fitting (`fit: Some((step, total_steps))`, `done` not yet counting it).
#[derive(Debug, Clone)]
pub struct RdProgress<'a> {
    pub done: usize,
    pub total: usize,
    pub image: &'a str,
    pub codec: &'a str,
    pub param: &'a str,
    pub fit: Option<(usize, usize)>,
}

/// Load an image with the codec's input policy (`media::load_image_with`); translucent alpha
/// is an error unless `ignore_alpha` (then dropped).
fn load_rgb(path: &Path, ignore_alpha: bool) -> Result<Image, RdError> {
    let opts = crate::media::LoadOptions {
        ignore_alpha,
        ..Default::default()
    };
    crate::media::load_image_with(path, &opts)
        .map(|l| l.image)
        .map_err(|e| RdError::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// PSNR in dB (`metrics::psnr`); `None` if shapes differ.
pub(crate) fn psnr(a: &Image, b: &Image) -> Option<f64> {
    crate::metrics::psnr(a, b).ok()
}

fn bpp(bytes: usize, img: &Image) -> f64 {
    8.0 * bytes as f64 / (f64::from(img.width) * f64::from(img.height))
}

/// Image files directly inside `dir` (not recursive), sorted by file name. A file counts as an
/// image if its content or its extension says so (see [`crate::batch::looks_like_image`]).
///
/// # Errors
/// [`RdError::Io`] if the folder cannot be read.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, RdError> {
    let io = |source| RdError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && crate::batch::looks_like_image(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn jpeg_point(img: &Image, q: u8, v: JpegVariant, name: &str) -> Result<PointResult, RdError> {
    let wrap = |source| RdError::Jpeg {
        image: name.to_string(),
        quality: q,
        source,
    };
    let t = Instant::now();
    let bytes = jpeg::encode_jpeg(img, q, v).map_err(wrap)?;
    let encode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dec = jpeg::decode_jpeg(&bytes, img.channels).map_err(wrap)?;
    let decode_s = t.elapsed().as_secs_f64();
    let psnr = psnr(img, &dec).ok_or_else(|| RdError::Shape {
        image: name.to_string(),
        codec: v.name().to_string(),
        param: q.to_string(),
    })?;
    Ok(PointResult {
        codec: v.name().to_string(),
        param: q.to_string(),
        bytes: bytes.len() as u64,
        bpp: bpp(bytes.len(), img),
        psnr,
        encode_s,
        decode_s,
    })
}

fn preset_name(p: Preset) -> String {
    use clap::ValueEnum;
    p.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_else(|| format!("{p:?}").to_lowercase())
}

fn inr_point(
    img: &Image,
    p: Preset,
    cfg: &RdConfig,
    name: &str,
    fit: &mut (dyn FnMut(&str, usize, usize) + Send),
) -> Result<PointResult, RdError> {
    let preset = preset_name(p);
    let ecfg = EncodeConfig {
        preset: p,
        steps: cfg.steps,
        seed: cfg.seed,
        base: cfg.base.clone(),
        ..EncodeConfig::default()
    };
    let opts = DecodeOptions {
        bases: cfg.base.extra_bases(),
        ..DecodeOptions::default()
    };
    let t = Instant::now();
    let enc = crate::encode_image(img, &ecfg, &mut |pr| fit(&preset, pr.step, pr.total)).map_err(
        |source| RdError::Encode {
            image: name.to_string(),
            preset: preset.clone(),
            source,
        },
    )?;
    let encode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dec = crate::decode(&enc.bytes, &opts).map_err(|source| RdError::Decode {
        image: name.to_string(),
        preset: preset.clone(),
        source,
    })?;
    let decode_s = t.elapsed().as_secs_f64();
    let psnr = psnr(img, &dec).ok_or_else(|| RdError::Shape {
        image: name.to_string(),
        codec: "inr".into(),
        param: preset.clone(),
    })?;
    Ok(PointResult {
        codec: "inr".into(),
        param: preset,
        bytes: enc.bytes.len() as u64,
        bpp: bpp(enc.bytes.len(), img),
        psnr,
        encode_s,
        decode_s,
    })
}

/// Times `encode`, decodes its file with `opts` and measures it: one point of curve `codec`.
fn measure_point(
    img: &Image,
    name: &str,
    codec: &str,
    param: String,
    opts: &DecodeOptions,
    encode: impl FnOnce() -> Result<crate::Encoded, crate::EncodeError>,
) -> Result<PointResult, RdError> {
    let t = Instant::now();
    let enc = encode().map_err(|source| RdError::Encode {
        image: name.to_string(),
        preset: param.clone(),
        source,
    })?;
    let encode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let dec = crate::decode(&enc.bytes, opts).map_err(|source| RdError::Decode {
        image: name.to_string(),
        preset: param.clone(),
        source,
    })?;
    let decode_s = t.elapsed().as_secs_f64();
    let psnr = psnr(img, &dec).ok_or_else(|| RdError::Shape {
        image: name.to_string(),
        codec: codec.into(),
        param: param.clone(),
    })?;
    Ok(PointResult {
        codec: codec.into(),
        param,
        bytes: enc.bytes.len() as u64,
        bpp: bpp(enc.bytes.len(), img),
        psnr,
        encode_s,
        decode_s,
    })
}

fn mod_point(img: &Image, q: f32, cfg: &RdConfig, name: &str) -> Result<PointResult, RdError> {
    let mut fit = crate::LatentFit::default();
    if let Some(s) = cfg.mod_fit_steps {
        fit.steps = s;
    }
    if let Some(l2) = cfg.mod_base.as_ref().and_then(crate::mod_codec::trained_l2) {
        fit.l2 = l2;
    }
    let ecfg = crate::ModEncodeConfig {
        fit,
        latent_step: q,
        base: cfg.mod_base.clone(),
        seed: cfg.seed,
        ..crate::ModEncodeConfig::default()
    };
    let opts = DecodeOptions {
        bases: cfg.mod_base.iter().cloned().collect(),
        ..DecodeOptions::default()
    };
    measure_point(img, name, "inr-mod", format!("q{q}"), &opts, || {
        crate::encode_modulated(img, &ecfg, &mut |_| {})
    })
}

/// What a grid point fixes: the rate weight, or a target rate.
#[derive(Clone, Copy)]
enum GridTarget {
    Lambda(f32),
    Bpp(f64),
    /// A target PSNR (dB).
    Psnr(f64),
    /// A rate weight with the shared synthesis (§13.8).
    Shared(f32),
}

fn grid_point(
    img: &Image,
    target: GridTarget,
    cfg: &RdConfig,
    name: &str,
) -> Result<PointResult, RdError> {
    let mut ecfg = crate::GridEncodeConfig {
        seed: cfg.seed,
        base: grid_base(&cfg.base),
        ..Default::default()
    };
    if let Some(s) = cfg.grid_fit_steps {
        ecfg.fit.set_budget(s);
    }
    let (codec, param) = match target {
        GridTarget::Lambda(l) => {
            ecfg.fit.lambda = l;
            ("inr-grid", format!("l{l}"))
        }
        GridTarget::Bpp(b) => {
            ecfg.target_bpp = Some(b);
            ("inr-grid-bpp", format!("b{b}"))
        }
        GridTarget::Psnr(p) => {
            ecfg.target_psnr = Some(p);
            ("inr-grid-psnr", format!("q{p}"))
        }
        GridTarget::Shared(l) => {
            ecfg.shared = true;
            ecfg.base = cfg.shared_base.clone();
            ecfg.fit
                .set_budget(cfg.grid_fit_steps.unwrap_or(crate::GRID_SHARED_STEPS));
            ecfg.fit.lambda = l;
            ecfg.output_layer = if cfg.shared_frozen {
                crate::OutputLayer::Frozen
            } else {
                crate::OutputLayer::Fitted
            };
            (shared_curve(cfg), format!("l{l}"))
        }
    };
    let opts = DecodeOptions {
        bases: match &cfg.shared_base {
            crate::BaseChoice::Custom(b) => vec![b.clone()],
            _ => Vec::new(),
        },
        ..Default::default()
    };
    measure_point(img, name, codec, param, &opts, || {
        crate::encode_grid(img, &ecfg, &mut |_| {})
    })
}

/// The start of the grid points: the weight presets' choice carries over (`None` is the random
/// start here too, a grid base is used as given, anything else means the embedded grid base).
fn grid_base(b: &crate::BaseChoice) -> crate::BaseChoice {
    match b {
        crate::BaseChoice::None => crate::BaseChoice::None,
        crate::BaseChoice::Custom(b) if b.grid => crate::BaseChoice::Custom(b.clone()),
        _ => crate::BaseChoice::Default,
    }
}

fn validate(cfg: &RdConfig) -> Result<(), RdError> {
    if let Some(l) = cfg
        .grid_lambdas
        .iter()
        .chain(&cfg.shared_lambdas)
        .find(|l| !(l.is_finite() && **l >= 0.0))
    {
        return Err(RdError::Config(format!("grid lambda {l} (expected >= 0)")));
    }
    if let Some(b) = cfg.grid_bpps.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
        return Err(RdError::Config(format!(
            "grid target {b} bpp (expected > 0)"
        )));
    }
    if let Some(p) = cfg
        .grid_psnrs
        .iter()
        .find(|p| !(p.is_finite() && **p > 0.0))
    {
        return Err(RdError::Config(format!(
            "grid target {p} dB (expected > 0)"
        )));
    }
    if let Some(&q) = cfg
        .jpeg_qualities
        .iter()
        .find(|&&q| !(1..=100).contains(&q))
    {
        return Err(RdError::Config(format!(
            "JPEG quality {q} (expected 1..=100)"
        )));
    }
    if let Some(q) = cfg
        .mod_latent_steps
        .iter()
        .find(|q| !(q.is_finite() && **q > 0.0))
    {
        return Err(RdError::Config(format!("latent step {q} (expected > 0)")));
    }
    if cfg.presets.is_empty()
        && cfg.mod_latent_steps.is_empty()
        && cfg.grid_lambdas.is_empty()
        && cfg.grid_bpps.is_empty()
        && cfg.grid_psnrs.is_empty()
        && cfg.shared_lambdas.is_empty()
        && (cfg.jpeg_qualities.is_empty() || cfg.jpeg_variants.is_empty())
    {
        return Err(RdError::Config(
            "nothing to measure (expected at least one preset or JPEG quality)".into(),
        ));
    }
    if cfg.limit == Some(0) {
        return Err(RdError::Config("--limit 0 (expected >= 1)".into()));
    }
    Ok(())
}

/// Unique CSV names: `<stem>.csv`, or `<file name>.csv` when stems collide.
fn csv_names(files: &[PathBuf]) -> Vec<String> {
    let stem = |p: &PathBuf| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    files
        .iter()
        .map(|p| {
            let s = stem(p);
            if files.iter().filter(|q| stem(q) == s).count() > 1 {
                format!(
                    "{}.csv",
                    p.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                )
            } else {
                format!("{s}.csv")
            }
        })
        .collect()
}

/// Measure every image in `data_dir` with every configured codec and operating point.
///
/// # Errors
/// [`RdError::Config`] for an invalid configuration, [`RdError::NoImages`], and any I/O,
/// image, encode or decode failure (the sweep stops: a mean over a partial set would be
/// misleading).
pub fn run_rd(
    data_dir: &Path,
    cfg: &RdConfig,
    progress: &mut (dyn FnMut(&RdProgress) + Send),
) -> Result<RdReport, RdError> {
    validate(cfg)?;
    let mut files = list_images(data_dir)?;
    if let Some(n) = cfg.limit {
        files.truncate(n);
    }
    if files.is_empty() {
        return Err(RdError::NoImages(data_dir.to_path_buf()));
    }
    let csvs = csv_names(&files);
    let jobs: Vec<(JpegVariant, u8)> = cfg
        .jpeg_variants
        .iter()
        .flat_map(|&v| cfg.jpeg_qualities.iter().map(move |&q| (v, q)))
        .collect();
    let per_image = jobs.len()
        + cfg.presets.len()
        + cfg.mod_latent_steps.len()
        + cfg.grid_lambdas.len()
        + cfg.grid_bpps.len()
        + cfg.grid_psnrs.len()
        + cfg.shared_lambdas.len();
    let total = per_image * files.len();
    let mut done = 0;
    let mut images = Vec::with_capacity(files.len());
    for (path, csv) in files.iter().zip(csvs) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let img = load_rgb(path, cfg.ignore_alpha)?;
        let mut points: Vec<PointResult> = jobs
            .par_iter()
            .map(|&(v, q)| jpeg_point(&img, q, v, &name))
            .collect::<Result<_, _>>()?;
        for p in &points {
            done += 1;
            progress(&RdProgress {
                done,
                total,
                image: &name,
                codec: &p.codec,
                param: &p.param,
                fit: None,
            });
        }
        for &p in &cfg.presets {
            let pt = inr_point(&img, p, cfg, &name, &mut |param, step, steps| {
                progress(&RdProgress {
                    done,
                    total,
                    image: &name,
                    codec: "inr",
                    param,
                    fit: Some((step, steps)),
                });
            })?;
            done += 1;
            progress(&RdProgress {
                done,
                total,
                image: &name,
                codec: &pt.codec,
                param: &pt.param,
                fit: None,
            });
            points.push(pt);
        }
        // Modulation points (latent steps), then grid points (rate weights, then targets).
        let mod_points = cfg.mod_latent_steps.iter().map(|&q| Err(q));
        let grid_points = (cfg.grid_lambdas.iter().map(|&l| GridTarget::Lambda(l)))
            .chain(cfg.grid_bpps.iter().map(|&b| GridTarget::Bpp(b)))
            .chain(cfg.grid_psnrs.iter().map(|&p| GridTarget::Psnr(p)))
            .chain(cfg.shared_lambdas.iter().map(|&l| GridTarget::Shared(l)))
            .map(Ok);
        for point in mod_points.chain(grid_points) {
            let pt = match point {
                Ok(t) => grid_point(&img, t, cfg, &name)?,
                Err(q) => mod_point(&img, q, cfg, &name)?,
            };
            done += 1;
            progress(&RdProgress {
                done,
                total,
                image: &name,
                codec: &pt.codec,
                param: &pt.param,
                fit: None,
            });
            points.push(pt);
        }
        images.push(ImageResult {
            file: name,
            csv,
            width: img.width,
            height: img.height,
            points,
        });
    }
    let mut descriptions: Vec<(String, String)> = cfg
        .jpeg_variants
        .iter()
        .map(|v| (v.name().to_string(), v.description().to_string()))
        .collect();
    if !cfg.presets.is_empty() {
        let steps = cfg
            .steps
            .map(|s| format!(", {s} fitting steps"))
            .unwrap_or_default();
        descriptions.push((
            "inr".into(),
            format!(
                "inr SIREN codec, one point per preset, {}, seed {}{steps}",
                base_description(&cfg.base),
                cfg.seed
            ),
        ));
    }
    if !cfg.mod_latent_steps.is_empty() {
        descriptions.push((
            "inr-mod".into(),
            format!(
                "inr modulation mode (shared base, latent grid), one point per latent step, {} \
                 latent steps",
                cfg.mod_fit_steps
                    .unwrap_or(crate::LatentFit::default().steps)
            ),
        ));
    }
    let grid_start = match grid_base(&cfg.base) {
        crate::BaseChoice::None => "random start".to_string(),
        crate::BaseChoice::Custom(b) => format!("grid base {:016x}", b.id()),
        crate::BaseChoice::Default => "the embedded grid base where one matches".into(),
    };
    let grid_steps = cfg
        .grid_fit_steps
        .unwrap_or(crate::GridFit::default().steps);
    for (codec, points, what) in [
        (
            "inr-grid",
            cfg.grid_lambdas.is_empty(),
            "one point per lambda",
        ),
        (
            "inr-grid-bpp",
            cfg.grid_bpps.is_empty(),
            "one point per target rate (rate control)",
        ),
        (
            "inr-grid-psnr",
            cfg.grid_psnrs.is_empty(),
            "one point per target PSNR (quality control)",
        ),
    ] {
        if !points {
            descriptions.push((
                codec.into(),
                format!(
                    "inr grid mode (per-image latent pyramid + SIREN, rate-distortion fit), \
                     {what}, {grid_steps} fitting steps, {grid_start}"
                ),
            ));
        }
    }
    if !cfg.shared_lambdas.is_empty() {
        let net = match &cfg.shared_base {
            crate::BaseChoice::Custom(b) => format!("shared synthesis {:016x}", b.id()),
            _ => "the embedded shared synthesis for each lambda".to_string(),
        };
        let coded = if cfg.shared_frozen {
            "only the latent pyramid is coded"
        } else {
            "the latent pyramid and the output layer are coded"
        };
        descriptions.push((
            shared_curve(cfg).into(),
            format!(
                "inr grid mode with a shared synthesis ({coded}), one point per lambda, {} \
                 fitting steps, {net}",
                cfg.grid_fit_steps.unwrap_or(crate::GRID_SHARED_STEPS)
            ),
        ));
    }
    let codecs = summarize(&images, &descriptions);
    let bd = bd_against(&codecs, BD_ANCHOR);
    Ok(RdReport {
        description: format!(
            "rate-distortion sweep over {} image(s) of {}; PSNR over RGB samples after decoding, \
             peak 255; bpp from real file bytes; means over images per operating point",
            images.len(),
            data_dir.display()
        ),
        codecs,
        bd,
        images,
    })
}

/// How a sweep's description names the start of its fits.
pub(crate) fn base_description(b: &crate::BaseChoice) -> String {
    match b {
        crate::BaseChoice::Default => "the embedded base where one matches the preset".into(),
        crate::BaseChoice::None => "random start".into(),
        crate::BaseChoice::Custom(b) => format!("base {:016x}", b.id()),
    }
}

/// Per-operating-point means over images, in the order the points were measured.
pub fn summarize(images: &[ImageResult], codecs: &[(String, String)]) -> Vec<CodecSummary> {
    codecs
        .iter()
        .map(|(name, description)| {
            let mut r = CodecResults::default();
            let params: Vec<String> = images
                .first()
                .map(|i| {
                    i.points
                        .iter()
                        .filter(|p| &p.codec == name)
                        .map(|p| p.param.clone())
                        .collect()
                })
                .unwrap_or_default();
            for param in params {
                let pts: Vec<&PointResult> = images
                    .iter()
                    .filter_map(|i| {
                        i.points
                            .iter()
                            .find(|p| &p.codec == name && p.param == param)
                    })
                    .collect();
                let n = pts.len() as f64;
                let mean = |f: fn(&PointResult) -> f64| pts.iter().map(|p| f(p)).sum::<f64>() / n;
                r.bpp.push(mean(|p| p.bpp));
                r.psnr.push(mean(|p| p.psnr));
                r.encode_s.push(mean(|p| p.encode_s));
                r.decode_s.push(mean(|p| p.decode_s));
                r.param.push(param);
            }
            CodecSummary {
                name: name.clone(),
                description: description.clone(),
                results: r,
            }
        })
        .collect()
}

fn curve(c: &CodecSummary) -> Vec<RdPoint> {
    c.results
        .bpp
        .iter()
        .zip(&c.results.psnr)
        .map(|(&rate, &psnr)| RdPoint { rate, psnr })
        .collect()
}

/// BD-rate and BD-PSNR of every codec except `anchor` against `anchor` (mean curves).
pub fn bd_against(codecs: &[CodecSummary], anchor: &str) -> Vec<BdResult> {
    let Some(a) = codecs.iter().find(|c| c.name == anchor) else {
        return Vec::new();
    };
    let ac = curve(a);
    codecs
        .iter()
        .filter(|c| c.name != anchor)
        .map(|c| bd_result(&c.name, anchor, &ac, &curve(c)))
        .collect()
}

/// BD-rate and BD-PSNR of curve `test` (codec `codec`) against curve `anchor_curve`.
pub(crate) fn bd_result(
    codec: &str,
    anchor: &str,
    anchor_curve: &[RdPoint],
    test: &[RdPoint],
) -> BdResult {
    let r: Result<f64, BdError> = bd::bd_rate(anchor_curve, test);
    let p: Result<f64, BdError> = bd::bd_psnr(anchor_curve, test);
    let error = match (&r, &p) {
        (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
        _ => None,
    };
    BdResult {
        codec: codec.to_string(),
        anchor: anchor.to_string(),
        bd_rate_percent: r.ok(),
        bd_psnr_db: p.ok(),
        error,
    }
}

/// The curve name of the shared-synthesis points of `cfg`.
fn shared_curve(cfg: &RdConfig) -> &'static str {
    if cfg.shared_frozen {
        "inr-grid-shared-frozen"
    } else {
        "inr-grid-shared"
    }
}

/// Published reference curves (bpp, PSNR) on all 24 Kodak images, from `shared/anchors.md`.
pub const PUBLISHED: &[(&str, &[(f64, f64)])] = &[
    (
        "COIN (published, 24 Kodak)",
        &[
            (0.0368, 22.41),
            (0.0736, 23.21),
            (0.1604, 24.64),
            (0.3074, 26.41),
            (0.6109, 28.41),
            (1.209, 30.64),
        ],
    ),
    (
        "Strümpler basic 8-bit (published, 24 Kodak)",
        &[
            (0.0996, 25.64),
            (0.188, 27.15),
            (0.299, 28.41),
            (0.946, 32.27),
        ],
    ),
];

/// Quote a CSV field when needed (RFC 4180).
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The per-image CSV: `codec,param,bytes,bpp,psnr,encode_s,decode_s`.
pub fn image_csv(img: &ImageResult) -> String {
    let mut s = String::from("codec,param,bytes,bpp,psnr,encode_s,decode_s\n");
    for p in &img.points {
        s.push_str(&format!(
            "{},{},{},{:.6},{:.4},{:.6},{:.6}\n",
            csv_field(&p.codec),
            csv_field(&p.param),
            p.bytes,
            p.bpp,
            p.psnr,
            p.encode_s,
            p.decode_s
        ));
    }
    s
}

/// Names of the files [`write_report`] writes into the report folder.
pub fn report_files(report: &RdReport) -> Vec<String> {
    let mut v = vec!["rd.json".to_string(), "rd.svg".into(), "rd.png".into()];
    v.extend(report.images.iter().map(|i| i.csv.clone()));
    v
}

/// Names of the files a sweep of `data_dir` with `cfg` will write (before running it), so a
/// caller can refuse to start when they exist.
///
/// # Errors
/// [`RdError::Io`] if the folder cannot be read.
pub fn planned_report_files(data_dir: &Path, cfg: &RdConfig) -> Result<Vec<String>, RdError> {
    let mut files = list_images(data_dir)?;
    if let Some(n) = cfg.limit {
        files.truncate(n);
    }
    let mut v = vec!["rd.json".to_string(), "rd.svg".into(), "rd.png".into()];
    v.extend(csv_names(&files));
    Ok(v)
}

/// Fail early if any output of a sweep over `data_dir` would overwrite a file.
///
/// # Errors
/// [`RdError::Exists`] naming the first file that exists.
pub fn check_outputs_free(out_dir: &Path, names: &[String]) -> Result<(), RdError> {
    for n in names {
        let p = out_dir.join(n);
        if p.exists() {
            return Err(RdError::Exists(p));
        }
    }
    Ok(())
}

/// Writes `out_dir/name` atomically (refusing to replace a file unless `overwrite`).
fn write_file(out_dir: &Path, name: &str, bytes: &[u8], overwrite: bool) -> Result<(), RdError> {
    let path = out_dir.join(name);
    crate::util::write_atomic(&path, bytes, overwrite).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            RdError::Exists(path.clone())
        } else {
            RdError::Io {
                path: path.clone(),
                source,
            }
        }
    })
}

/// Write `rd.json`, one CSV per image, `rd.svg` and `rd.png` into `out_dir` (created if
/// missing), each atomically.
///
/// # Errors
/// [`RdError::Exists`] if a file exists and `overwrite` is false, [`RdError::Io`],
/// [`RdError::Plot`], [`RdError::Json`].
pub fn write_report(
    report: &RdReport,
    out_dir: &Path,
    overwrite: bool,
    published_anchors: bool,
) -> Result<(), RdError> {
    std::fs::create_dir_all(out_dir).map_err(|source| RdError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    if !overwrite {
        check_outputs_free(out_dir, &report_files(report))?;
    }
    let write = |name: &str, bytes: &[u8]| write_file(out_dir, name, bytes, overwrite);
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    write("rd.json", &json)?;
    for img in &report.images {
        write(&img.csv, image_csv(img).as_bytes())?;
    }
    let mut curves: Vec<plot::Curve> = report
        .codecs
        .iter()
        .map(|c| plot::Curve {
            label: c.name.clone(),
            points: c
                .results
                .bpp
                .iter()
                .copied()
                .zip(c.results.psnr.iter().copied())
                .collect(),
            dashed: false,
        })
        .collect();
    if published_anchors {
        curves.extend(PUBLISHED.iter().map(|(label, pts)| plot::Curve {
            label: (*label).to_string(),
            points: pts.to_vec(),
            dashed: true,
        }));
    }
    let title = format!("Mean RGB PSNR vs rate ({} images)", report.images.len());
    let svg = plot::render_svg(&title, &curves).map_err(RdError::Plot)?;
    write("rd.svg", svg.as_bytes())?;
    let png = plot::render_png(&title, &curves).map_err(RdError::Plot)?;
    write("rd.png", &png)?;
    Ok(())
}
