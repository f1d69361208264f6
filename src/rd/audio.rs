//! Audio rate–distortion sweeps: every WAV clip of a folder through every `inr` audio preset,
//! next to classical baseline points read from a CSV (Opus, MP3, ... measured elsewhere) and
//! the published COIN++ LibriSpeech curve.
//!
//! Measurement rules (the same for every point):
//! - the rate is `8 * file bytes / duration / 1000` kbit/s of the complete `.inr` file;
//! - PSNR (waveform mapped from [-1, 1] to [0, 1], the COIN++ convention) and SNR are measured
//!   after decoding that file with the codec's own streaming decoder, over all samples of all
//!   channels, against the WAV as read (`s / 2^(b-1)` for integer samples);
//! - baseline rows carry only an SNR; their PSNR is derived exactly from it and the clip's
//!   energy: `PSNR = SNR + 10 log10(4 / mean(x^2))` (both metrics share the MSE);
//! - `encode_s` / `decode_s` are wall-clock seconds of one encode / decode call; baselines
//!   have none;
//! - a curve's mean point averages kbit/s, PSNR, SNR and times over the clips; a baseline
//!   operating point enters the means only when every clip has it.
//!
//! Clips are processed one at a time in sorted order; each encode uses all threads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::bd::RdPoint;
use super::{csv_field, plot, BdResult, RdError};
use crate::audio::{AudioSource, WavSource};
use crate::{AudioEncodeConfig, BaseChoice, Limits, Preset};

/// Name of the `inr` audio curve.
pub const INR_AUDIO: &str = "inr";
/// Codec name of the audio grid mode's points (`codec-spec.md` §14).
pub const INR_AUDIO_GRID: &str = "inr-grid";

/// Published COIN++ points on LibriSpeech (kbit/s, PSNR dB; `shared/anchors.md`, coinpp
/// `results/librispeech/coinpp.json`).
pub const COINPP_LIBRISPEECH: &[(f64, f64)] = &[
    (5.63, 36.01),
    (13.81, 39.35),
    (27.48, 42.90),
    (65.23, 48.12),
    (131.38, 54.68),
];

/// Axis labels of the audio plots.
pub const PSNR_AXES: (&str, &str) = ("rate (kbit/s)", "PSNR (dB, waveform in [0, 1])");
/// Axis labels of the SNR plot.
pub const SNR_AXES: (&str, &str) = ("rate (kbit/s)", "SNR (dB)");

/// One baseline row: a point measured by another codec on one clip.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineRow {
    /// The clip's file stem (`speech` for `speech.wav`).
    pub clip: String,
    pub codec: String,
    pub param: String,
    pub bytes: Option<u64>,
    pub kbps: f64,
    pub snr: f64,
}

/// Largest baseline CSV read (rows of a few dozen bytes).
pub const MAX_BASELINE_ROWS: usize = 100_000;

