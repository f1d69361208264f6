//! Audio I/O with `hound`: WAV files in and out, read in windows (bounded memory), and the
//! sample mapping of `codec-spec.md` §11.8 between stored samples and the network's [-1, 1].
//!
//! Supported input: RIFF/WAVE, PCM integer 8/16/24/32-bit or IEEE float 32-bit, 1..=16
//! channels, any sample rate up to 4 MHz, at least one frame. Everything else is a typed
//! [`AudioError`]. Samples are normalised to `s / 2^(b-1)` (integers) or taken as they are
//! (float; non-finite samples are refused).

use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

pub use crate::format::SampleKind;
use crate::format::{MAX_AUDIO_CHANNELS, MAX_AUDIO_FRAMES, MAX_SAMPLE_RATE};

/// How the samples of a WAV file are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AudioSpec {
    pub sample_rate: u32,
    pub channels: u8,
    pub kind: SampleKind,
    /// 8, 16, 24 or 32 (integer), 32 (float).
    pub bits_per_sample: u8,
}

/// A whole clip in memory: `frames * channels` normalised samples, channels interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub spec: AudioSpec,
    pub samples: Vec<f32>,
}

impl Audio {
    /// Frames (samples per channel).
    pub fn frames(&self) -> u64 {
        (self.samples.len() / usize::from(self.spec.channels.max(1))) as u64
    }
}

/// Errors of audio input and output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a WAV file, or a damaged or truncated one.
    #[error("invalid WAV data: {0}")]
    Wav(String),
    /// A valid WAV file in a format the codec does not handle.
    #[error("unsupported WAV format: {0}")]
    Unsupported(String),
    #[error("the WAV file has no samples (expected at least one frame)")]
    Empty,
    #[error("sample {index} is not a finite number (expected finite float samples)")]
    NonFinite { index: u64 },
    #[error("read of frames {start}..{end} is outside the clip of {frames} frames")]
    OutOfRange { start: u64, end: u64, frames: u64 },
}

fn wav_err(e: hound::Error) -> AudioError {
    match e {
        hound::Error::Unsupported => {
            AudioError::Unsupported("hound cannot read this WAV variant".into())
        }
        hound::Error::FormatError(m) => AudioError::Wav(m.to_string()),
        hound::Error::IoError(io) => AudioError::Wav(format!("truncated or unreadable: {io}")),
        other => AudioError::Wav(other.to_string()),
    }
}

/// Checks a hound spec against what the codec supports.
fn check_spec(s: &hound::WavSpec) -> Result<AudioSpec, AudioError> {
    let kind = match s.sample_format {
        hound::SampleFormat::Int => SampleKind::Int,
        hound::SampleFormat::Float => SampleKind::Float,
    };
    match (kind, s.bits_per_sample) {
        (SampleKind::Int, 8 | 16 | 24 | 32) | (SampleKind::Float, 32) => {}
        (k, b) => {
            return Err(AudioError::Unsupported(format!(
                "{b}-bit {} samples (expected 8/16/24/32-bit integer or 32-bit float)",
                if k == SampleKind::Int {
                    "integer"
                } else {
                    "float"
                }
            )))
        }
    }
    if s.channels == 0 || s.channels > u16::from(MAX_AUDIO_CHANNELS) {
        return Err(AudioError::Unsupported(format!(
            "{} channels (expected 1..={MAX_AUDIO_CHANNELS})",
            s.channels
        )));
    }
    if s.sample_rate == 0 || s.sample_rate > MAX_SAMPLE_RATE {
        return Err(AudioError::Unsupported(format!(
            "sample rate {} Hz (expected 1..={MAX_SAMPLE_RATE})",
            s.sample_rate
        )));
    }
    Ok(AudioSpec {
        sample_rate: s.sample_rate,
        channels: s.channels as u8,
        kind,
        bits_per_sample: s.bits_per_sample as u8,
    })
}

/// Something audio windows can be read from: a clip in memory or a WAV file read on demand.
pub trait AudioSource: Send {
    fn spec(&self) -> AudioSpec;
    /// Total frames.
    fn frames(&self) -> u64;
    /// Replace `out` with the normalised samples of frames `start .. start + n`
    /// (interleaved).
    ///
    /// # Errors
    /// Read errors, a damaged file, non-finite samples, or a range outside the clip.
    fn read(&mut self, start: u64, n: usize, out: &mut Vec<f32>) -> Result<(), AudioError>;
}

