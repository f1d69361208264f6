//! `inr plot`: curves of two columns of a CSV table (benchmark scripts, `inr rd` CSVs) as an
//! SVG or PNG chart.

use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `inr plot`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example (PSNR against encode seconds, one curve per start, one point \
                        per step count averaged over the images):\n  inr plot \
                        bench-results/time-kodim13-16/small.csv -o time.svg --x encode_s --y \
                        psnr_db --group base --by steps"
)]
pub struct PlotArgs {
    /// CSV table with a header row (comma-separated, no quoting)
    pub csv: PathBuf,
    /// Output chart: .svg or .png (by extension)
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Column for the x axis
    #[arg(long)]
    pub x: String,
    /// Column for the y axis
    #[arg(long)]
    pub y: String,
    /// Column whose values name the curves (default: one curve)
    #[arg(long)]
    pub group: Option<String>,
    /// Column whose equal values make one point, at the means of x and y over those rows
    /// (default: one point per row)
    #[arg(long)]
    pub by: Option<String>,
    /// Chart title (default: "Y vs X")
    #[arg(long)]
    pub title: Option<String>,
    /// Overwrite OUT if it exists
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: PlotArgs, ctx: &super::Ctx) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.csv)
        .with_context(|| format!("cannot read {}", args.csv.display()))?;
    let curves = inr::rd::plot::csv_curves(
        &text,
        &args.x,
        &args.y,
        args.group.as_deref(),
        args.by.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.csv.display()))?;
    let title = args
        .title
        .clone()
        .unwrap_or_else(|| format!("{} vs {}", args.y, args.x));
    let axes = (args.x.as_str(), args.y.as_str());
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bytes = match ext.as_deref() {
        Some("svg") => inr::rd::plot::render_svg_axes(&title, axes, &curves)
            .map_err(anyhow::Error::msg)?
            .into_bytes(),
        Some("png") => {
            inr::rd::plot::render_png_axes(&title, axes, &curves).map_err(anyhow::Error::msg)?
        }
        _ => anyhow::bail!(
            "{}: the output must end in .svg or .png",
            args.output.display()
        ),
    };
    inr::util::write_atomic(&args.output, &bytes, args.force)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if ctx.json {
        let v = serde_json::json!({
            "output": args.output.display().to_string(),
            "curves": curves.iter().map(|c| serde_json::json!({
                "label": c.label, "points": c.points,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else if !ctx.quiet {
        eprintln!(
            "wrote {} ({} curves, {} points)",
            args.output.display(),
            curves.len(),
            curves.iter().map(|c| c.points.len()).sum::<usize>()
        );
    }
    Ok(())
}