/// Parses a baseline CSV with a header naming at least `clip`, `codec`, `param`, `kbps` and
/// `snr_db` (`bytes` optional; other columns ignored), as `shared/baselines/audio_dev.csv`.
/// Fields are plain (no quoted commas).
///
/// # Errors
/// [`RdError::Config`] naming the line of a missing column, a short row or a bad number.
pub fn parse_baselines(text: &str) -> Result<Vec<BaselineRow>, RdError> {
    let bad = |m: String| RdError::Config(format!("baseline CSV: {m}"));
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| bad("empty file".into()))?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| bad(format!("no `{name}` column in the header")))
    };
    let (ci, co, cp, ck, cs) = (
        col("clip")?,
        col("codec")?,
        col("param")?,
        col("kbps")?,
        col("snr_db")?,
    );
    let cb = col("bytes").ok();
    let mut rows = Vec::new();
    for (n, line) in lines {
        if rows.len() >= MAX_BASELINE_ROWS {
            return Err(bad(format!("more than {MAX_BASELINE_ROWS} rows")));
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |i: usize| {
            f.get(i)
                .copied()
                .ok_or_else(|| bad(format!("line {}: {} fields", n + 1, f.len())))
        };
        let num = |i: usize| -> Result<f64, RdError> {
            let s = get(i)?;
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(format!("line {}: `{s}` is not a finite number", n + 1)))
        };
        let kbps = num(ck)?;
        if kbps <= 0.0 {
            return Err(bad(format!("line {}: rate {kbps} (expected > 0)", n + 1)));
        }
        rows.push(BaselineRow {
            clip: get(ci)?.to_string(),
            codec: get(co)?.to_string(),
            param: get(cp)?.to_string(),
            bytes: match cb {
                Some(i) => get(i)?.parse().ok(),
                None => None,
            },
            kbps,
            snr: num(cs)?,
        });
    }
    Ok(rows)
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct AudioRdConfig {
    /// `inr` audio presets (one point each). Empty: baselines only.
    pub presets: Vec<Preset>,
    /// The base every encode starts from (`Default`: the embedded one matching the preset).
    pub base: BaseChoice,
    /// Override the presets' fitting steps per window.
    pub steps: Option<usize>,
    pub seed: u64,
    /// Rayon threads of each encode (`None`: all cores).
    pub threads: Option<usize>,
    /// Only the first `limit` clips (in sorted order).
    pub limit: Option<usize>,
    /// Baseline points to place beside `inr` (matched to clips by file stem).
    pub baselines: Vec<BaselineRow>,
    /// Draw the published COIN++ LibriSpeech curve on the PSNR plot.
    pub published_anchors: bool,
    /// Also measure the audio grid mode (`inr-grid` curve), one point per rate weight λ.
    pub grid_lambdas: Vec<f32>,
    /// Fitting steps of the grid points (`None`: the grid mode's default).
    pub grid_steps: Option<usize>,
}

impl Default for AudioRdConfig {
    fn default() -> Self {
        AudioRdConfig {
            presets: vec![Preset::Tiny, Preset::Small, Preset::Medium],
            base: BaseChoice::Default,
            steps: None,
            seed: 0,
            threads: None,
            limit: None,
            baselines: Vec::new(),
            published_anchors: false,
            grid_lambdas: Vec::new(),
            grid_steps: None,
        }
    }
}

/// One operating point on one clip.
#[derive(Debug, Clone, Serialize)]
pub struct AudioPoint {
    pub codec: String,
    /// Preset name (`inr`) or the baseline's parameter.
    pub param: String,
    pub bytes: Option<u64>,
    pub kbps: f64,
    pub psnr: f64,
    pub snr: f64,
    pub encode_s: Option<f64>,
    pub decode_s: Option<f64>,
    /// The id of the base an `inr` file was coded from (hex), if any.
    pub base: Option<String>,
}

/// All points of one clip.
#[derive(Debug, Clone, Serialize)]
pub struct ClipResult {
    pub file: String,
    /// Name of its CSV file in the report folder.
    pub csv: String,
    pub sample_rate: u32,
    pub channels: u8,
    pub frames: u64,
    pub duration_s: f64,
    /// Mean square of the samples in [-1, 1] (what converts a baseline SNR to a PSNR).
    pub mean_square: f64,
    pub points: Vec<AudioPoint>,
}

/// Per-operating-point means over the clips.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AudioCodecResults {
    pub param: Vec<String>,
    pub kbps: Vec<f64>,
    pub psnr: Vec<f64>,
    pub snr: Vec<f64>,
    /// Mean encode seconds (`null` for baselines).
    pub encode_s: Vec<Option<f64>>,
    /// Mean encode seconds per second of audio (`null` for baselines).
    pub encode_s_per_audio_s: Vec<Option<f64>>,
    pub decode_s: Vec<Option<f64>>,
}

/// One codec's mean curve.
#[derive(Debug, Clone, Serialize)]
pub struct AudioCodecSummary {
    pub name: String,
    pub description: String,
    pub results: AudioCodecResults,
}

/// Everything an audio sweep measured.
#[derive(Debug, Clone, Serialize)]
pub struct AudioRdReport {
    pub description: String,
    pub codecs: Vec<AudioCodecSummary>,
    /// Bjøntegaard deltas of `inr` against each baseline, on the mean PSNR curves (the mean SNR
    /// curves give the same deltas: per clip, PSNR is SNR plus a constant).
    pub bd: Vec<BdResult>,
    pub clips: Vec<ClipResult>,
    /// Baseline clips that matched no WAV file of the folder (ignored).
    pub unmatched_baseline_clips: Vec<String>,
}

