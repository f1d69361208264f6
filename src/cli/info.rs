//! `inr info`.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

use super::{path_str, print_json, read_inr, say, Ctx};

/// Show the header, architecture and section sizes of a .inr file without decoding it.
///
/// Show what a .inr file contains without decoding the network: header, architecture,
/// parameter count, quantization bits and section sizes, plus the file size and bpp.
/// Also reads .inrb base files: id, architecture and how the base was trained.
///
/// With --json: `{"file", "bytes", "bpp", "info": {...}}`, where `info` is the parsed header
/// and `bpp` is null when the header does not give the image size.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Input .inr file.
    #[arg(value_name = "IN.inr")]
    pub input: PathBuf,
    #[command(flatten)]
    pub limits: super::LimitArgs,
    /// A base file (.inrb) the input may have been coded from, besides the embedded ones
    /// (repeatable): the weight statistics of a file whose masks are its base's support
    /// (codec-spec §4.6.2) need it.
    #[arg(long = "base", value_name = "FILE.inrb")]
    pub bases: Vec<PathBuf>,
}

/// The coded image size, when the header exposes top-level `width` and `height` fields.
fn coded_size(info: &Value) -> Option<(u32, u32)> {
    let o = info.as_object()?;
    let w = u32::try_from(o.get("width")?.as_u64()?).ok()?;
    let h = u32::try_from(o.get("height")?.as_u64()?).ok()?;
    Some((w, h))
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// Human-readable lines for a JSON value: `key: value`, nested objects indented, arrays of
/// scalars joined with commas, arrays of objects one `- k=v, ...` line per element.
fn lines(v: &Value, indent: usize, out: &mut Vec<String>) {
    let pad = " ".repeat(indent);
    let Some(obj) = v.as_object() else {
        if let Some(s) = scalar(v) {
            out.push(format!("{pad}{s}"));
        }
        return;
    };
    for (k, v) in obj {
        match v {
            Value::Object(_) => {
                out.push(format!("{pad}{k}:"));
                lines(v, indent + 2, out);
            }
            Value::Array(items) if items.iter().all(|i| scalar(i).is_some()) => {
                let items: Vec<String> = items.iter().filter_map(scalar).collect();
                out.push(format!("{pad}{k}: {}", items.join(", ")));
            }
            Value::Array(items) => {
                out.push(format!("{pad}{k}:"));
                for item in items {
                    let fields: Vec<String> = match item.as_object() {
                        Some(o) => o
                            .iter()
                            .map(|(k, v)| match scalar(v) {
                                Some(s) => format!("{k}={s}"),
                                None => format!("{k}={v}"),
                            })
                            .collect(),
                        None => vec![item.to_string()],
                    };
                    out.push(format!("{pad}  - {}", fields.join(", ")));
                }
            }
            _ => out.push(format!("{pad}{k}: {}", scalar(v).unwrap_or_default())),
        }
    }
}

fn base_info(args: &InfoArgs, bytes: &[u8], ctx: &Ctx) -> anyhow::Result<()> {
    let b = inr::base::Base::from_bytes(bytes, &inr::format::Limits::default())
        .with_context(|| format!("cannot read base file {}", args.input.display()))?;
    let description: Value =
        serde_json::from_str(&b.description).unwrap_or(Value::String(b.description.clone()));
    let info = serde_json::json!({
        "kind": "base",
        "id": format!("{:016x}", b.id()),
        "arch": b.arch,
        // "weights" as before version-4 bases, for scripts.
        "base_kind": match b.kind() { "weight" => "weights", k => k },
        "modality": if b.is_audio() { "audio" } else { "image" },
        "audio_window": b.audio_window,
        "modulation": b.modulation,
        "network_params": b.arch.num_params(),
        "num_params": b.params.len(),
        "embedded": inr::base::embedded().iter().any(|e| e.id() == b.id()),
        "description": description,
    });
    if ctx.json {
        return print_json(&serde_json::json!({
            "file": path_str(&args.input),
            "bytes": bytes.len(),
            "info": info,
        }));
    }
    let mut out = vec![format!("file: {}", args.input.display())];
    out.push(format!("bytes: {}", bytes.len()));
    lines(&info, 0, &mut out);
    say(out.join("\n"))
}

pub fn run(args: InfoArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let limits = args.limits.limits();
    let bytes = read_inr(&args.input, &limits)?;
    if bytes.starts_with(&inr::base::BASE_MAGIC) {
        return base_info(&args, &bytes, ctx);
    }
    let info = inr::inspect_with(&bytes, &limits).map_err(|e| {
        super::format_context(
            e,
            format!("cannot read the header of {}", args.input.display()),
        )
    })?;
    let info = serde_json::to_value(&info)?;
    let bases = super::load_bases(&args.bases)?;
    let weights = weight_stats(&bytes, &bases);
    let file_bytes = bytes.len() as u64;
    let bpp = match coded_size(&info) {
        Some((w, h)) => inr::metrics::bpp(file_bytes, w, h).ok(),
        None => None,
    };
    if ctx.json {
        return print_json(&serde_json::json!({
            "file": path_str(&args.input),
            "bytes": file_bytes,
            "bpp": bpp,
            "info": info,
            "weights": weights,
        }));
    }
    let mut out = vec![format!("file: {}", args.input.display())];
    out.push(format!("bytes: {file_bytes}"));
    if let Some(b) = bpp {
        out.push(format!("bpp: {b:.4}"));
    }
    if let Some(m) = info.get("modulation").filter(|m| !m.is_null()) {
        // Modulation-mode file (codec-spec §12): say so before the field list.
        out.push(format!(
            "mode: modulations (latent grid {}x{}, {} channels, cell {} {}, {} latents)",
            m["grid_w"],
            m["grid_h"],
            m["latent_dim"],
            m["cell"],
            if info["modality"] == "audio" {
                "frames"
            } else {
                "px"
            },
            m["latents"]
        ));
    }
    if let Some(g) = info.get("grid").filter(|g| !g.is_null()) {
        // Grid-mode file (codec-spec §13).
        let pred = if g["predictor"].is_null() {
            ""
        } else {
            ", predicted latents"
        };
        let synth = match info.get("base_id").and_then(Value::as_str) {
            Some(id) => format!(
                "shared synthesis of base {id}, {} params{}",
                g["synth_params"],
                // Flag bit 7 (codec-spec §13.8): the output layer is coded in the file.
                if info["flags"].as_u64().is_some_and(|f| f & 0x80 != 0) {
                    ", output layer coded"
                } else {
                    ""
                }
            ),
            None => format!("synthesis {} params", g["synth_params"]),
        };
        let up = match g["upsampling"].as_str() {
            Some("bilinear") | None => String::new(),
            Some(u) => format!(", {u} upsampling"),
        };
        // Flag bit 12 (codec-spec §13.9): the latents are coded with the file's ARM; bit 13
        // (§5.11.1): with its prior models.
        let arm = match g.get("arm") {
            Some(a) if !a.is_null() => format!(
                ", ARM of width {} ({} params in {} bytes{})",
                a["width"],
                a["params"],
                a["stream_bytes"],
                if a["prior_models"] == true {
                    ", prior models"
                } else {
                    ""
                }
            ),
            _ => String::new(),
        };
        out.push(format!(
            "mode: grid ({} latent levels, {} latents in {} bytes ({} contexts), \
             {synth}{pred}{up}{arm})",
            g["levels"], g["latents"], g["latent_stream_bytes"], g["latent_contexts"]
        ));
    }
    if info["modality"] == "image" {
        // What the outputs are (codec-spec §8.3): alpha only in grid files.
        let kind = match info["arch"]["out_channels"].as_u64() {
            Some(1) => Some("gray"),
            Some(2) => Some("gray + alpha"),
            Some(3) => Some("RGB"),
            Some(4) => Some("RGBA"),
            _ => None,
        };
        if let Some(k) = kind {
            out.push(format!("pixels: {k}"));
        }
    }
    lines(&info, 0, &mut out);
    if !weights.is_null() {
        out.push("weights (decoded):".into());
        lines(&weights, 2, &mut out);
    }
    say(out.join("\n"))
}

/// Per-tensor statistics of the decoded symbols (bits, values, non-zero values, coded bytes
/// when the tensor is entropy-coded alone), and the non-zero fraction ("density") of the
/// hidden matrices `W_1 .. W_D`, whether the zeros are coded through the mask section or as
/// plain symbols. `null` when the payload does not decode (or when the masks are the support
/// of a base, §4.6.2, that is neither embedded nor in `bases`).
fn weight_stats(bytes: &[u8], bases: &[inr::base::Base]) -> Value {
    if inr::format::is_modulation_file(bytes) {
        return latent_stats(bytes);
    }
    if inr::format::is_grid_file(bytes) {
        return grid_stats(bytes);
    }
    let limits = inr::format::Limits::default();
    let f = match inr::format::read_file(bytes, &limits) {
        Err(inr::format::FormatError::BaseMasksNeedBase { id }) => {
            let Ok(b) = inr::base::find(id, bases) else {
                return Value::Null;
            };
            inr::format::read_file_with_base(bytes, &limits, Some(&b.params))
        }
        other => other,
    };
    let Ok(f) = f else {
        return Value::Null;
    };
    let (mut nz_hidden, mut n_hidden) = (0usize, 0usize);
    let tensors: Vec<Value> = f
        .tensors
        .iter()
        .enumerate()
        .map(|(t, q)| {
            let nz = q.symbols.iter().filter(|&&s| s != 0).count();
            if t >= 2 && t % 2 == 0 {
                nz_hidden += nz;
                n_hidden += q.symbols.len();
            }
            let alone = inr::entropy::estimate_bits(
                &[q.symbols.as_slice()],
                inr::format::max_abs_for_bits(q.bits),
            )
            .map_or(Value::Null, |b| Value::from(b / 8));
            serde_json::json!({
                "tensor": t,
                "bits": q.bits,
                "values": q.symbols.len(),
                "nonzero": nz,
                "bytes_alone": alone,
            })
        })
        .collect();
    serde_json::json!({
        "hidden_density": if n_hidden == 0 { 1.0 } else { nz_hidden as f64 / n_hidden as f64 },
        "tensors": tensors,
    })
}

/// Per-channel statistics of the decoded latents of a modulation-mode file (codec-spec §12):
/// bits, values, non-zero values. `null` when the payload does not decode.
fn latent_stats(bytes: &[u8]) -> Value {
    let Ok(f) = inr::format::read_mod_file(bytes, &inr::format::Limits::default()) else {
        return Value::Null;
    };
    let channels: Vec<Value> = f
        .channels
        .iter()
        .enumerate()
        .map(|(c, q)| {
            serde_json::json!({
                "channel": c,
                "bits": q.bits,
                "values": q.symbols.len(),
                "nonzero": q.symbols.iter().filter(|&&s| s != 0).count(),
            })
        })
        .collect();
    serde_json::json!({ "channels": channels })
}

/// Per-tensor statistics of a grid-mode file (codec-spec §13): the synthesis tensors, then
/// the latent levels (bits, values, non-zero values). `null` when the payload does not decode.
fn grid_stats(bytes: &[u8]) -> Value {
    let Ok(f) = inr::format::read_grid_file(bytes, &inr::format::Limits::default()) else {
        return Value::Null;
    };
    // A shared synthesis (codec-spec §13.8) is not in the file, except its output layer with
    // flag bit 7.
    let n_synth = f
        .tensors
        .len()
        .saturating_sub(usize::from(f.arch.coord_dims));
    let tensors: Vec<Value> = f
        .tensors
        .iter()
        .enumerate()
        .map(|(t, q)| {
            serde_json::json!({
                "tensor": t,
                "kind": if t < n_synth { "synthesis" } else { "latent level" },
                "bits": q.bits,
                "values": q.symbols.len(),
                "nonzero": q.symbols.iter().filter(|&&s| s != 0).count(),
            })
        })
        .collect();
    serde_json::json!({ "tensors": tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_values() {
        let v = serde_json::json!({
            "version": 1,
            "width": 24,
            "height": 17,
            "arch": {"width": 32, "depth": 3},
            "bits": [8, 6],
            "sections": [{"name": "weights", "bytes": 100}],
            "meta": null,
        });
        assert_eq!(coded_size(&v), Some((24, 17)));
        let mut out = Vec::new();
        lines(&v, 0, &mut out);
        for want in [
            "version: 1",
            "arch:",
            "  width: 32",
            "bits: 8, 6",
            "sections:",
            "meta: -",
        ] {
            assert!(out.iter().any(|l| l == want), "{want:?} not in {out:?}");
        }
        // Key order depends on serde_json's `preserve_order` feature; check the fields only.
        assert!(
            out.iter().any(|l| l.starts_with("  - ")
                && l.contains("name=weights")
                && l.contains("bytes=100")),
            "{out:?}"
        );
        assert_eq!(coded_size(&serde_json::json!({"arch": {"width": 3}})), None);
    }
}