impl AudioSource for Audio {
    fn spec(&self) -> AudioSpec {
        self.spec
    }
    fn frames(&self) -> u64 {
        Audio::frames(self)
    }
    fn read(&mut self, start: u64, n: usize, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let c = usize::from(self.spec.channels);
        let end = start.saturating_add(n as u64);
        let frames = Audio::frames(self);
        if end > frames {
            return Err(AudioError::OutOfRange { start, end, frames });
        }
        out.clear();
        out.extend_from_slice(&self.samples[start as usize * c..end as usize * c]);
        Ok(())
    }
}

/// A WAV stream read window by window: memory stays bounded by the largest read.
pub struct WavSource<R: Read + Seek> {
    reader: hound::WavReader<R>,
    spec: AudioSpec,
    frames: u64,
}

impl WavSource<BufReader<std::fs::File>> {
    /// Open a WAV file and check its format (the samples are read later).
    ///
    /// # Errors
    /// I/O errors, invalid WAV data, unsupported formats, an empty file.
    pub fn open(path: &Path) -> Result<Self, AudioError> {
        let f = std::fs::File::open(path).map_err(|source| AudioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        WavSource::new(BufReader::new(f))
    }
}

impl<R: Read + Seek + Send> WavSource<R> {
    /// Wrap a reader of WAV bytes and check the format.
    ///
    /// # Errors
    /// As [`WavSource::open`].
    pub fn new(r: R) -> Result<Self, AudioError> {
        let reader = hound::WavReader::new(r).map_err(wav_err)?;
        let spec = check_spec(&reader.spec())?;
        let frames = u64::from(reader.duration());
        if frames == 0 {
            return Err(AudioError::Empty);
        }
        if frames > MAX_AUDIO_FRAMES {
            return Err(AudioError::Unsupported(format!("{frames} frames")));
        }
        Ok(WavSource {
            reader,
            spec,
            frames,
        })
    }

    /// Read the whole stream into memory.
    ///
    /// # Errors
    /// As [`AudioSource::read`].
    pub fn read_all(mut self) -> Result<Audio, AudioError> {
        let mut samples = Vec::new();
        let n = usize::try_from(self.frames)
            .map_err(|_| AudioError::Unsupported("clip too long for this machine".into()))?;
        self.read(0, n, &mut samples)?;
        Ok(Audio {
            spec: self.spec,
            samples,
        })
    }
}

impl<R: Read + Seek + Send> AudioSource for WavSource<R> {
    fn spec(&self) -> AudioSpec {
        self.spec
    }
    fn frames(&self) -> u64 {
        self.frames
    }
    fn read(&mut self, start: u64, n: usize, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let end = start.saturating_add(n as u64);
        if end > self.frames {
            return Err(AudioError::OutOfRange {
                start,
                end,
                frames: self.frames,
            });
        }
        // start < frames <= u32::MAX (checked in `new`).
        self.reader
            .seek(start as u32)
            .map_err(|e| AudioError::Wav(format!("cannot seek: {e}")))?;
        let count = n * usize::from(self.spec.channels);
        out.clear();
        out.reserve(count);
        match self.spec.kind {
            SampleKind::Int => {
                let scale = 1.0 / (1u64 << (self.spec.bits_per_sample - 1)) as f32;
                for s in self.reader.samples::<i32>().take(count) {
                    out.push(s.map_err(wav_err)? as f32 * scale);
                }
            }
            SampleKind::Float => {
                for s in self.reader.samples::<f32>().take(count) {
                    let v = s.map_err(wav_err)?;
                    if !v.is_finite() {
                        return Err(AudioError::NonFinite {
                            index: start * u64::from(self.spec.channels) + out.len() as u64,
                        });
                    }
                    out.push(v);
                }
            }
        }
        if out.len() != count {
            return Err(AudioError::Wav(format!(
                "truncated: {} of {count} samples present",
                out.len()
            )));
        }
        Ok(())
    }
}

/// Load a WAV file into memory.
///
/// # Errors
/// As [`WavSource::open`] and [`AudioSource::read`].
pub fn load_wav(path: &Path) -> Result<Audio, AudioError> {
    WavSource::open(path)?.read_all()
}

/// Decode WAV bytes in memory.
///
/// # Errors
/// As [`load_wav`].
pub fn decode_wav_bytes(bytes: &[u8]) -> Result<Audio, AudioError> {
    WavSource::new(std::io::Cursor::new(bytes))?.read_all()
}

/// Whether `path` is a WAV file: its first bytes are a RIFF/WAVE header, or its extension is
/// `.wav` (so a broken `.wav` is still treated as audio and reported rather than skipped).
pub fn looks_like_wav_file(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(12);
    let read = std::fs::File::open(path).and_then(|f| f.take(12).read_to_end(&mut head));
    (read.is_ok() && looks_like_wav(&head))
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
}

/// True when `bytes` start like a WAV file (`RIFF....WAVE`, also `RIFX`/`RF64`).
pub fn looks_like_wav(bytes: &[u8]) -> bool {
    bytes.len() >= 12
        && matches!(&bytes[0..4], b"RIFF" | b"RIFX" | b"RF64")
        && &bytes[8..12] == b"WAVE"
}

/// A stored sample: what a WAV file holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    Int(i32),
    Float(f32),
}

