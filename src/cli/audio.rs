//! The audio paths of `inr encode`, `inr decode` and `inr eval` (WAV in, WAV out).

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use inr::audio::{AudioSource as _, WavSink, WavSource};
use inr::{AudioEncodeConfig, Progress};

use super::decode::DecodeArgs;
use super::encode::{EncodeArgs, Mode};
use super::eval::EvalArgs;
use super::{json_psnr, path_str, print_json, say, Ctx};

/// True when the file at `path` starts like a WAV file (the content decides, not the name).
pub fn is_wav(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; 12];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|()| inr::audio::looks_like_wav(&head))
        .unwrap_or(false)
}

fn open_wav(path: &Path) -> anyhow::Result<WavSource<std::io::BufReader<std::fs::File>>> {
    WavSource::open(path).with_context(|| format!("cannot read audio {}", path.display()))
}

/// `inr encode x.wav -o x.inr`.
pub fn encode(args: EncodeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut notes = Vec::new();
    if args.target_psnr.is_some()
        || args.batch.is_some()
        || args.ignore_alpha
        || args.exact_alpha
        || args.upsampling.is_some()
    {
        notes.push(
            "--target-psnr, --batch, --ignore-alpha, --exact-alpha and --upsampling apply to \
             images only; ignored"
                .into(),
        );
    }
    let mut src = open_wav(&args.input)?;
    let spec = src.spec();
    let mode = args.mode.unwrap_or(Mode::Grid);
    if args.arm.is_some() && mode != Mode::Grid {
        anyhow::bail!("--arm is for the grid mode (WAV input: --mode grid, the default)");
    }
    match mode {
        Mode::Grid => return encode_grid(args, src, notes, ctx),
        Mode::Modulations => return encode_modulated(args, src, notes, ctx),
        Mode::Weights => {}
        Mode::GridShared => {
            anyhow::bail!("--mode grid-shared is for images (WAV input: --mode grid)")
        }
    }
    if args.kbps.is_some() {
        anyhow::bail!(
            "--kbps needs --mode grid or modulations (the weight mode's rate is set by --preset)"
        );
    }
    ctx.notes(&notes);
    let cfg = AudioEncodeConfig {
        preset: args.preset,
        width: args.width,
        depth: args.depth,
        bits: args.bits,
        steps: args.steps,
        window: args.window,
        seed: args.seed,
        threads: ctx.threads,
        pe_freqs: args.pe_freqs,
        w0: args.w0,
        lr: args.lr,
        init: None,
        base: super::base_choice(&args.base)?,
    };
    let (result, start) = with_bar(ctx, |p| inr::encode_audio(&mut src, &cfg, p));
    let enc = result.with_context(|| format!("cannot encode {}", args.input.display()))?;
    report(
        &args,
        spec,
        enc,
        start,
        super::encode::preset_name(args.preset).into(),
        notes,
        ctx,
    )
}

/// `inr encode x.wav --mode modulations`: only a row of latents for a shared audio
/// modulation base.
fn encode_modulated(
    args: EncodeArgs,
    mut src: WavSource<std::io::BufReader<std::fs::File>>,
    mut notes: Vec<String>,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let spec = src.spec();
    if args.bpp.is_some() {
        anyhow::bail!("audio takes --kbps for a rate target, not --bpp");
    }
    if args.width.is_some() || args.depth.is_some() || args.bits.is_some() || args.window.is_some()
    {
        notes.push(
            "--width, --depth, --bits and --window: the modulation base fixes the network; \
             ignored"
                .into(),
        );
    }
    ctx.notes(&notes);
    let (base, fit) = super::encode::mod_base_and_fit(
        &args,
        inr::base::embedded_audio_modulation(spec.channels),
        1.0,
    )?;
    let cfg = inr::AudioModEncodeConfig {
        fit,
        latent_step: args.latent_step.unwrap_or(inr::DEFAULT_LATENT_STEP),
        target_kbps: args.kbps,
        qat_steps: args.latent_qat_steps.unwrap_or(inr::DEFAULT_QAT_STEPS),
        base: Some(base),
        seed: args.seed,
        threads: ctx.threads,
    };
    let (result, start) = with_bar(ctx, |p| inr::encode_audio_modulated(&mut src, &cfg, p));
    let enc = result.with_context(|| format!("cannot encode {}", args.input.display()))?;
    report(
        &args,
        spec,
        enc,
        start,
        String::from("modulations").into(),
        notes,
        ctx,
    )
}

