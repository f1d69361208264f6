//! Rate–distortion plots (mean PSNR against bpp, one curve per codec) with plotters.

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

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
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
        .x_desc("rate (bits per pixel)")
        .y_desc("PSNR (dB, RGB)")
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
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, PLOT_SIZE).into_drawing_area();
        draw(root, title, curves)?;
    }
    Ok(s)
}

/// Render the curves as a PNG file (bytes).
///
/// # Errors
/// A message from plotters or the PNG encoder.
pub fn render_png(title: &str, curves: &[Curve]) -> Result<Vec<u8>, String> {
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, PLOT_SIZE).into_drawing_area();
        draw(root, title, curves)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or("plot buffer has the wrong size")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|x| x.to_string())?;
    Ok(out.into_inner())
}
