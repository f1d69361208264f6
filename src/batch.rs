//! Batch compression of a folder tree into a mirrored tree of `.inr` files, with a resumable
//! manifest.
//!
//! - Inputs: every file under the input folder (recursively, symlinked folders not followed,
//!   the output folder skipped if it lies inside) that [`looks_like_image`] or is a WAV file
//!   ([`crate::audio::looks_like_wav_file`]); sorted by relative path so every run sees the
//!   same order. Images go to the [`BatchCodec`], WAV files to [`BatchOptions::audio`].
//! - Outputs: `OUT/<relative path>.with_extension("inr")`, written atomically; never replaced
//!   unless `force`.
//! - Manifest: `OUT/manifest.csv` (or `manifest-<i>-of-<n>.csv` for a shard) with columns
//!   [`MANIFEST_HEADER`]. It is rewritten atomically at the start (rows kept from the previous
//!   run) and at the end (all rows sorted by input), and in between every finished file appends
//!   one line and flushes, so an interruption loses at most the rows of files in flight.
//! - Resume: an output that exists and is valid ([`BatchCodec::is_valid`]) is not encoded again.
//!   Its previous `ok` row is kept; without one (interrupted between writing the output and
//!   its row) the row is rebuilt by decoding the output and comparing it with the input.
//! - Failures: a file that cannot be read, decoded or encoded gives a `failed` row with the
//!   error and never stops the batch. Failed rows are retried by the next run.
//! - Cancellation: when [`BatchOptions::cancel`] is set (the CLI sets it on SIGINT), files
//!   not yet started are skipped (no row, no output), files in flight finish and get their
//!   row, and the manifest is rewritten with the rows so far; [`BatchSummary::interrupted`]
//!   counts the skipped files. The next run resumes with exactly those.
//! - Sharding: `--shard i/n` takes the files whose index in the sorted list is `i` mod `n`, so
//!   the shards partition the list; [`merge_manifests`] joins their manifests.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::media::Image;
use crate::EncodeConfig;

/// Manifest columns.
/// `bpp` is bits per pixel (images), `kbps` kilobits per second of audio (WAV inputs); each row
/// fills the one that fits its input. `mode` is the output's coding mode
/// ([`crate::format::mode_name`]: `grid`, `grid-shared`, `modulations` or `weights`; empty for a
/// failed row). Manifests of earlier versions (without `kbps`, or without `mode`) are read too.
pub const MANIFEST_HEADER: &str = "input,output,bytes,bpp,kbps,psnr,seconds,status,error,mode";

/// Largest existing output read back to check it (bigger files count as invalid).
const MAX_OUTPUT_CHECK: u64 = 1 << 30;

/// Whether `path` is an image file: its first bytes are a known image signature, or its
/// extension is a known image extension (so a broken `.png` is still treated as an image and
/// reported as a failure rather than skipped silently).
pub fn looks_like_image(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(64);
    let read = std::fs::File::open(path).and_then(|f| f.take(64).read_to_end(&mut head));
    let sniffed = read.is_ok() && image::guess_format(&head).is_ok();
    sniffed || image::ImageFormat::from_path(path).is_ok()
}