/// `inr encode x.wav --mode grid`: per segment, a row of latent levels and a small synthesis
/// network fitted under a rate–distortion objective (§14).
fn encode_grid(
    args: EncodeArgs,
    mut src: WavSource<std::io::BufReader<std::fs::File>>,
    mut notes: Vec<String>,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let spec = src.spec();
    if args.bpp.is_some() {
        anyhow::bail!("audio takes --kbps for a rate target, not --bpp");
    }
    ctx.notes(&notes);
    let mut cfg = inr::AudioGridEncodeConfig {
        seed: args.seed,
        threads: ctx.threads,
        ..Default::default()
    };
    let name = super::encode::preset_name(args.preset);
    let g = super::encode::GridFlags {
        fit: &mut cfg.fit,
        levels: &mut cfg.levels,
        width: &mut cfg.width,
        depth: &mut cfg.depth,
        w0: &mut cfg.w0,
        net_bits: &mut cfg.net_bits,
        base: &mut cfg.base,
    };
    g.apply(&args, &inr::AUDIO_GRID_PRESET_LAMBDAS)?;
    if let Some(s) = args.steps {
        cfg.fit.steps = s;
    }
    if let Some(w) = args.window {
        cfg.segment = w;
    }
    cfg.target_kbps = args.kbps;
    if args.arm == Some(super::encode::ArmArg::Off) {
        cfg.arm = None; // `auto` keeps the audio ARM fit (inr::AUDIO_ARM_FIT)
    }
    let (result, start) = with_bar(ctx, |p| inr::encode_audio_grid(&mut src, &cfg, p));
    if let (Ok(e), Some(t)) = (&result, args.kbps) {
        if !inr::kbps_meets(e.quality.kbps, t) {
            notes.push(format!(
                "--kbps {t}: the file came out at {:.2} kbit/s (outside -3 % .. 0 %)",
                e.quality.kbps
            ));
            ctx.notes(&notes[notes.len() - 1..]);
        }
    }
    let enc = result.with_context(|| format!("cannot encode {}", args.input.display()))?;
    let grid_base = cfg.start_id(spec.channels);
    let how = How {
        preset: format!("grid-{name}"),
        grid_base,
    };
    report(&args, spec, enc, start, how, notes, ctx)
}

/// Runs an encoder with a progress bar (hidden when quiet or not a TTY); returns its result
/// and when it started.
fn with_bar<T>(
    ctx: &Ctx,
    run: impl FnOnce(&mut (dyn FnMut(&Progress) + Send)) -> T,
) -> (T, Instant) {
    let pb = super::encode::progress_bar(ctx);
    let mut on_progress = |p: &Progress| {
        pb.set_prefix(p.phase);
        pb.set_length(p.total as u64);
        pb.set_position(p.step as u64);
    };
    let start = Instant::now();
    let r = run(&mut on_progress);
    pb.finish_and_clear();
    (r, start)
}

/// How a clip was coded, for the report: the preset (or mode) name and, in grid mode, the
/// audio grid base the segment networks started from.
struct How {
    preset: String,
    grid_base: Option<u64>,
}

impl From<String> for How {
    fn from(preset: String) -> How {
        How {
            preset,
            grid_base: None,
        }
    }
}

/// Writes the encoded clip and reports it.
fn report(
    args: &EncodeArgs,
    spec: inr::audio::AudioSpec,
    enc: inr::AudioEncoded,
    start: Instant,
    how: How,
    notes: Vec<String>,
    ctx: &Ctx,
) -> anyhow::Result<()> {
    let How { preset, grid_base } = how;
    let secs = start.elapsed().as_secs_f64();
    inr::util::write_atomic(&args.output, &enc.bytes, args.force)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let q = enc.quality;
    let bytes = enc.bytes.len() as u64;
    let rt = secs / q.duration_s.max(f64::MIN_POSITIVE);
    if ctx.json {
        print_json(&serde_json::json!({
            "input": path_str(&args.input),
            "output": path_str(&args.output),
            "modality": "audio",
            "sample_rate": spec.sample_rate,
            "channels": spec.channels,
            "frames": q.frames,
            "duration_s": q.duration_s,
            "windows": enc.windows,
            "base": enc.base_id.map(|id| format!("{id:016x}")),
            // Grid mode: the audio grid base the segment networks started from (null: random).
            "grid_base": grid_base.map(|id| format!("{id:016x}")),
            "preset": preset,
            "psnr": json_psnr(q.psnr),
            "snr": json_psnr(q.snr),
            "kbps": q.kbps,
            "bytes": bytes,
            "time_s": secs,
            "encode_s_per_audio_s": rt,
            "notes": notes,
        }))
    } else {
        say(format_args!(
            "PSNR {} dB  SNR {} dB  kbps {:.2}  bytes {bytes}  time {secs:.1} s ({rt:.2} s per s of audio)",
            inr::metrics::format_psnr(q.psnr),
            inr::metrics::format_psnr(q.snr),
            q.kbps
        ))
    }
}

