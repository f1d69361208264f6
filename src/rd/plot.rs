//! Rate–distortion plots (mean PSNR against bpp, one curve per codec) with plotters, and
//! curves of any two columns of a CSV table (`inr plot`, [`csv_curves`]).

use plotters::prelude::*;

/// One curve to draw.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    /// `(bpp, psnr)` points; drawn sorted by bpp.
    pub points: Vec<(f64, f64)>,
    /// Published reference curves are drawn dashed.
    pub dashed: bool,
}

/// Plot size in pixels.
pub const PLOT_SIZE: (u32, u32) = (960, 640);

/// Axis titles of the rate–distortion plots.
pub const RD_AXES: (&str, &str) = ("rate (bits per pixel)", "PSNR (dB, RGB)");

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    axes: (&str, &str),
    curves: &[Curve],
) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let all = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 20.0, 40.0);
    }
    let xpad = ((x1 - x0) * 0.05).max(0.01);
    let ypad = ((y1 - y0) * 0.05).max(0.5);
    let (x0, x1) = ((x0 - xpad).max(0.0), x1 + xpad);
    let (y0, y1) = (y0 - ypad, y1 + ypad);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(&color).stroke_width(2);
        let mut pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let anno = if c.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                .map_err(|x| e(&x))?
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(|x| e(&x))?
        };
        anno.label(c.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, style.filled())))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Render the curves as an SVG document.
///
/// # Errors
/// A message from plotters (e.g. no usable font for the labels).
pub fn render_svg(title: &str, curves: &[Curve]) -> Result<String, String> {
    render_svg_axes(title, RD_AXES, curves)
}

/// [`render_svg`] with other axis titles `(x, y)`.
///
/// # Errors
/// As [`render_svg`].
pub fn render_svg_axes(
    title: &str,
    axes: (&str, &str),
    curves: &[Curve],
) -> Result<String, String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, PLOT_SIZE).into_drawing_area();
        draw(root, title, axes, curves)?;
    }
    Ok(s)
}

/// Render the curves as a PNG file (bytes).
///
/// # Errors
/// A message from plotters or the PNG encoder.
pub fn render_png(title: &str, curves: &[Curve]) -> Result<Vec<u8>, String> {
    render_png_axes(title, RD_AXES, curves)
}

/// [`render_png`] with other axis titles `(x, y)`.
///
/// # Errors
/// As [`render_png`].
pub fn render_png_axes(
    title: &str,
    axes: (&str, &str),
    curves: &[Curve],
) -> Result<Vec<u8>, String> {
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, PLOT_SIZE).into_drawing_area();
        draw(root, title, axes, curves)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or("plot buffer has the wrong size")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|x| x.to_string())?;
    Ok(out.into_inner())
}

/// Curves from a CSV table with a header row (comma-separated, no quoting, as the benchmark
/// scripts and `inr rd` write it): one curve per distinct value of column `group` (one curve
/// without it), one point per distinct value of column `by` within a curve (every row without
/// it) at the means of columns `x` and `y` over those rows. Curves and points keep the order
/// in which their first row appears.
///
/// # Errors
/// A missing column, a row with the wrong number of fields, a non-numeric `x`/`y` value, or
/// no data rows.
pub fn csv_curves(
    text: &str,
    x: &str,
    y: &str,
    group: Option<&str>,
    by: Option<&str>,
) -> Result<Vec<Curve>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty CSV")?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("no column {name:?} (columns: {})", header.join(", ")))
    };
    let (xi, yi) = (col(x)?, col(y)?);
    let gi = group.map(col).transpose()?;
    let bi = by.map(col).transpose()?;
    // (curve label, [(point key, sum x, sum y, count)])
    type Sums = (String, f64, f64, usize);
    let mut acc: Vec<(String, Vec<Sums>)> = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != header.len() {
            return Err(format!(
                "data row {}: {} fields, the header has {}",
                n + 1,
                f.len(),
                header.len()
            ));
        }
        let num = |i: usize| {
            f[i].parse::<f64>()
                .map_err(|_| format!("data row {}: {:?} is not a number", n + 1, f[i]))
        };
        let (vx, vy) = (num(xi)?, num(yi)?);
        let label = gi.map_or_else(|| y.to_string(), |g| f[g].to_string());
        let key = bi.map_or_else(|| format!("#{n}"), |b| f[b].to_string());
        let ci = match acc.iter().position(|(l, _)| *l == label) {
            Some(i) => i,
            None => {
                acc.push((label, Vec::new()));
                acc.len() - 1
            }
        };
        let pts = &mut acc[ci].1;
        match pts.iter_mut().find(|p| p.0 == key) {
            Some(p) => {
                p.1 += vx;
                p.2 += vy;
                p.3 += 1;
            }
            None => pts.push((key, vx, vy, 1)),
        }
    }
    if acc.is_empty() {
        return Err("no data rows".into());
    }
    Ok(acc
        .into_iter()
        .map(|(label, pts)| Curve {
            label,
            points: pts
                .into_iter()
                .map(|(_, sx, sy, c)| (sx / c as f64, sy / c as f64))
                .collect(),
            dashed: false,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "image,base,steps,psnr_db,encode_s\n\
                       a,none,250,20,10\n\
                       b,none,250,22,14\n\
                       a,none,500,24,20\n\
                       a,default,250,21,11\n";

    #[test]
    fn groups_and_averages_rows() {
        let c = csv_curves(CSV, "encode_s", "psnr_db", Some("base"), Some("steps")).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].label, "none");
        assert_eq!(c[0].points, vec![(12.0, 21.0), (20.0, 24.0)]);
        assert_eq!(c[1].label, "default");
        assert_eq!(c[1].points, vec![(11.0, 21.0)]);
        let all = csv_curves(CSV, "steps", "psnr_db", None, None).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].points.len(), 4);
        assert!(render_svg_axes("t", ("s", "dB"), &c)
            .unwrap()
            .contains("<svg"));
    }

    #[test]
    fn bad_tables_are_errors() {
        assert!(csv_curves(CSV, "seconds", "psnr_db", None, None)
            .unwrap_err()
            .contains("no column \"seconds\""));
        assert!(csv_curves("", "a", "b", None, None).is_err());
        assert!(csv_curves("a,b\n", "a", "b", None, None).is_err());
        assert!(csv_curves("a,b\n1\n", "a", "b", None, None)
            .unwrap_err()
            .contains("fields"));
        assert!(csv_curves("a,b\n1,x\n", "a", "b", None, None)
            .unwrap_err()
            .contains("not a number"));
    }
}
