//! Argument parsing, dispatch and the helpers shared by the subcommands.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod audio;
mod batch;
mod decode;
mod encode;
mod eval;
mod info;
mod meta_train;
mod meta_train_audio;
mod meta_train_audio_grid;
mod meta_train_grid;
mod meta_train_mod;
mod plot;
mod rd;

/// Largest `.inrb` base file the CLI reads into memory.
pub const MAX_BASE_BYTES: u64 = 64 << 20;

/// Reads and validates the base files given with `--base` (a file coded from a base that is
/// neither embedded nor given here cannot be decoded; the error names the base's id).
pub fn load_bases(paths: &[PathBuf]) -> anyhow::Result<Vec<inr::base::Base>> {
    paths
        .iter()
        .map(|p| {
            let bytes = read_limited(p, MAX_BASE_BYTES)?;
            inr::base::Base::from_bytes(&bytes, &inr::format::Limits::default())
                .with_context(|| format!("cannot load base {}", p.display()))
        })
        .collect()
}

/// The start `--base` names: `default` (the embedded base matching the network, if any),
/// `none` (random initialisation) or a base file.
pub fn base_choice(arg: &str) -> anyhow::Result<inr::BaseChoice> {
    Ok(match arg {
        "default" => inr::BaseChoice::Default,
        "none" => inr::BaseChoice::None,
        path => match load_bases(&[PathBuf::from(path)])?.pop() {
            Some(b) => inr::BaseChoice::Custom(b),
            None => anyhow::bail!("no base loaded from {path}"),
        },
    })
}

/// Reads a whole file, refusing one larger than `max` bytes before reading it.
pub fn read_limited(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > max {
        anyhow::bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(bytes)
}

/// How input images are interpreted; shown in the long help of the commands that read images.
pub const INPUT_POLICY: &str = "\
Input images: PNG, JPEG, BMP, PNM (PPM/PGM), TIFF, GIF, WebP, QOI, OpenEXR, HDR..., detected
from the file content, not the extension.
  - Gray images stay 1-channel; colour images are coded as RGB.
  - A fully opaque alpha channel is dropped losslessly. Any other alpha channel is coded as a
    fourth (gray: second) channel by the grid modes (`grid`, the default, and `grid-shared`);
    the other modes refuse it.
    With --ignore-alpha it is dropped instead and colours are kept unblended. PSNR compares
    colours premultiplied by alpha (hidden colours do not count).
  - Orientation metadata (EXIF) is applied, so the image is coded as viewers show it.
  - 16-bit images are rounded to 8 bits (format v1 codes 8-bit precision); a note says so.
  - Float images are clamped to [0, 1] and rounded to 8 bits (no tone mapping).";

/// Store images and audio as small sine-activated neural networks (SIREN implicit neural
/// representations): encoding fits a network (by default with a pyramid of latent grids it
/// reads) to the signal and entropy-codes its quantized values; decoding evaluates the network
/// on the pixel grid, at any resolution.
#[derive(Parser, Debug)]
#[command(name = "inr", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Hide the progress bar and notes (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print one JSON object on stdout instead of text (an infinite PSNR is written as null).
    #[arg(long, global = true)]
    pub json: bool,
    /// Worker threads (size of the rayon thread pool). Default: one per core.
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    // The help texts of these commands are their argument structs' doc comments.
    Encode(encode::EncodeArgs),
    Decode(decode::DecodeArgs),
    Info(info::InfoArgs),
    Eval(eval::EvalArgs),
    Rd(rd::RdArgs),
    Batch(batch::BatchArgs),
    MetaTrain(meta_train::MetaTrainArgs),
    /// Chart two columns of a CSV table (benchmark results) as SVG or PNG.
    Plot(plot::PlotArgs),
}

/// Parse the arguments, run, print any error as one `error: ...` line and return the exit code.
pub fn main() -> i32 {
    // Usage errors, --help and --version exit inside `parse` (code 2 resp. 0), as clap does.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            // 128 + SIGINT, as a shell reports a command stopped by Ctrl-C.
            if e.downcast_ref::<batch::Interrupted>().is_some() {
                130
            } else {
                1
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(n))
            .build_global()
            .context("cannot build the thread pool")?;
    }
    let ctx = Ctx {
        quiet: cli.quiet,
        json: cli.json,
        threads: cli.threads.map(usize::from),
    };
    match cli.command {
        Command::Encode(a) => encode::run(a, &ctx),
        Command::Decode(a) => decode::run(a, &ctx),
        Command::Info(a) => info::run(a, &ctx),
        Command::Eval(a) => eval::run(a, &ctx),
        Command::Rd(a) => rd::run(a, ctx.quiet, ctx.json, ctx.threads),
        Command::Batch(a) => batch::run(a, ctx.quiet, ctx.json),
        Command::MetaTrain(a) => meta_train::run(a, &ctx),
        Command::Plot(a) => plot::run(a, &ctx),
    }
}

/// Global flags, passed to every subcommand.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub quiet: bool,
    pub json: bool,
    pub threads: Option<usize>,
}

impl Ctx {
    /// Print `note: ...` lines on stderr unless `--quiet`.
    pub fn notes(&self, notes: &[String]) {
        if !self.quiet {
            for n in notes {
                eprintln!("note: {n}");
            }
        }
    }
}

/// The error and its causes on one line, `outer: cause: root cause`. A cause whose text the
/// previous message already contains is skipped, and newlines become spaces.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
        if msg.is_empty() || out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