/// `inr decode x.inr -o x.wav`: streamed, window block by window block.
pub fn decode(args: DecodeArgs, bytes: &[u8], ctx: &Ctx) -> anyhow::Result<()> {
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() != Some("wav") {
        anyhow::bail!(
            "{} holds audio: the output must be a .wav file (got {})",
            args.input.display(),
            args.output.display()
        );
    }
    if args.size.is_some() || args.scale.is_some() {
        anyhow::bail!("--size and --scale apply to images only");
    }
    let bases = super::load_bases(&args.bases)?;
    let start = Instant::now();
    let mut sink: Option<WavSink> = None;
    let h = inr::decode_audio_stream_with(bytes, &Default::default(), &bases, &mut |h, _, s| {
        if sink.is_none() {
            sink = Some(WavSink::create(
                &args.output,
                inr::output_spec(h),
                args.force,
            )?);
        }
        match sink.as_mut() {
            Some(w) => Ok(w.push(s)?),
            None => Ok(()),
        }
    })
    .map_err(|e| super::decode_context(e, format!("cannot decode {}", args.input.display())))?;
    if let Some(w) = sink {
        w.finish()?;
    }
    let secs = start.elapsed().as_secs_f64();
    let quality = match &args.reference {
        Some(r) => Some(inr::eval_audio_with(
            bytes,
            &mut open_wav(r)?,
            &Default::default(),
            &bases,
        )?),
        None => None,
    };
    if ctx.json {
        let mut v = serde_json::json!({
            "input": path_str(&args.input),
            "output": path_str(&args.output),
            "modality": "audio",
            "sample_rate": h.sample_rate,
            "channels": h.channels,
            "frames": h.frames,
            "bits_per_sample": h.bits_per_sample,
            "bytes": bytes.len(),
            "time_s": secs,
        });
        if let (Some(q), Some(obj)) = (quality, v.as_object_mut()) {
            obj.insert("psnr".into(), json_psnr(q.psnr));
            obj.insert("snr".into(), json_psnr(q.snr));
            obj.insert("kbps".into(), q.kbps.into());
        }
        print_json(&v)
    } else {
        if !ctx.quiet {
            eprintln!(
                "decoded {} frames x {} channel(s) at {} Hz in {secs:.2} s -> {}",
                h.frames,
                h.channels,
                h.sample_rate,
                args.output.display()
            );
        }
        match quality {
            Some(q) => say(format_args!(
                "PSNR {} dB  SNR {} dB  kbps {:.2}  bytes {}",
                inr::metrics::format_psnr(q.psnr),
                inr::metrics::format_psnr(q.snr),
                q.kbps,
                bytes.len()
            )),
            None => Ok(()),
        }
    }
}

/// `inr eval ref.wav x.inr`.
pub fn eval(args: EvalArgs, bytes: &[u8], ctx: &Ctx) -> anyhow::Result<()> {
    let mut src = open_wav(&args.reference)?;
    let bases = super::load_bases(&args.bases)?;
    let start = Instant::now();
    let q = inr::eval_audio_with(bytes, &mut src, &Default::default(), &bases).map_err(|e| {
        super::decode_context(e, format!("cannot evaluate {}", args.input.display()))
    })?;
    let secs = start.elapsed().as_secs_f64();
    if ctx.json {
        print_json(&serde_json::json!({
            "reference": path_str(&args.reference),
            "input": path_str(&args.input),
            "modality": "audio",
            "frames": q.frames,
            "duration_s": q.duration_s,
            "psnr": json_psnr(q.psnr),
            "snr": json_psnr(q.snr),
            "kbps": q.kbps,
            "bytes": bytes.len(),
            "decode_s": secs,
        }))
    } else {
        say(format_args!(
            "PSNR {} dB  SNR {} dB  kbps {:.2}  bytes {}",
            inr::metrics::format_psnr(q.psnr),
            inr::metrics::format_psnr(q.snr),
            q.kbps,
            bytes.len()
        ))
    }
}