/// Progress of an audio sweep, after every point (`fit: None`) and while encoding.
#[derive(Debug, Clone)]
pub struct AudioRdProgress<'a> {
    pub done: usize,
    pub total: usize,
    pub clip: &'a str,
    pub param: &'a str,
    pub fit: Option<(usize, usize)>,
}

/// WAV files directly inside `dir` (by content, or a `.wav` extension), sorted by name.
///
/// # Errors
/// [`RdError::Io`] if the folder cannot be read.
pub fn list_clips(dir: &Path) -> Result<Vec<PathBuf>, RdError> {
    let io = |source| RdError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && crate::audio::looks_like_wav_file(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn open(path: &Path) -> Result<WavSource<std::io::BufReader<std::fs::File>>, RdError> {
    WavSource::open(path).map_err(|e| RdError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Mean square of all samples of `src`, read in bounded blocks.
fn mean_square(src: &mut dyn AudioSource, path: &Path) -> Result<f64, RdError> {
    const BLOCK: u64 = 1 << 16;
    let (mut sum, mut n) = (0.0f64, 0u64);
    let mut buf = Vec::new();
    let frames = src.frames();
    let mut start = 0;
    while start < frames {
        let len = BLOCK.min(frames - start);
        src.read(start, len as usize, &mut buf)
            .map_err(|e| RdError::Image {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        sum += buf
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>();
        n += buf.len() as u64;
        start += len;
    }
    Ok(if n == 0 { 0.0 } else { sum / n as f64 })
}

/// PSNR ([0, 1] waveform) of a reconstruction with signal-to-noise ratio `snr` dB of a clip
/// whose samples have mean square `ms`.
pub fn psnr_from_snr(snr: f64, ms: f64) -> f64 {
    snr + 10.0 * (4.0 / ms).log10()
}

fn inr_point(
    path: &Path,
    name: &str,
    p: Preset,
    cfg: &AudioRdConfig,
    fit: &mut (dyn FnMut(&str, usize, usize) + Send),
) -> Result<AudioPoint, RdError> {
    let preset = super::preset_name(p);
    let ecfg = AudioEncodeConfig {
        preset: p,
        steps: cfg.steps,
        seed: cfg.seed,
        threads: cfg.threads,
        base: cfg.base.clone(),
        ..AudioEncodeConfig::default()
    };
    let mut src = open(path)?;
    let t = Instant::now();
    let enc = crate::encode_audio(&mut src, &ecfg, &mut |pr| fit(&preset, pr.step, pr.total))
        .map_err(|source| RdError::Encode {
            image: name.to_string(),
            preset: preset.clone(),
            source,
        })?;
    let encode_s = t.elapsed().as_secs_f64();
    let base = enc.base_id.map(|id| format!("{id:016x}"));
    let coded = Coded {
        codec: INR_AUDIO,
        param: preset,
        encode_s,
        base,
    };
    measure(path, name, &enc.bytes, &cfg.base.extra_bases(), coded)
}

/// What [`measure`] reports besides the measurements.
struct Coded {
    codec: &'static str,
    param: String,
    encode_s: f64,
    base: Option<String>,
}

/// The point of an encoded clip: the decoder's time (rendering every block), and the quality
/// of its output streamed against the WAV at `path`.
fn measure(
    path: &Path,
    name: &str,
    bytes: &[u8],
    bases: &[crate::base::Base],
    c: Coded,
) -> Result<AudioPoint, RdError> {
    let dec_err = |source| RdError::Decode {
        image: name.to_string(),
        preset: c.param.clone(),
        source,
    };
    let t = Instant::now();
    crate::decode_audio_stream_with(bytes, &Limits::default(), bases, &mut |_, _, _| Ok(()))
        .map_err(dec_err)?;
    let decode_s = t.elapsed().as_secs_f64();
    let mut reference = open(path)?;
    let q = crate::eval_audio_with(bytes, &mut reference, &Limits::default(), bases)
        .map_err(dec_err)?;
    Ok(AudioPoint {
        codec: c.codec.into(),
        param: c.param,
        bytes: Some(bytes.len() as u64),
        kbps: q.kbps,
        psnr: q.psnr,
        snr: q.snr,
        encode_s: Some(c.encode_s),
        decode_s: Some(decode_s),
        base: c.base,
    })
}

/// One `inr` point of a clip: a weight-mode preset or a grid-mode rate weight.
enum Job {
    Preset(Preset),
    Grid(f32),
}

/// One audio grid-mode point (§14) at rate weight `lambda`.
fn inr_grid_point(
    path: &Path,
    name: &str,
    lambda: f32,
    cfg: &AudioRdConfig,
    fit: &mut (dyn FnMut(&str, usize, usize) + Send),
) -> Result<AudioPoint, RdError> {
    let param = format!("lambda={lambda}");
    // The weight presets' start carries over: `None` is the random start here too, an audio
    // grid base is used as given, anything else means the embedded audio grid base.
    let base = match &cfg.base {
        BaseChoice::None => BaseChoice::None,
        BaseChoice::Custom(b) if b.grid_audio => BaseChoice::Custom(b.clone()),
        _ => BaseChoice::Default,
    };
    let mut ecfg = crate::AudioGridEncodeConfig {
        seed: cfg.seed,
        threads: cfg.threads,
        base,
        ..Default::default()
    };
    ecfg.fit.lambda = lambda;
    if let Some(s) = cfg.grid_steps {
        ecfg.fit.steps = s;
    }
    let mut src = open(path)?;
    let t = Instant::now();
    let enc = crate::encode_audio_grid(&mut src, &ecfg, &mut |pr| fit(&param, pr.step, pr.total))
        .map_err(|source| RdError::Encode {
        image: name.to_string(),
        preset: param.clone(),
        source,
    })?;
    let encode_s = t.elapsed().as_secs_f64();
    let coded = Coded {
        codec: INR_AUDIO_GRID,
        param,
        encode_s,
        base: None,
    };
    measure(path, name, &enc.bytes, &[], coded)
}

/// Measure every clip in `data_dir` with every configured preset, and place the baseline rows
/// of the same clips beside them.
///
/// # Errors
/// [`RdError::Config`] when there is nothing to measure or `limit` is 0, [`RdError::NoImages`]
/// when the folder holds no WAV file, and any read, encode or decode failure (the sweep
/// stops: a mean over a partial set would be misleading).
pub fn run_audio_rd(
    data_dir: &Path,
    cfg: &AudioRdConfig,
    progress: &mut (dyn FnMut(&AudioRdProgress) + Send),
) -> Result<AudioRdReport, RdError> {
    if cfg.presets.is_empty() && cfg.baselines.is_empty() && cfg.grid_lambdas.is_empty() {
        return Err(RdError::Config(
            "nothing to measure (expected at least one preset, grid λ or a baseline CSV)".into(),
        ));
    }
    if cfg.limit == Some(0) {
        return Err(RdError::Config("--limit 0 (expected >= 1)".into()));
    }
    let mut files = list_clips(data_dir)?;
    if let Some(n) = cfg.limit {
        files.truncate(n);
    }
    if files.is_empty() {
        return Err(RdError::Config(format!(
            "no WAV files found in {}",
            data_dir.display()
        )));
    }
    let csvs = super::csv_names(&files);
    let total = files.len() * (cfg.presets.len() + cfg.grid_lambdas.len());
    let mut done = 0;
    let mut clips = Vec::with_capacity(files.len());
    for (path, csv) in files.iter().zip(csvs) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut src = open(path)?;
        let spec = src.spec();
        let frames = src.frames();
        let ms = mean_square(&mut src, path)?;
        let mut points = Vec::new();
        // The weight presets' points, then the grid mode's.
        let jobs = cfg
            .presets
            .iter()
            .map(|&p| Job::Preset(p))
            .chain(cfg.grid_lambdas.iter().map(|&l| Job::Grid(l)));
        for job in jobs {
            let fit = &mut |param: &str, step, steps| {
                progress(&AudioRdProgress {
                    done,
                    total,
                    clip: &name,
                    param,
                    fit: Some((step, steps)),
                });
            };
            let pt = match job {
                Job::Preset(p) => inr_point(path, &name, p, cfg, fit)?,
                Job::Grid(l) => inr_grid_point(path, &name, l, cfg, fit)?,
            };
            done += 1;
            progress(&AudioRdProgress {
                done,
                total,
                clip: &name,
                param: &pt.param,
                fit: None,
            });
            points.push(pt);
        }
        let clip_stem = stem(path);
        points.extend(
            cfg.baselines
                .iter()
                .filter(|r| r.clip == clip_stem)
                .map(|r| AudioPoint {
                    codec: r.codec.clone(),
                    param: r.param.clone(),
                    bytes: r.bytes,
                    kbps: r.kbps,
                    psnr: if ms > 0.0 {
                        psnr_from_snr(r.snr, ms)
                    } else {
                        f64::NAN
                    },
                    snr: r.snr,
                    encode_s: None,
                    decode_s: None,
                    base: None,
                }),
        );
        clips.push(ClipResult {
            file: name,
            csv,
            sample_rate: spec.sample_rate,
            channels: spec.channels,
            frames,
            duration_s: frames as f64 / f64::from(spec.sample_rate),
            mean_square: ms,
            points,
        });
    }
    let stems: Vec<String> = files.iter().map(|p| stem(p)).collect();
    let mut unmatched: Vec<String> = cfg
        .baselines
        .iter()
        .filter(|r| !stems.contains(&r.clip))
        .map(|r| r.clip.clone())
        .collect();
    unmatched.sort();
    unmatched.dedup();
    let mut names: Vec<(String, String)> = Vec::new();
    if !cfg.presets.is_empty() {
        let base = super::base_description(&cfg.base);
        let steps = cfg
            .steps
            .map(|s| format!(", {s} fitting steps"))
            .unwrap_or_default();
        names.push((
            INR_AUDIO.into(),
            format!(
                "inr audio codec, one point per preset, {base}, seed {}{steps}",
                cfg.seed
            ),
        ));
    }
    if !cfg.grid_lambdas.is_empty() {
        let steps = cfg
            .grid_steps
            .map(|s| format!(", {s} fitting steps"))
            .unwrap_or_default();
        names.push((
            INR_AUDIO_GRID.into(),
            format!(
                "inr audio grid mode (codec-spec §14), one point per rate weight λ, seed {}{steps}",
                cfg.seed
            ),
        ));
    }
    for r in &cfg.baselines {
        if !names.iter().any(|(n, _)| *n == r.codec) && stems.contains(&r.clip) {
            names.push((
                r.codec.clone(),
                format!(
                    "{} (baseline CSV; PSNR derived from its SNR and the clip's energy)",
                    r.codec
                ),
            ));
        }
    }
    let codecs = summarize(&clips, &names);
    // Each inr curve against every other curve (the grid mode also against the weight mode).
    let bd = [INR_AUDIO, INR_AUDIO_GRID]
        .iter()
        .filter_map(|&t| codecs.iter().find(|c| c.name == t))
        .flat_map(|inr| {
            codecs
                .iter()
                .filter(|a| {
                    a.name != inr.name && !(inr.name == INR_AUDIO && a.name == INR_AUDIO_GRID)
                })
                .map(|a| bd_of(inr, a))
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(AudioRdReport {
        description: format!(
            "audio rate-distortion sweep over {} clip(s) of {}; PSNR with the waveform mapped \
             to [0, 1] and SNR, after decoding; kbit/s from real file bytes; means over clips \
             per operating point",
            clips.len(),
            data_dir.display()
        ),
        codecs,
        bd,
        clips,
        unmatched_baseline_clips: unmatched,
    })
}

fn curve(c: &AudioCodecSummary) -> Vec<RdPoint> {
    c.results
        .kbps
        .iter()
        .zip(&c.results.psnr)
        .map(|(&rate, &psnr)| RdPoint { rate, psnr })
        .collect()
}

fn bd_of(test: &AudioCodecSummary, anchor: &AudioCodecSummary) -> BdResult {
    super::bd_result(&test.name, &anchor.name, &curve(anchor), &curve(test))
}

/// Per-operating-point means over the clips, in first-seen order; a point enters only when
/// every clip has it.
pub fn summarize(clips: &[ClipResult], codecs: &[(String, String)]) -> Vec<AudioCodecSummary> {
    codecs
        .iter()
        .map(|(name, description)| {
            let mut params: Vec<String> = Vec::new();
            for c in clips {
                for p in c.points.iter().filter(|p| &p.codec == name) {
                    if !params.contains(&p.param) {
                        params.push(p.param.clone());
                    }
                }
            }
            let mut r = AudioCodecResults::default();
            for param in params {
                let pts: Vec<(&ClipResult, &AudioPoint)> = clips
                    .iter()
                    .filter_map(|c| {
                        c.points
                            .iter()
                            .find(|p| &p.codec == name && p.param == param)
                            .map(|p| (c, p))
                    })
                    .collect();
                if pts.len() != clips.len() || pts.is_empty() {
                    continue;
                }
                let n = pts.len() as f64;
                let mean = |f: &dyn Fn(&ClipResult, &AudioPoint) -> f64| {
                    pts.iter().map(|(c, p)| f(c, p)).sum::<f64>() / n
                };
                let mean_opt = |f: &dyn Fn(&ClipResult, &AudioPoint) -> Option<f64>| {
                    pts.iter()
                        .map(|(c, p)| f(c, p))
                        .sum::<Option<f64>>()
                        .map(|s| s / n)
                };
                r.kbps.push(mean(&|_, p| p.kbps));
                r.psnr.push(mean(&|_, p| p.psnr));
                r.snr.push(mean(&|_, p| p.snr));
                r.encode_s.push(mean_opt(&|_, p| p.encode_s));
                r.encode_s_per_audio_s
                    .push(mean_opt(&|c, p| p.encode_s.map(|s| s / c.duration_s)));
                r.decode_s.push(mean_opt(&|_, p| p.decode_s));
                r.param.push(param);
            }
            AudioCodecSummary {
                name: name.clone(),
                description: description.clone(),
                results: r,
            }
        })
        .collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

/// The per-clip CSV: `codec,param,bytes,kbps,psnr,snr,encode_s,decode_s,base` (empty fields
/// where a baseline has no value).
pub fn clip_csv(c: &ClipResult) -> String {
    let mut s = String::from("codec,param,bytes,kbps,psnr,snr,encode_s,decode_s,base\n");
    for p in &c.points {
        s.push_str(&format!(
            "{},{},{},{:.3},{:.4},{:.4},{},{},{}\n",
            csv_field(&p.codec),
            csv_field(&p.param),
            p.bytes.map(|b| b.to_string()).unwrap_or_default(),
            p.kbps,
            p.psnr,
            p.snr,
            opt(p.encode_s, 4),
            opt(p.decode_s, 4),
            p.base.as_deref().unwrap_or("")
        ));
    }
    s
}

/// Names of the files [`write_audio_report`] writes.
pub fn audio_report_files(csvs: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = ["rd.json", "rd.svg", "rd.png", "snr.svg", "snr.png"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    v.extend(csvs);
    v
}

/// Names of the files a sweep of `data_dir` with `cfg` will write (before running it).
///
/// # Errors
/// [`RdError::Io`] if the folder cannot be read.
pub fn planned_audio_report_files(
    data_dir: &Path,
    cfg: &AudioRdConfig,
) -> Result<Vec<String>, RdError> {
    let mut files = list_clips(data_dir)?;
    if let Some(n) = cfg.limit {
        files.truncate(n);
    }
    Ok(audio_report_files(super::csv_names(&files)))
}

/// Write `rd.json`, one CSV per clip, `rd.svg`/`rd.png` (PSNR against kbit/s) and
/// `snr.svg`/`snr.png` (SNR against kbit/s) into `out_dir` (created if missing), each
/// atomically.
///
/// # Errors
/// [`RdError::Exists`] if a file exists and `overwrite` is false, [`RdError::Io`],
/// [`RdError::Plot`], [`RdError::Json`].
pub fn write_audio_report(
    report: &AudioRdReport,
    out_dir: &Path,
    overwrite: bool,
    published_anchors: bool,
) -> Result<(), RdError> {
    std::fs::create_dir_all(out_dir).map_err(|source| RdError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    if !overwrite {
        super::check_outputs_free(
            out_dir,
            &audio_report_files(report.clips.iter().map(|c| c.csv.clone())),
        )?;
    }
    let write = |name: &str, bytes: &[u8]| super::write_file(out_dir, name, bytes, overwrite);
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    write("rd.json", &json)?;
    for c in &report.clips {
        write(&c.csv, clip_csv(c).as_bytes())?;
    }
    let curves = |y: fn(&AudioCodecResults) -> &Vec<f64>| -> Vec<plot::Curve> {
        report
            .codecs
            .iter()
            .filter(|c| !c.results.kbps.is_empty())
            .map(|c| plot::Curve {
                label: c.name.clone(),
                points: c
                    .results
                    .kbps
                    .iter()
                    .copied()
                    .zip(y(&c.results).iter().copied())
                    .collect(),
                dashed: false,
            })
            .collect()
    };
    let mut psnr_curves = curves(|r| &r.psnr);
    if published_anchors {
        psnr_curves.push(plot::Curve {
            label: "COIN++ (published, LibriSpeech)".into(),
            points: COINPP_LIBRISPEECH.to_vec(),
            dashed: true,
        });
    }
    let n = report.clips.len();
    for (stem, title, axes, cs) in [
        (
            "rd",
            format!("Mean PSNR vs rate ({n} clips)"),
            PSNR_AXES,
            psnr_curves,
        ),
        (
            "snr",
            format!("Mean SNR vs rate ({n} clips)"),
            SNR_AXES,
            curves(|r| &r.snr),
        ),
    ] {
        let svg = plot::render_svg_axes(&title, axes, &cs).map_err(RdError::Plot)?;
        write(&format!("{stem}.svg"), svg.as_bytes())?;
        let png = plot::render_png_axes(&title, axes, &cs).map_err(RdError::Plot)?;
        write(&format!("{stem}.png"), &png)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_csv_parses_and_rejects_bad_rows() {
        let rows = parse_baselines(
            "clip,codec,param,bytes,kbps,snr_db,snr_gain_db\nspeech,opus,6,3246,8.656,2.986,3.1\n\n",
        )
        .expect("valid CSV");
        assert_eq!(
            rows,
            vec![BaselineRow {
                clip: "speech".into(),
                codec: "opus".into(),
                param: "6".into(),
                bytes: Some(3246),
                kbps: 8.656,
                snr: 2.986,
            }]
        );
        for bad in [
            "",
            "clip,codec,param,kbps\nx,opus,6,8\n",
            "clip,codec,param,kbps,snr_db\nx,opus,6,eight,3\n",
            "clip,codec,param,kbps,snr_db\nx,opus,6,8\n",
            "clip,codec,param,kbps,snr_db\nx,opus,6,0,3\n",
            "clip,codec,param,kbps,snr_db\nx,opus,6,8,inf\n",
        ] {
            assert!(
                matches!(parse_baselines(bad), Err(RdError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn psnr_from_snr_matches_the_direct_metrics() {
        let mut d = crate::metrics::AudioDistortion::default();
        let xs = [0.5f64, -0.25, 0.1, 0.8, -0.6];
        let ys = [0.45f64, -0.2, 0.12, 0.7, -0.65];
        for (&x, &y) in xs.iter().zip(&ys) {
            d.add(x, y);
        }
        let ms = xs.iter().map(|x| x * x).sum::<f64>() / xs.len() as f64;
        assert!((psnr_from_snr(d.snr(), ms) - d.psnr()).abs() < 1e-9);
    }

    fn point(codec: &str, param: &str, kbps: f64, psnr: f64) -> AudioPoint {
        AudioPoint {
            codec: codec.into(),
            param: param.into(),
            bytes: None,
            kbps,
            psnr,
            snr: psnr - 30.0,
            encode_s: None,
            decode_s: None,
            base: None,
        }
    }

    fn clip(points: Vec<AudioPoint>) -> ClipResult {
        ClipResult {
            file: "a.wav".into(),
            csv: "a.csv".into(),
            sample_rate: 16_000,
            channels: 1,
            frames: 16_000,
            duration_s: 1.0,
            mean_square: 0.1,
            points,
        }
    }

    #[test]
    fn means_skip_points_that_a_clip_lacks() {
        let clips = vec![
            clip(vec![
                point("opus", "6", 8.0, 30.0),
                point("opus", "8", 10.0, 32.0),
            ]),
            clip(vec![point("opus", "6", 10.0, 34.0)]),
        ];
        let s = summarize(&clips, &[("opus".into(), String::new())]);
        assert_eq!(s[0].results.param, vec!["6".to_string()]);
        assert_eq!(s[0].results.kbps, vec![9.0]);
        assert_eq!(s[0].results.psnr, vec![32.0]);
        assert_eq!(s[0].results.encode_s, vec![None]);
    }
}
