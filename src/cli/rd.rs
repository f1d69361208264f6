//! `inr rd`: rate–distortion sweep against JPEG, or for audio against baseline points
//! (binary-side glue).

use std::path::PathBuf;

use anyhow::Context;
use inr::rd::jpeg::JpegVariant;
use inr::rd::{self, RdConfig};
use inr::Preset;

/// Rate–distortion sweep of inr against JPEG (or audio baselines) over a folder.
///
/// Measure every image of a folder with inr presets and JPEG; write rd.json, per-image CSVs,
/// rd.svg and rd.png. With `--modality audio`, every WAV clip with the audio presets, beside
/// the points of a `--baselines` CSV; rd.svg/png then plot PSNR and snr.svg/png SNR against
/// kbit/s.
#[derive(Debug, clap::Args)]
pub struct RdArgs {
    /// Folder of images, or of WAV clips with `--modality audio` (not recursive; sorted by
    /// name).
    pub data_dir: PathBuf,
    /// What DATA_DIR holds: `image`, or `audio` (WAV clips, coded with the audio encoder;
    /// the JPEG, modulation and grid options do not apply).
    #[arg(long, default_value = "image", value_parser = ["image", "audio"])]
    pub modality: String,
    /// Audio: baseline points to show beside inr, a CSV with the columns clip (the WAV's file
    /// stem), codec, param, kbps and snr_db (e.g. `shared/baselines/audio_dev.csv`). Their
    /// PSNR is derived from the SNR and the clip's energy.
    #[arg(long, value_name = "CSV")]
    pub baselines: Option<PathBuf>,
    /// Start of the inr presets' fits: `default` (the embedded base matching each preset, if
    /// any), `none` (random initialisation) or a base file. The grid points follow it: `none`
    /// starts them at random, a grid base (`inr meta-train --mode grid`) from that base,
    /// anything else from the embedded grid base.
    #[arg(long, default_value = "default", value_name = "default|none|FILE.inrb")]
    pub base: String,
    /// Report folder (created if missing).
    #[arg(short, long, value_name = "REPORT_DIR")]
    pub output: PathBuf,
    /// inr presets to measure, comma-separated. Images: in the mode of --mode (the grid mode
    /// by default, as `inr encode`: each preset's rate weight λ is an `inr-grid` point, fitted
    /// for --grid-fit-steps); audio: the audio weight mode's presets.
    #[arg(long, value_delimiter = ',', default_value = "tiny,small,medium")]
    pub presets: Vec<Preset>,
    /// Images: the mode of the --presets points: `grid` (the default, as `inr encode`) or
    /// `weights` (the weight mode's presets, `inr` curve; --steps and --base apply to them).
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<PresetMode>,
    /// JPEG qualities, comma-separated (1-100) [default: 5,10,15,20,30,40,50,60,70,80,90].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_qualities: Option<Vec<u8>>,
    /// Measure only the JPEG baselines (no inr presets).
    #[arg(long)]
    pub jpeg_only: bool,
    /// Skip the MozJPEG (trellis) baseline.
    #[arg(long)]
    pub no_mozjpeg: bool,
    /// Drop a translucent alpha channel of the images (colours kept unblended) instead of
    /// refusing them: the JPEG baselines code no alpha.
    #[arg(long)]
    pub ignore_alpha: bool,
    /// Only the first N images.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Override the presets' fitting steps (grid presets: as --grid-fit-steps, unless that is
    /// given).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Also measure modulation mode (`inr-mod` curve): one point per latent quantization step,
    /// e.g. `--mod-steps 0.15,0.25,0.4,0.6`.
    #[arg(long, value_delimiter = ',', value_name = "Q,...")]
    pub mod_steps: Vec<f32>,
    /// Latent fitting steps of the modulation points (default 50).
    #[arg(long, value_name = "N")]
    pub mod_fit_steps: Option<usize>,
    /// Also measure grid mode (`inr-grid` curve): one point per rate weight λ, e.g.
    /// `--grid-lambdas 0.02,0.008,0.003,0.001` (audio: the audio grid mode's λ per frame, e.g.
    /// `0.002,0.0006,0.0002,0.00005,0.00001`).
    #[arg(long, value_delimiter = ',', value_name = "L,...")]
    pub grid_lambdas: Vec<f32>,
    /// Also measure grid mode under rate control (`inr-grid-bpp` curve): one point per target
    /// rate, the file within ±3 % below it when it can (as `inr encode --mode grid --bpp`), e.g.
    /// `--grid-bpps 0.125,0.25,0.5`.
    #[arg(long, value_delimiter = ',', value_name = "BPP,...")]
    pub grid_bpps: Vec<f64>,
    /// Also measure grid mode under quality control (`inr-grid-psnr` curve): one point per
    /// target PSNR, the smallest file at that PSNR the fit reaches (as `inr encode --mode grid
    /// --psnr`), e.g. `--grid-psnrs 26,28,30`.
    #[arg(long, value_delimiter = ',', value_name = "DB,...")]
    pub grid_psnrs: Vec<f64>,
    /// Fitting steps of the grid points (default 1000; audio: 200; --shared-lambdas: 200).
    #[arg(long, value_name = "N")]
    pub grid_fit_steps: Option<usize>,
    /// Also measure grid mode with a shared synthesis (`inr-grid-shared` curve, as `inr encode
    /// --mode grid-shared`): one point per rate weight λ, e.g. `--shared-lambdas
    /// 0.03,0.012,0.005,0.002`.
    #[arg(long, value_delimiter = ',', value_name = "L,...")]
    pub shared_lambdas: Vec<f32>,
    /// The shared synthesis of the `inr-grid-shared` points (default: the embedded one).
    #[arg(long, value_name = "FILE.inrb")]
    pub shared_base: Option<PathBuf>,
    /// The `--shared-lambdas` points keep the shared network's output layer (as `inr encode
    /// --output-layer frozen`; curve `inr-grid-shared-frozen`); by default they fit it on
    /// every image (`--output-layer fitted`).
    #[arg(long, requires = "shared_lambdas")]
    pub shared_frozen_output: bool,
    /// Skip the presets (e.g. to measure only --mod-steps or --grid-lambdas against JPEG).
    #[arg(long)]
    pub no_presets: bool,
    /// Modulation base for the `inr-mod` points (default: the embedded one).
    #[arg(long, value_name = "FILE.inrb")]
    pub mod_base: Option<PathBuf>,
    /// Encoder seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also draw published curves (COIN, Strümpler et al.; all 24 Kodak images), dashed.
    #[arg(long)]
    pub anchors: bool,
    /// Overwrite existing report files.
    #[arg(long)]
    pub force: bool,
}