/// Errors that stop a whole batch (a single bad file never does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid shard {0:?} (expected i/n with 0 <= i < n, e.g. 0/4)")]
    Shard(String),
    #[error("invalid option: {0}")]
    Option(String),
    #[error("no manifests to merge in {0} (expected manifest-<i>-of-<n>.csv files)")]
    NothingToMerge(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |source| BatchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A deterministic subset of the sorted file list: indices `i` with `i % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether the file at `position` of the sorted list belongs to this shard.
    pub fn contains(&self, position: usize) -> bool {
        self.count > 0 && position % self.count == self.index
    }

    /// `manifest-<i>-of-<n>.csv`.
    pub fn manifest_name(&self) -> String {
        format!("manifest-{}-of-{}.csv", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = BatchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BatchError::Shard(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// Status of one manifest row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowStatus {
    /// The output exists and is valid.
    Ok,
    /// The input could not be compressed; `error` says why.
    Failed,
}

/// One manifest row. Paths use `/` and are relative to the input / output folder.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ManifestRow {
    pub input: String,
    pub output: String,
    pub bytes: Option<u64>,
    /// Bits per pixel (image inputs).
    pub bpp: Option<f64>,
    /// Kilobits per second (audio inputs).
    pub kbps: Option<f64>,
    /// PSNR in dB (audio: the waveform mapped from [-1, 1] to [0, 1], as `inr encode`).
    pub psnr: Option<f64>,
    /// Wall-clock seconds to load, encode and write; `None` when unknown (rebuilt rows).
    pub seconds: Option<f64>,
    pub status: RowStatus,
    pub error: String,
    /// The output's coding mode (`grid`, `grid-shared`, `modulations`, `weights`); empty for a
    /// failed row and in rows read from manifests written before this column.
    pub mode: String,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

impl ManifestRow {
    /// The row as one CSV line (with the trailing newline).
    pub fn to_csv_line(&self) -> String {
        let f = crate::rd::csv_field;
        format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            f(&self.input),
            f(&self.output),
            opt(self.bytes),
            opt(self.bpp.map(|x| format!("{x:.6}"))),
            opt(self.kbps.map(|x| format!("{x:.4}"))),
            opt(self.psnr.map(|x| format!("{x:.4}"))),
            opt(self.seconds.map(|x| format!("{x:.3}"))),
            match self.status {
                RowStatus::Ok => "ok",
                RowStatus::Failed => "failed",
            },
            f(&self.error),
            f(&self.mode)
        )
    }

    fn from_fields(f: &[String]) -> Option<ManifestRow> {
        // 10 fields; 9 in manifests written before the `mode` column, 8 before `kbps` (no
        // audio rows).
        let (mode, f) = match f.len() {
            10 => (f[9].clone(), &f[..9]),
            8 | 9 => (String::new(), f),
            _ => return None,
        };
        let (kbps, f): (&str, Vec<&String>) = match f.len() {
            9 => (&f[4], f.iter().take(4).chain(&f[5..]).collect()),
            _ => ("", f.iter().collect()),
        };
        let num = |s: &str| -> Option<Option<f64>> {
            if s.is_empty() {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        };
        Some(ManifestRow {
            input: f[0].clone(),
            output: f[1].clone(),
            bytes: if f[2].is_empty() {
                None
            } else {
                Some(f[2].parse().ok()?)
            },
            bpp: num(f[3])?,
            kbps: num(kbps)?,
            psnr: num(f[4])?,
            seconds: num(f[5])?,
            status: match f[6].as_str() {
                "ok" => RowStatus::Ok,
                "failed" => RowStatus::Failed,
                _ => return None,
            },
            error: f[7].clone(),
            mode,
        })
    }
}

/// Split CSV text into records (RFC 4180 quoting). A final record cut off inside quotes or
/// without its newline (an interrupted append) is dropped.
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rec = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else {
            match c {
                '"' => quoted = true,
                ',' => rec.push(std::mem::take(&mut field)),
                '\r' => {}
                '\n' => {
                    rec.push(std::mem::take(&mut field));
                    out.push(std::mem::take(&mut rec));
                }
                _ => field.push(c),
            }
        }
    }
    out
}

/// Parse manifest text; the header and malformed lines (e.g. a line cut by an interruption)
/// are skipped.
pub fn parse_manifest(text: &str) -> Vec<ManifestRow> {
    csv_records(text)
        .iter()
        .filter_map(|r| ManifestRow::from_fields(r))
        .collect()
}

/// Read a manifest file; a missing file gives no rows.
///
/// # Errors
/// [`BatchError::Io`] for read errors other than "not found".
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestRow>, BatchError> {
    match std::fs::read(path) {
        Ok(b) => Ok(parse_manifest(&String::from_utf8_lossy(&b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn manifest_text(rows: &[ManifestRow]) -> String {
    let mut s = format!("{MANIFEST_HEADER}\n");
    for r in rows {
        s.push_str(&r.to_csv_line());
    }
    s
}

fn rel_string(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Image and WAV files under `dir` ([`is_input`]), as paths relative to `dir`, sorted. Folders
/// that are symlinks are not followed; `exclude` (e.g. an output folder inside `dir`) is
/// skipped.
///
/// # Errors
/// [`BatchError::Io`] if a folder cannot be read.
pub fn list_inputs(dir: &Path, exclude: Option<&Path>) -> Result<Vec<PathBuf>, BatchError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io_err(&path))?;
            if ft.is_dir() {
                let skip =
                    exclude.is_some_and(|x| std::fs::canonicalize(&path).is_ok_and(|c| c == x));
                if !skip {
                    stack.push(path);
                }
            } else if path.is_file() && is_input(&path) {
                if let Ok(rel) = path.strip_prefix(dir) {
                    out.push(rel.to_path_buf());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files of `files` (sorted) that belong to `shard`.
pub fn select_shard(files: Vec<PathBuf>, shard: Option<Shard>) -> Vec<PathBuf> {
    match shard {
        None => files,
        Some(s) => files
            .into_iter()
            .enumerate()
            .filter(|(i, _)| s.contains(*i))
            .map(|(_, f)| f)
            .collect(),
    }
}

/// The result of encoding one file.
#[derive(Debug, Clone)]
pub struct EncodedFile {
    pub bytes: Vec<u8>,
    /// PSNR (dB) of the decoder's reconstruction against the input.
    pub psnr: f64,
}

/// What the batch needs from a codec. [`InrBatchCodec`] is the real one; tests may plug in
/// others.
pub trait BatchCodec: Sync {
    /// Encode one image into a complete file.
    ///
    /// # Errors
    /// A message describing the failure (becomes the row's `error`).
    fn encode(&self, img: &Image) -> Result<EncodedFile, String>;
    /// Whether `bytes` is a complete, valid file of this codec (cheap check).
    fn is_valid(&self, bytes: &[u8]) -> bool;
    /// Decode a file (used to rebuild a manifest row for an output without one).
    ///
    /// # Errors
    /// A message describing the failure.
    fn decode(&self, bytes: &[u8]) -> Result<Image, String>;
}

/// The `inr` codec with a fixed encoder configuration.
#[derive(Debug, Clone, Default)]
pub struct InrBatchCodec {
    pub config: EncodeConfig,
}

impl BatchCodec for InrBatchCodec {
    fn encode(&self, img: &Image) -> Result<EncodedFile, String> {
        let e = crate::encode_image(img, &self.config, &mut |_| {}).map_err(|e| e.to_string())?;
        Ok(EncodedFile {
            bytes: e.bytes,
            psnr: e.psnr,
        })
    }
    fn is_valid(&self, bytes: &[u8]) -> bool {
        crate::inspect(bytes).is_ok()
    }
    fn decode(&self, bytes: &[u8]) -> Result<Image, String> {
        let mut opts = crate::DecodeOptions::default();
        if let crate::BaseChoice::Custom(b) = &self.config.base {
            opts.bases.push(b.clone());
        }
        crate::decode(bytes, &opts).map_err(|e| e.to_string())
    }
}

/// The `inr` modulation mode (`--mode modulations`) with a fixed configuration; decoding
/// uses the configuration's base.
#[derive(Debug, Clone, Default)]
pub struct ModBatchCodec {
    pub config: crate::ModEncodeConfig,
}

impl BatchCodec for ModBatchCodec {
    fn encode(&self, img: &Image) -> Result<EncodedFile, String> {
        let e =
            crate::encode_modulated(img, &self.config, &mut |_| {}).map_err(|e| e.to_string())?;
        Ok(EncodedFile {
            bytes: e.bytes,
            psnr: e.psnr,
        })
    }
    fn is_valid(&self, bytes: &[u8]) -> bool {
        crate::inspect(bytes).is_ok()
    }
    fn decode(&self, bytes: &[u8]) -> Result<Image, String> {
        let opts = crate::DecodeOptions {
            bases: self.config.base.iter().cloned().collect(),
            ..crate::DecodeOptions::default()
        };
        crate::decode(bytes, &opts).map_err(|e| e.to_string())
    }
}

/// The grid mode (§13) with a fixed configuration.
pub struct GridBatchCodec {
    pub config: crate::GridEncodeConfig,
    /// The weight mode's configuration for images too large for the grid mode
    /// ([`crate::GridEncodeConfig::too_large`]); `None`: such images fail.
    pub fallback: Option<EncodeConfig>,
}

impl BatchCodec for GridBatchCodec {
    fn encode(&self, img: &Image) -> Result<EncodedFile, String> {
        if let Some(weights) = &self.fallback {
            if self.config.too_large(img.width, img.height, img.channels) {
                return InrBatchCodec {
                    config: weights.clone(),
                }
                .encode(img);
            }
        }
        let e = crate::encode_grid(img, &self.config, &mut |_| {}).map_err(|e| e.to_string())?;
        Ok(EncodedFile {
            bytes: e.bytes,
            psnr: e.psnr,
        })
    }
    fn is_valid(&self, bytes: &[u8]) -> bool {
        crate::inspect(bytes).is_ok()
    }
    fn decode(&self, bytes: &[u8]) -> Result<Image, String> {
        crate::decode(bytes, &crate::DecodeOptions::default()).map_err(|e| e.to_string())
    }
}

/// How a batch codes WAV files (`inr encode`'s audio modes).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AudioMode {
    /// The audio grid mode (§14), `inr encode`'s default for WAV input.
    Grid(crate::AudioGridEncodeConfig),
    /// The audio weight mode (§11).
    Weights(crate::AudioEncodeConfig),
    /// The audio modulation mode (`inr encode --mode modulations`). With `base: None` each clip
    /// uses the embedded audio modulation base for its channel count, with that base's trained
    /// latent L2 in place of `fit.l2` (as `inr encode` does); a clip no embedded base fits
    /// gets a `failed` row naming its channel count.
    Modulations(crate::AudioModEncodeConfig),
    /// WAV files are not coded: each gets a `failed` row with this reason.
    Refused(String),
}

impl Default for AudioMode {
    fn default() -> Self {
        AudioMode::Grid(crate::AudioGridEncodeConfig::default())
    }
}

impl AudioMode {
    /// Encode the WAV file at `path`; returns the file bytes, kbit/s and PSNR of the decoded
    /// clip.
    fn encode(&self, path: &Path) -> Result<(Vec<u8>, f64, f64), String> {
        type Src = crate::audio::WavSource<std::io::BufReader<std::fs::File>>;
        let run = |f: &dyn Fn(&mut Src) -> Result<crate::AudioEncoded, crate::EncodeError>| {
            let mut src = crate::audio::WavSource::open(path)
                .map_err(|e| format!("cannot read audio: {e}"))?;
            let enc = f(&mut src).map_err(|e| format!("encode failed: {e}"))?;
            Ok((enc.bytes, enc.quality.kbps, enc.quality.psnr))
        };
        match self {
            AudioMode::Grid(cfg) => run(&|src| crate::encode_audio_grid(src, cfg, &mut |_| {})),
            AudioMode::Weights(cfg) => run(&|src| crate::encode_audio(src, cfg, &mut |_| {})),
            AudioMode::Modulations(cfg) => run(&|src| {
                let mut cfg = cfg.clone();
                if cfg.base.is_none() {
                    if let Some(b) = crate::base::embedded_audio_modulation(
                        crate::audio::AudioSource::spec(src).channels,
                    ) {
                        if let Some(l2) = crate::mod_codec::trained_l2(b) {
                            cfg.fit.l2 = l2;
                        }
                        cfg.base = Some(b.clone());
                    }
                }
                crate::encode_audio_modulated(src, &cfg, &mut |_| {})
            }),
            AudioMode::Refused(why) => Err(why.clone()),
        }
    }
}

/// Whether `path` is a batch input: an image ([`looks_like_image`]) or a WAV file.
pub fn is_input(path: &Path) -> bool {
    crate::audio::looks_like_wav_file(path) || looks_like_image(path)
}

/// Load an image with the codec's input policy (`media::load_image_with`), a translucent
/// alpha channel kept (the grid mode codes it; the other modes refuse the file) unless
/// `ignore_alpha` (then dropped).
fn load_image(path: &Path, ignore_alpha: bool) -> Result<Image, String> {
    let opts = crate::media::LoadOptions {
        keep_alpha: true,
        ignore_alpha,
        ..Default::default()
    };
    crate::media::load_image_with(path, &opts)
        .map(|l| l.image)
        .map_err(|e| e.to_string())
}

/// Options of a batch run.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub shard: Option<Shard>,
    /// Re-encode and replace existing outputs.
    pub force: bool,
    /// Files encoded at the same time (>= 1).
    pub jobs: usize,
    /// Stop request: once true, files not yet started are skipped (see the module docs).
    pub cancel: Option<&'static AtomicBool>,
    /// How WAV inputs are coded (default: the audio grid mode at its defaults).
    pub audio: AudioMode,
    /// Drop a translucent alpha channel of the images (colours kept unblended) instead of
    /// coding it (grid modes) or failing the file (other modes).
    pub ignore_alpha: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            shard: None,
            force: false,
            jobs: 1,
            cancel: None,
            audio: AudioMode::default(),
            ignore_alpha: false,
        }
    }
}

/// Progress events (sent from worker threads).
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchEvent<'a> {
    /// `total` files selected, of which `todo` need work.
    Started { total: usize, todo: usize },
    /// One file finished (encoded, rebuilt or failed).
    Finished { row: &'a ManifestRow },
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct BatchSummary {
    pub manifest: PathBuf,
    /// Rows of all selected files, sorted by input.
    pub rows: Vec<ManifestRow>,
    /// Files encoded in this run.
    pub encoded: usize,
    /// Files whose valid output was kept.
    pub kept: usize,
    pub failed: usize,
    /// Files skipped because the run was cancelled (they have no row; rerun to do them).
    pub interrupted: usize,
}

/// The coded rows of `rows` that miss a rate target: an image's `bpp` outside
/// [`crate::bpp_meets`] of `bpp`, an audio file's `kbps` outside [`crate::kbps_meets`] of
/// `kbps` (each target `None`: not checked). Rate control keeps the best file it found when
/// it cannot reach a target, so a batch lists those files rather than failing them.
pub fn off_target(rows: &[ManifestRow], bpp: Option<f64>, kbps: Option<f64>) -> Vec<&ManifestRow> {
    rows.iter()
        .filter(|r| r.status == RowStatus::Ok)
        .filter(|r| {
            let image = matches!((r.bpp, bpp), (Some(v), Some(t)) if !crate::bpp_meets(v, t));
            let audio = matches!((r.kbps, kbps), (Some(v), Some(t)) if !crate::kbps_meets(v, t));
            image || audio
        })
        .collect()
}

enum Plan {
    Keep(ManifestRow),
    Encode,
    Rebuild,
    Fail(String),
}

fn bpp_of(bytes: usize, img: &Image) -> f64 {
    8.0 * bytes as f64 / (f64::from(img.width) * f64::from(img.height))
}

fn failed(input: &str, output: &str, seconds: Option<f64>, error: String) -> ManifestRow {
    ManifestRow {
        input: input.to_string(),
        output: output.to_string(),
        bytes: None,
        bpp: None,
        kbps: None,
        psnr: None,
        seconds,
        status: RowStatus::Failed,
        error,
        mode: String::new(),
    }
}

fn read_existing(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_OUTPUT_CHECK {
        return None;
    }
    std::fs::read(path).ok()
}

/// Size, rate and quality of one coded file.
struct Coded {
    bytes: u64,
    /// `(bpp, None)` for an image, `(None, kbps)` for audio.
    bpp: Option<f64>,
    kbps: Option<f64>,
    psnr: f64,
    /// [`crate::format::mode_name`] of the output.
    mode: &'static str,
}

fn encode_one(
    codec: &dyn BatchCodec,
    opts: &BatchOptions,
    in_path: &Path,
    out_path: &Path,
) -> Result<Coded, String> {
    let (audio, force) = (&opts.audio, opts.force);
    let (bytes, coded) = if crate::audio::looks_like_wav_file(in_path) {
        let (bytes, kbps, psnr) = audio.encode(in_path)?;
        let coded = Coded {
            bytes: bytes.len() as u64,
            bpp: None,
            kbps: Some(kbps),
            psnr,
            mode: crate::format::mode_name(&bytes).unwrap_or_default(),
        };
        (bytes, coded)
    } else {
        let img = load_image(in_path, opts.ignore_alpha)
            .map_err(|e| format!("cannot read image: {e}"))?;
        let enc = codec
            .encode(&img)
            .map_err(|e| format!("encode failed: {e}"))?;
        let coded = Coded {
            bytes: enc.bytes.len() as u64,
            bpp: Some(bpp_of(enc.bytes.len(), &img)),
            kbps: None,
            psnr: enc.psnr,
            mode: crate::format::mode_name(&enc.bytes).unwrap_or_default(),
        };
        (enc.bytes, coded)
    };
    if let Some(parent) = out_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    crate::util::write_atomic(out_path, &bytes, force)
        .map_err(|e| format!("cannot write {}: {e}", out_path.display()))?;
    Ok(coded)
}

fn rebuild_one(
    codec: &dyn BatchCodec,
    in_path: &Path,
    out_path: &Path,
    ignore_alpha: bool,
) -> Result<Coded, String> {
    let bytes = std::fs::read(out_path).map_err(|e| format!("cannot read output: {e}"))?;
    if crate::audio::looks_like_wav_file(in_path) {
        let mut src = crate::audio::WavSource::open(in_path)
            .map_err(|e| format!("cannot read audio: {e}"))?;
        let q = crate::eval_audio(&bytes, &mut src, &crate::Limits::default())
            .map_err(|e| format!("existing output does not decode against its input: {e}"))?;
        return Ok(Coded {
            bytes: bytes.len() as u64,
            bpp: None,
            kbps: Some(q.kbps),
            psnr: q.psnr,
            mode: crate::format::mode_name(&bytes).unwrap_or_default(),
        });
    }
    let img = load_image(in_path, ignore_alpha).map_err(|e| format!("cannot read image: {e}"))?;
    let dec = codec
        .decode(&bytes)
        .map_err(|e| format!("existing output does not decode: {e}"))?;
    let psnr = crate::rd::psnr(&img, &dec)
        .ok_or("existing output decodes to a different size than the input")?;
    Ok(Coded {
        bytes: bytes.len() as u64,
        bpp: Some(bpp_of(bytes.len(), &img)),
        kbps: None,
        psnr,
        mode: crate::format::mode_name(&bytes).unwrap_or_default(),
    })
}

/// A planned file of [`run_batch`]: its path relative to the input folder, its manifest
/// input and output names, the output path and what to do.
type Planned<'a> = (&'a PathBuf, String, String, PathBuf, Plan);

/// Runs `work` on every item with `jobs` plain threads that take the next item when done: at
/// most `jobs` files are in flight. (A rayon pool would not bound them: an encode installs its
/// own thread pool, and a rayon worker waiting on another pool steals the next file meanwhile,
/// so every file of a batch started at once: 16 Kodak images each took about 240 s of wall
/// time instead of 20-40 s, and an interrupt had to wait for all of them.) Results are in item
/// order.
fn run_jobs<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: &(dyn Fn(&T) -> R + Sync),
) -> Result<Vec<R>, BatchError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(item) = items.get(i) else {
                return out;
            };
            out.push((i, work(item)));
        }
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            let h = std::thread::Builder::new()
                .spawn_scoped(s, worker)
                .map_err(|e| BatchError::Option(format!("cannot start {jobs} threads: {e}")))?;
            handles.push(h);
        }
        let mut all = Vec::with_capacity(items.len());
        for h in handles {
            match h.join() {
                Ok(rows) => all.extend(rows),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok::<_, BatchError>(all)
    })?;
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

/// Compress every image under `in_dir` into `out_dir` (see the module docs).
///
/// # Errors
/// Only for problems with the folders or the manifest ([`BatchError::Io`]) or options
/// ([`BatchError::Option`]); per-file problems become `failed` rows.
pub fn run_batch(
    in_dir: &Path,
    out_dir: &Path,
    codec: &dyn BatchCodec,
    opts: &BatchOptions,
    progress: &(dyn Fn(&BatchEvent) + Sync),
) -> Result<BatchSummary, BatchError> {
    if opts.jobs == 0 {
        return Err(BatchError::Option("--jobs 0 (expected >= 1)".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let out_canon = std::fs::canonicalize(out_dir).map_err(io_err(out_dir))?;
    if !in_dir.is_dir() {
        return Err(BatchError::Io {
            path: in_dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
        });
    }
    let files = select_shard(list_inputs(in_dir, Some(&out_canon))?, opts.shard);
    let manifest = out_dir.join(
        opts.shard
            .map_or_else(|| "manifest.csv".to_string(), |s| s.manifest_name()),
    );
    let previous: HashMap<String, ManifestRow> = read_manifest(&manifest)?
        .into_iter()
        .filter(|r| r.status == RowStatus::Ok)
        .map(|r| (r.input.clone(), r))
        .collect();

    // Plan every file. An existing output of a WAV input is checked by `inspect` (the
    // image codec only knows its own files).
    let valid = |rel: &Path, b: &[u8]| {
        if crate::audio::looks_like_wav_file(&in_dir.join(rel)) {
            crate::inspect(b).is_ok()
        } else {
            codec.is_valid(b)
        }
    };
    let mut claimed: HashMap<PathBuf, String> = HashMap::new();
    let mut plans = Vec::with_capacity(files.len());
    for rel in &files {
        let input = rel_string(rel);
        let out_rel = rel.with_extension("inr");
        let output = rel_string(&out_rel);
        let out_path = out_dir.join(&out_rel);
        let plan = if let Some(first) = claimed.get(&out_rel) {
            Plan::Fail(format!("output {output} is also the output of {first}"))
        } else if !opts.force && out_path.exists() {
            match read_existing(&out_path) {
                Some(b) if valid(rel, &b) => match previous.get(&input) {
                    Some(r) if r.output == output && r.bytes == Some(b.len() as u64) => {
                        Plan::Keep(r.clone())
                    }
                    _ => Plan::Rebuild,
                },
                _ => Plan::Fail(format!(
                    "{output} exists but is not a valid output (use --force to overwrite)"
                )),
            }
        } else {
            Plan::Encode
        };
        claimed.entry(out_rel).or_insert_with(|| input.clone());
        plans.push((rel, input, output, out_path, plan));
    }

    let kept_rows: Vec<ManifestRow> = plans
        .iter()
        .filter_map(|(_, _, _, _, p)| match p {
            Plan::Keep(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let kept = kept_rows.len();
    crate::util::write_atomic(&manifest, manifest_text(&kept_rows).as_bytes(), true)
        .map_err(io_err(&manifest))?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&manifest)
        .map_err(io_err(&manifest))?;
    let sink = Mutex::new((file, None::<std::io::Error>));
    progress(&BatchEvent::Started {
        total: plans.len(),
        todo: plans.len() - kept,
    });

    let cancelled = || opts.cancel.is_some_and(|c| c.load(Ordering::SeqCst));
    // The input is opened by its path, not by its manifest name: a file name that is not
    // UTF-8 is written lossily in the manifest but must still be read.
    let work = |(rel, input, output, out_path, plan): &Planned<'_>| {
        let in_path = in_dir.join(rel);
        let t = Instant::now();
        if !matches!(plan, Plan::Keep(_)) && cancelled() {
            return None;
        }
        let row = match plan {
            Plan::Keep(r) => return Some(r.clone()),
            Plan::Fail(e) => failed(input, output, None, e.clone()),
            Plan::Encode | Plan::Rebuild => {
                let rebuild = matches!(plan, Plan::Rebuild);
                let res = if rebuild {
                    rebuild_one(codec, &in_path, out_path, opts.ignore_alpha)
                } else {
                    encode_one(codec, opts, &in_path, out_path)
                };
                let secs = (!rebuild).then(|| t.elapsed().as_secs_f64());
                match res {
                    Ok(c) => ManifestRow {
                        input: input.clone(),
                        output: output.clone(),
                        bytes: Some(c.bytes),
                        bpp: c.bpp,
                        kbps: c.kbps,
                        psnr: Some(c.psnr),
                        seconds: secs,
                        status: RowStatus::Ok,
                        error: String::new(),
                        mode: c.mode.to_string(),
                    },
                    Err(e) => failed(input, output, secs, e),
                }
            }
        };
        // Round as the CSV does, so the returned rows equal the manifest on disk.
        let row = parse_manifest(&row.to_csv_line()).pop().unwrap_or(row);
        if let Ok(mut g) = sink.lock() {
            let line = row.to_csv_line();
            let res = g.0.write_all(line.as_bytes()).and_then(|()| g.0.flush());
            if let Err(e) = res {
                g.1.get_or_insert(e);
            }
        }
        progress(&BatchEvent::Finished { row: &row });
        Some(row)
    };
    let done = run_jobs(&plans, opts.jobs, &work)?;
    let interrupted = done.iter().filter(|r| r.is_none()).count();
    let mut rows: Vec<ManifestRow> = done.into_iter().flatten().collect();
    let (file, append_err) = sink.into_inner().unwrap_or_else(|p| p.into_inner());
    drop(file);
    rows.sort_by(|a, b| a.input.cmp(&b.input));
    // The final rewrite replaces the appended file; an append error is reported only if
    // this rewrite fails too.
    crate::util::write_atomic(&manifest, manifest_text(&rows).as_bytes(), true)
        .map_err(|e| io_err(&manifest)(append_err.unwrap_or(e)))?;
    let failed = rows
        .iter()
        .filter(|r| r.status == RowStatus::Failed)
        .count();
    Ok(BatchSummary {
        manifest,
        encoded: rows.len() - failed - kept,
        kept,
        failed,
        interrupted,
        rows,
    })
}

/// Merge the shard manifests (`manifest-<i>-of-<n>.csv`) and any `manifest.csv` in `out_dir`
/// into `manifest.csv`, one row per input sorted by input (an `ok` row wins over a `failed`
/// one; among equals, the first manifest in name order wins). Returns the merged path and the
/// number of rows.
///
/// # Errors
/// [`BatchError::NothingToMerge`] when there is no shard manifest, [`BatchError::Io`].
pub fn merge_manifests(out_dir: &Path) -> Result<(PathBuf, usize), BatchError> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .map_err(io_err(out_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("manifest-") && n.ends_with(".csv") && n.contains("-of-")
            })
        })
        .collect();
    if names.is_empty() {
        return Err(BatchError::NothingToMerge(out_dir.to_path_buf()));
    }
    names.sort();
    names.push(out_dir.join("manifest.csv"));
    let mut merged: BTreeMap<String, ManifestRow> = BTreeMap::new();
    for n in &names {
        for r in read_manifest(n)? {
            match merged.get(&r.input) {
                Some(old) if old.status == RowStatus::Ok || r.status != RowStatus::Ok => {}
                _ => {
                    merged.insert(r.input.clone(), r);
                }
            }
        }
    }
    let rows: Vec<ManifestRow> = merged.into_values().collect();
    let path = out_dir.join("manifest.csv");
    crate::util::write_atomic(&path, manifest_text(&rows).as_bytes(), true)
        .map_err(io_err(&path))?;
    Ok((path, rows.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_roundtrip_with_quotes_and_cut_line() {
        let row = ManifestRow {
            input: "a, \"b\"\nc.png".into(),
            output: "a.inr".into(),
            bytes: Some(12),
            bpp: Some(0.5),
            kbps: None,
            psnr: None,
            seconds: Some(1.25),
            status: RowStatus::Failed,
            error: "bad, very".into(),
            mode: "grid-shared".into(),
        };
        let text = manifest_text(std::slice::from_ref(&row));
        let back = parse_manifest(&text);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].mode, "grid-shared");
        assert_eq!(back[0].input, row.input);
        assert_eq!(back[0].error, row.error);
        assert_eq!(back[0].bytes, Some(12));
        // A line cut by an interruption is dropped, the complete ones survive.
        let cut = format!("{text}{}", &row.to_csv_line()[..10]);
        assert_eq!(parse_manifest(&cut).len(), 1);
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
        for bad in ["3/3", "1/0", "x/2", "1", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