/// True when `a` and `b` name the same file (`b` need not exist).
pub fn same_file(a: &Path, b: &Path) -> bool {
    fn canon(p: &Path) -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let name = p.file_name()?;
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(name))
    }
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Refuse to write `output` over `input` (always) or over an existing file without `--force`.
///
/// # Errors
/// When either rule is broken.
pub fn check_output(input: &Path, output: &Path, force: bool) -> anyhow::Result<()> {
    if same_file(input, output) {
        anyhow::bail!(
            "output {} is the input file (expected a different path)",
            output.display()
        );
    }
    if !force && output.exists() {
        anyhow::bail!(
            "output {} exists (use --force to overwrite)",
            output.display()
        );
    }
    Ok(())
}

/// Decoder resource limits, shared by `decode`, `eval` and `info`. The defaults decode every
/// file the encoder writes; raise them for unusually large files.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Largest image, coded or rendered, in pixels (default 268435456 = 2^28).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: Option<u64>,
    /// Largest network, in parameters (default 16777216 = 2^24).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_params: Option<u64>,
    /// Largest latent pyramid of an image grid file (default 67108864 = 2^26, about 50 Mpx).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_latents: Option<u64>,
    /// Largest rendering work, in output pixels x parameters (default 2^40).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_work: Option<u64>,
    /// Largest .inr file, in bytes (default 268435456 = 256 MiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_file_bytes: Option<u64>,
}

impl LimitArgs {
    /// [`inr::Limits::default`] with the given flags applied.
    pub fn limits(&self) -> inr::Limits {
        let d = inr::Limits::default();
        inr::Limits {
            max_pixels: self.max_pixels.unwrap_or(d.max_pixels),
            max_params: self.max_params.unwrap_or(d.max_params),
            max_latents: self.max_latents.unwrap_or(d.max_latents),
            max_work: self.max_work.unwrap_or(d.max_work),
            max_file_bytes: self.max_file_bytes.unwrap_or(d.max_file_bytes),
            ..d
        }
    }
}

/// Adds which flag raises a limit to a decoder error caused by one.
pub fn limit_hint(what: &str) -> &'static str {
    if what.contains("work") {
        " (raise it with --max-work N, or render at a smaller --size)"
    } else if what.contains("pixel") {
        " (raise it with --max-pixels N)"
    } else if what.contains("latent count") {
        " (raise it with --max-latents N)"
    } else if what.contains("parameter") {
        " (raise it with --max-params N)"
    } else if what.contains("file size") {
        " (raise it with --max-file-bytes N)"
    } else {
        ""
    }
}

/// Wraps a format error, pointing at the flag that raises a limit it hit.
pub fn format_context(e: inr::format::FormatError, context: String) -> anyhow::Error {
    let hint = match &e {
        inr::format::FormatError::LimitExceeded { what, .. } => limit_hint(what),
        _ => "",
    };
    anyhow::Error::new(e).context(format!("{context}{hint}"))
}

/// Wraps a decode error, pointing at the flag that raises a limit it hit.
pub fn decode_context(e: inr::DecodeError, context: String) -> anyhow::Error {
    match e {
        inr::DecodeError::Format(f) => format_context(f, context),
        other => anyhow::Error::new(other).context(context),
    }
}

/// Read a `.inr` file of at most `limits.max_file_bytes` bytes.
///
/// # Errors
/// I/O errors and files that are too large.
pub fn read_inr(path: &Path, limits: &inr::Limits) -> anyhow::Result<Vec<u8>> {
    match inr::media::read_file_limited(path, limits.max_file_bytes) {
        Ok(b) => Ok(b),
        Err(e @ inr::media::MediaError::FileTooLarge { .. }) => Err(
            anyhow::Error::new(e).context(format!("{}{}", path.display(), limit_hint("file size")))
        ),
        Err(e) => Err(e.into()),
    }
}

/// Load an input image with the documented policy (a translucent alpha channel is kept unless
/// `ignore_alpha`); adds the path to non-I/O errors.
///
/// # Errors
/// Every [`inr::media::MediaError`].
pub fn load_input(path: &Path, ignore_alpha: bool) -> anyhow::Result<inr::media::LoadedImage> {
    let opts = inr::media::LoadOptions {
        ignore_alpha,
        keep_alpha: true,
        ..Default::default()
    };
    match inr::media::load_image_with(path, &opts) {
        Ok(l) => Ok(l),
        Err(e @ inr::media::MediaError::Read { .. }) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("{}", path.display()))),
    }
}

/// Render a path for JSON output.
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A PSNR for JSON: `null` when infinite (identical images).
pub fn json_psnr(psnr: f64) -> serde_json::Value {
    serde_json::Number::from_f64(psnr).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Print `value` as one line of JSON on stdout.
///
/// # Errors
/// Serialization errors (not expected for `serde_json::Value`).
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    say(serde_json::to_string(value)?)
}

/// Print one line on stdout; a closed pipe is an error instead of a panic.
///
/// # Errors
/// When stdout cannot be written.
pub fn say(line: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// A bar counting finished items with ETA, hidden with `--quiet` or when stderr is not a
/// terminal (shared by `rd` and `batch`).
pub fn counting_bar(quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed} < {eta}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn one_line_joins_and_dedups_causes() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such\nfile");
        let e = anyhow::Error::new(inner).context("cannot read a.png");
        assert_eq!(one_line(&e), "cannot read a.png: no such file");
        let e = anyhow::anyhow!("x: boom").context("x: boom");
        assert_eq!(one_line(&e), "x: boom");
    }

    #[test]
    fn same_file_detects_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        std::fs::write(&a, b"x").unwrap();
        let alias = dir.path().join(".").join("a.png");
        assert!(same_file(&a, &alias));
        assert!(!same_file(&a, &dir.path().join("b.png")));
        assert!(same_file(
            &dir.path().join("new.inr"),
            &dir.path().join("./new.inr")
        ));
    }
}