/// `inr rd --mode`: the coding mode of the image presets.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresetMode {
    Grid,
    Weights,
}

/// Run the sweep and write the report.
///
/// # Errors
/// Any [`inr::rd::RdError`], with context.
pub fn run(args: RdArgs, quiet: bool, json: bool, threads: Option<usize>) -> anyhow::Result<()> {
    if args.modality == "audio" {
        return run_audio(args, quiet, json, threads);
    }
    if args.baselines.is_some() {
        anyhow::bail!(
            "--baselines applies to --modality audio only (images are measured against JPEG)"
        );
    }
    let mut jpeg_variants = vec![JpegVariant::Turbo];
    if !args.no_mozjpeg {
        jpeg_variants.push(JpegVariant::Moz);
    }
    let all_presets = if args.jpeg_only || args.no_presets {
        Vec::new()
    } else {
        args.presets.clone()
    };
    // Grid presets become rate weights: the `inr-grid` curve, beside any --grid-lambdas.
    let grid_presets = args.mode != Some(PresetMode::Weights);
    let (presets, mut grid_lambdas) = if grid_presets {
        (Vec::new(), grid_preset_lambdas(&all_presets))
    } else {
        (all_presets, Vec::new())
    };
    if !args.jpeg_only {
        for &l in &args.grid_lambdas {
            if !grid_lambdas.contains(&l) {
                grid_lambdas.push(l);
            }
        }
    }
    let cfg = RdConfig {
        ignore_alpha: args.ignore_alpha,
        presets,
        jpeg_qualities: args
            .jpeg_qualities
            .clone()
            .unwrap_or_else(|| rd::DEFAULT_JPEG_QUALITIES.to_vec()),
        jpeg_variants,
        limit: args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        steps: args.steps,
        seed: args.seed,
        published_anchors: args.anchors,
        mod_latent_steps: if args.jpeg_only {
            Vec::new()
        } else {
            args.mod_steps.clone()
        },
        mod_fit_steps: args.mod_fit_steps,
        grid_lambdas,
        grid_bpps: if args.jpeg_only {
            Vec::new()
        } else {
            args.grid_bpps.clone()
        },
        grid_psnrs: if args.jpeg_only {
            Vec::new()
        } else {
            args.grid_psnrs.clone()
        },
        grid_fit_steps: args.grid_fit_steps.or(args.steps.filter(|_| grid_presets)),
        shared_lambdas: if args.jpeg_only {
            Vec::new()
        } else {
            args.shared_lambdas.clone()
        },
        shared_base: match &args.shared_base {
            Some(p) => super::base_choice(&p.to_string_lossy())?,
            None => inr::BaseChoice::Default,
        },
        shared_frozen: args.shared_frozen_output,
        mod_base: match &args.mod_base {
            Some(p) => super::load_bases(std::slice::from_ref(p))?.pop(),
            None => None,
        },
        base: super::base_choice(&args.base)?,
    };
    // Fail before hours of work if the report would overwrite files.
    if !args.force {
        let names = rd::planned_report_files(&args.data_dir, &cfg)?;
        rd::check_outputs_free(&args.output, &names)?;
    }
    let bar = super::counting_bar(quiet);
    let report = rd::run_rd(&args.data_dir, &cfg, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        match p.fit {
            Some((step, steps)) => bar.set_message(format!(
                "{} {} {} (fit {step}/{steps})",
                p.image, p.codec, p.param
            )),
            None => bar.set_message(format!("{} {} {}", p.image, p.codec, p.param)),
        }
    })
    .with_context(|| format!("rate-distortion sweep over {}", args.data_dir.display()))?;
    bar.finish_and_clear();
    rd::write_report(&report, &args.output, args.force, args.anchors)
        .with_context(|| format!("writing the report into {}", args.output.display()))?;
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            report_dir: &'a std::path::Path,
            codecs: &'a [rd::CodecSummary],
            bd: &'a [rd::BdResult],
        }
        let out = Out {
            report_dir: &args.output,
            codecs: &report.codecs,
            bd: &report.bd,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !quiet {
        for c in &report.codecs {
            println!("{} ({} images)", c.name, report.images.len());
            let r = &c.results;
            for i in 0..r.bpp.len() {
                println!(
                    "  {:>8}  {:.4} bpp  {:.2} dB  enc {:.3}s  dec {:.3}s",
                    r.param[i], r.bpp[i], r.psnr[i], r.encode_s[i], r.decode_s[i]
                );
            }
        }
        print_bd(&report.bd);
        println!("report written to {}", args.output.display());
    }
    Ok(())
}