/// §11.8 Output mapping of a network value `v` to a stored sample: integers
/// `clamp(round(v * 2^(b-1)), -2^(b-1), 2^(b-1) - 1)` (round half away from zero), floats
/// `clamp(v, -1, 1)`; NaN gives 0. Never wraps around: clipping-safe.
#[inline]
pub fn to_sample(spec: &AudioSpec, v: f32) -> Sample {
    match spec.kind {
        SampleKind::Int => {
            let half = (1u64 << (spec.bits_per_sample.clamp(2, 32) - 1)) as f32;
            let x = (v * half).round();
            // `as i64` saturates and maps NaN to 0.
            let q = (x as i64).clamp(-(half as i64), half as i64 - 1);
            Sample::Int(q as i32)
        }
        SampleKind::Float => Sample::Float(if v.is_nan() { 0.0 } else { v.clamp(-1.0, 1.0) }),
    }
}

/// The normalised value of a stored sample (`s / 2^(b-1)` for integers).
#[inline]
pub fn sample_value(spec: &AudioSpec, s: Sample) -> f64 {
    match s {
        Sample::Int(q) => f64::from(q) / (1u64 << (spec.bits_per_sample.clamp(2, 32) - 1)) as f64,
        Sample::Float(f) => f64::from(f),
    }
}

/// Writes a WAV file incrementally to a temporary file next to the target, renamed into
/// place by [`WavSink::finish`] (an interrupted write leaves no output).
pub struct WavSink {
    writer: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
    tmp: tempfile::TempPath,
    spec: AudioSpec,
    path: PathBuf,
    overwrite: bool,
}

impl WavSink {
    /// Start writing `path`; refuses an existing file unless `overwrite`.
    ///
    /// # Errors
    /// I/O errors; an existing `path` without `overwrite`.
    pub fn create(path: &Path, spec: AudioSpec, overwrite: bool) -> Result<Self, AudioError> {
        let werr = |source| AudioError::Write {
            path: path.to_path_buf(),
            source,
        };
        if !overwrite && path.exists() {
            return Err(werr(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the file exists (use --force to overwrite)",
            )));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".inr-tmp-")
            .tempfile_in(dir)
            .map_err(werr)?
            .into_temp_path();
        let hspec = hound::WavSpec {
            channels: u16::from(spec.channels),
            sample_rate: spec.sample_rate,
            bits_per_sample: u16::from(spec.bits_per_sample),
            sample_format: match spec.kind {
                SampleKind::Int => hound::SampleFormat::Int,
                SampleKind::Float => hound::SampleFormat::Float,
            },
        };
        let writer = hound::WavWriter::create(&tmp, hspec)
            .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
        Ok(WavSink {
            writer,
            tmp,
            spec,
            path: path.to_path_buf(),
            overwrite,
        })
    }

    /// Append stored samples (interleaved).
    ///
    /// # Errors
    /// I/O errors.
    pub fn push(&mut self, samples: &[Sample]) -> Result<(), AudioError> {
        for &s in samples {
            let r = match s {
                Sample::Int(q) => self.writer.write_sample(q),
                Sample::Float(f) => self.writer.write_sample(f),
            };
            r.map_err(|e| AudioError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }

    /// The format being written.
    pub fn spec(&self) -> AudioSpec {
        self.spec
    }

    /// Finalise the header, flush, and rename the file into place.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(self) -> Result<(), AudioError> {
        let path = self.path;
        let werr = |source| AudioError::Write {
            path: path.clone(),
            source,
        };
        self.writer
            .finalize()
            .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
        let tmp = self.tmp;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(werr)?;
        if self.overwrite {
            tmp.persist(&path).map_err(|e| werr(e.error))?;
        } else {
            tmp.persist_noclobber(&path).map_err(|e| werr(e.error))?;
        }
        Ok(())
    }
}

/// Write a whole clip of normalised samples as a WAV file (atomically), mapping each value
/// with [`to_sample`].
///
/// # Errors
/// As [`WavSink`].
pub fn save_wav(path: &Path, audio: &Audio, overwrite: bool) -> Result<(), AudioError> {
    let mut sink = WavSink::create(path, audio.spec, overwrite)?;
    let s: Vec<Sample> = audio
        .samples
        .iter()
        .map(|&v| to_sample(&audio.spec, v))
        .collect();
    sink.push(&s)?;
    sink.finish()
}