/// `inr rd --modality audio`.
fn run_audio(args: RdArgs, quiet: bool, json: bool, threads: Option<usize>) -> anyhow::Result<()> {
    let image_only = [
        (args.jpeg_qualities.is_some(), "--jpeg-qualities"),
        (args.jpeg_only, "--jpeg-only"),
        (args.no_mozjpeg, "--no-mozjpeg"),
        (!args.mod_steps.is_empty(), "--mod-steps"),
        (args.mod_fit_steps.is_some(), "--mod-fit-steps"),
        (args.mod_base.is_some(), "--mod-base"),
        (!args.grid_bpps.is_empty(), "--grid-bpps"),
        (!args.grid_psnrs.is_empty(), "--grid-psnrs"),
        (!args.shared_lambdas.is_empty(), "--shared-lambdas"),
        (args.shared_base.is_some(), "--shared-base"),
        (args.mode.is_some(), "--mode"),
    ];
    if let Some((_, flag)) = image_only.iter().find(|(set, _)| *set) {
        anyhow::bail!("{flag} applies to images only (not to --modality audio)");
    }
    let baselines = match &args.baselines {
        Some(p) => {
            let bytes = super::read_limited(p, 64 << 20)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", p.display()))?;
            rd::audio::parse_baselines(&text).with_context(|| format!("reading {}", p.display()))?
        }
        None => Vec::new(),
    };
    let cfg = rd::audio::AudioRdConfig {
        presets: if args.no_presets {
            Vec::new()
        } else {
            args.presets.clone()
        },
        base: super::base_choice(&args.base)?,
        steps: args.steps,
        seed: args.seed,
        threads,
        limit: args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        baselines,
        published_anchors: args.anchors,
        grid_lambdas: args.grid_lambdas.clone(),
        grid_steps: args.grid_fit_steps,
    };
    if !args.force {
        let names = rd::audio::planned_audio_report_files(&args.data_dir, &cfg)?;
        rd::check_outputs_free(&args.output, &names)?;
    }
    let bar = super::counting_bar(quiet);
    let report = rd::audio::run_audio_rd(&args.data_dir, &cfg, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        match p.fit {
            Some((step, steps)) => {
                bar.set_message(format!("{} {} (window {step}/{steps})", p.clip, p.param));
            }
            None => bar.set_message(format!("{} {}", p.clip, p.param)),
        }
    })
    .with_context(|| {
        format!(
            "audio rate-distortion sweep over {}",
            args.data_dir.display()
        )
    })?;
    bar.finish_and_clear();
    rd::audio::write_audio_report(&report, &args.output, args.force, args.anchors)
        .with_context(|| format!("writing the report into {}", args.output.display()))?;
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            report_dir: &'a std::path::Path,
            codecs: &'a [rd::audio::AudioCodecSummary],
            bd: &'a [rd::BdResult],
            unmatched_baseline_clips: &'a [String],
        }
        let out = Out {
            report_dir: &args.output,
            codecs: &report.codecs,
            bd: &report.bd,
            unmatched_baseline_clips: &report.unmatched_baseline_clips,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !quiet {
        if !report.unmatched_baseline_clips.is_empty() {
            eprintln!(
                "note: baseline clips with no WAV file here (ignored): {}",
                report.unmatched_baseline_clips.join(", ")
            );
        }
        for c in &report.codecs {
            println!("{} ({} clips)", c.name, report.clips.len());
            let r = &c.results;
            for i in 0..r.kbps.len() {
                let enc = r.encode_s_per_audio_s[i]
                    .map(|s| format!("  enc {s:.3} s per s of audio"))
                    .unwrap_or_default();
                println!(
                    "  {:>8}  {:.2} kbit/s  PSNR {:.2} dB  SNR {:.2} dB{enc}",
                    r.param[i], r.kbps[i], r.psnr[i], r.snr[i]
                );
            }
        }
        print_bd(&report.bd);
        println!("report written to {}", args.output.display());
    }
    Ok(())
}

fn print_bd(bd: &[rd::BdResult]) {
    for b in bd {
        match (b.bd_rate_percent, b.bd_psnr_db) {
            (Some(r), Some(p)) => println!(
                "BD vs {}: {}: BD-rate {r:+.2} %, BD-PSNR {p:+.3} dB",
                b.anchor, b.codec
            ),
            _ => println!(
                "BD vs {}: {}: not computable ({})",
                b.anchor,
                b.codec,
                b.error.as_deref().unwrap_or("unknown")
            ),
        }
    }
}

/// The grid mode's rate weights of `presets` (`inr encode`'s λ per preset), in that order.
fn grid_preset_lambdas(presets: &[Preset]) -> Vec<f32> {
    presets
        .iter()
        .filter_map(|&p| {
            let name = super::encode::preset_name(p);
            inr::GRID_PRESET_LAMBDAS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, l)| l)
        })
        .collect()
}
