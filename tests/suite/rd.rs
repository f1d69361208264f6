//! Rate–distortion tooling: Bjøntegaard metrics, the JPEG baseline and the `rd` sweep.

use std::path::{Path, PathBuf};

use inr::media::Image;
use inr::rd::bd::{bd_psnr, bd_rate, BdError, RdPoint};
use inr::rd::jpeg::{decode_jpeg, encode_jpeg, JpegVariant};
use inr::rd::{run_rd, write_report, RdConfig};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn load(path: &Path) -> Image {
    let img = image::open(path).unwrap().to_rgb8();
    Image {
        width: img.width(),
        height: img.height(),
        channels: 3,
        data: img.into_raw(),
    }
}

fn psnr(a: &Image, b: &Image) -> f64 {
    assert_eq!(a.data.len(), b.data.len());
    let se: f64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    10.0 * (255.0f64.powi(2) / (se / a.data.len() as f64)).log10()
}

/// A JPEG-like curve: PSNR rises with log-rate, slightly concave.
fn curve() -> Vec<RdPoint> {
    [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
        .iter()
        .map(|&r: &f64| RdPoint {
            rate: r,
            psnr: 30.0 + 8.0 * r.log10() - 0.7 * r.log10().powi(2),
        })
        .collect()
}

#[test]
fn bd_of_curve_against_itself_is_zero() {
    let c = curve();
    assert!(bd_rate(&c, &c).unwrap().abs() < 1e-9);
    assert!(bd_psnr(&c, &c).unwrap().abs() < 1e-9);
}

#[test]
fn bd_psnr_of_shifted_curve_is_the_shift() {
    let a = curve();
    let t: Vec<RdPoint> = a
        .iter()
        .map(|p| RdPoint {
            rate: p.rate,
            psnr: p.psnr + 1.0,
        })
        .collect();
    let d = bd_psnr(&a, &t).unwrap();
    assert!((d - 1.0).abs() < 1e-6, "BD-PSNR {d}");
    // A better curve saves rate.
    assert!(bd_rate(&a, &t).unwrap() < -10.0);
    // And the other way round.
    assert!((bd_psnr(&t, &a).unwrap() + 1.0).abs() < 1e-6);
}

#[test]
fn bd_rate_of_scaled_rates_is_minus_ten_percent() {
    let a = curve();
    let t: Vec<RdPoint> = a
        .iter()
        .map(|p| RdPoint {
            rate: p.rate * 0.9,
            psnr: p.psnr,
        })
        .collect();
    let r = bd_rate(&a, &t).unwrap();
    assert!((r + 10.0).abs() < 1e-6, "BD-rate {r}");
    assert!(bd_psnr(&a, &t).unwrap() > 0.0);
}

#[test]
fn bd_non_overlapping_curves_are_an_error() {
    let a = curve();
    let t: Vec<RdPoint> = a
        .iter()
        .map(|p| RdPoint {
            rate: p.rate * 1000.0,
            psnr: p.psnr + 50.0,
        })
        .collect();
    assert!(matches!(bd_rate(&a, &t), Err(BdError::NoOverlap { .. })));
    assert!(matches!(bd_psnr(&a, &t), Err(BdError::NoOverlap { .. })));
}

#[test]
fn bd_rejects_degenerate_curves() {
    let a = curve();
    let one = [RdPoint {
        rate: 1.0,
        psnr: 30.0,
    }];
    assert!(matches!(
        bd_rate(&a, &one),
        Err(BdError::TooFewPoints { .. })
    ));
    let bad = [
        RdPoint {
            rate: 0.0,
            psnr: 30.0,
        },
        RdPoint {
            rate: 1.0,
            psnr: f64::NAN,
        },
    ];
    assert_eq!(bd_psnr(&a, &bad), Err(BdError::BadValue));
}

#[test]
fn bd_with_few_points_uses_lower_degree() {
    // Two straight lines in (log-rate, PSNR), 1 dB apart: exact with 2 or 3 points.
    let line = |off: f64, n: usize| -> Vec<RdPoint> {
        (0..n)
            .map(|i| {
                let r = 0.25 * 2f64.powi(i as i32);
                RdPoint {
                    rate: r,
                    psnr: 28.0 + off + 6.0 * r.log10(),
                }
            })
            .collect()
    };
    let d = bd_psnr(&line(0.0, 5), &line(1.0, 3)).unwrap();
    assert!((d - 1.0).abs() < 1e-6, "{d}");
    let d = bd_psnr(&line(0.0, 2), &line(1.0, 2)).unwrap();
    assert!((d - 1.0).abs() < 1e-6, "{d}");
}

#[test]
fn jpeg_rate_is_monotone_in_quality_and_psnr_is_sane() {
    let img = load(&shared().join("data/images/small/kodim05_center64.png"));
    for v in [JpegVariant::Turbo, JpegVariant::Moz] {
        let mut last = (0usize, 0.0f64);
        for q in [5u8, 20, 40, 60, 80, 95] {
            let bytes = encode_jpeg(&img, q, v).unwrap();
            assert_eq!(&bytes[..2], &[0xFF, 0xD8], "JPEG SOI marker");
            let dec = decode_jpeg(&bytes, 3).unwrap();
            assert_eq!((dec.width, dec.height), (img.width, img.height));
            let p = psnr(&img, &dec);
            assert!(
                bytes.len() > last.0,
                "{v:?} q{q}: {} <= {}",
                bytes.len(),
                last.0
            );
            assert!(p > last.1, "{v:?} q{q}: psnr {p} <= {}", last.1);
            assert!((15.0..60.0).contains(&p));
            last = (bytes.len(), p);
        }
    }
}

#[test]
fn jpeg_rejects_bad_input_without_panicking() {
    let img = Image {
        width: 4,
        height: 4,
        channels: 3,
        data: vec![0; 10],
    };
    assert!(encode_jpeg(&img, 50, JpegVariant::Turbo).is_err());
    let ok = Image {
        width: 4,
        height: 4,
        channels: 3,
        data: vec![128; 48],
    };
    assert!(encode_jpeg(&ok, 0, JpegVariant::Turbo).is_err());
    assert!(encode_jpeg(&ok, 101, JpegVariant::Turbo).is_err());
    let bytes = encode_jpeg(&ok, 50, JpegVariant::Turbo).unwrap();
    for cut in [0, 2, 20, bytes.len() / 2] {
        assert!(decode_jpeg(&bytes[..cut], 3).is_err(), "cut at {cut}");
    }
    assert!(decode_jpeg(b"not a jpeg at all", 3).is_err());
}

/// Reads `shared/baselines/kodak_dev.csv` rows for codec `jpeg`.
fn baseline() -> Vec<(String, u8, u64, f64)> {
    let text = std::fs::read_to_string(shared().join("baselines/kodak_dev.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1] == "jpeg").then(|| {
                (
                    f[0].to_string(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                    f[5].parse().unwrap(),
                )
            })
        })
        .collect()
}

/// The `jpeg` variant reproduces Pillow + libjpeg-turbo within 0.1 dB (and within 1% of the
/// bytes) on a few Kodak images at every baseline quality. Prints the deltas.
#[test]
fn jpeg_matches_shared_libjpeg_turbo_baseline() {
    let rows = baseline();
    let mut worst = 0.0f64;
    for name in ["kodim01", "kodim04", "kodim13"] {
        let img = load(&shared().join(format!("data/images/kodak/{name}.png")));
        for (_, q, bytes, p) in rows.iter().filter(|r| r.0 == name) {
            let enc = encode_jpeg(&img, *q, JpegVariant::Turbo).unwrap();
            let ours = psnr(&img, &decode_jpeg(&enc, 3).unwrap());
            let dp = ours - p;
            let db = enc.len() as f64 / *bytes as f64 - 1.0;
            println!("{name} q{q}: bytes {} vs {bytes} ({:+.3}%), psnr {ours:.4} vs {p:.4} ({dp:+.4} dB)", enc.len(), db * 100.0);
            assert!(dp.abs() < 0.1, "{name} q{q}: {dp:+.4} dB");
            assert!(db.abs() < 0.01, "{name} q{q}: bytes {:+.3}%", db * 100.0);
            worst = worst.max(dp.abs());
        }
    }
    println!("worst |delta| = {worst:.4} dB");
}

fn tiny_images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = load(&shared().join("data/images/small/kodim07_center128.png"));
    // Two 48x40 crops, plus a file that is not an image (ignored).
    for (i, (x0, y0)) in [(0u32, 0u32), (60, 70)].iter().enumerate() {
        let crop = image::RgbImage::from_fn(48, 40, |x, y| {
            let o = (((y0 + y) * src.width + x0 + x) * 3) as usize;
            image::Rgb([src.data[o], src.data[o + 1], src.data[o + 2]])
        });
        crop.save(dir.join(format!("img{i}.png"))).unwrap();
    }
    std::fs::write(dir.join("README.txt"), "not an image").unwrap();
}

fn jpeg_only() -> RdConfig {
    RdConfig {
        presets: vec![],
        jpeg_qualities: vec![10, 30, 50, 70, 90],
        ..RdConfig::default()
    }
}

#[test]
fn rd_jpeg_only_writes_json_csv_and_plots() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    tiny_images(&data);
    let out = t.path().join("report");
    let mut calls = 0;
    let report = run_rd(&data, &jpeg_only(), &mut |p| {
        calls += 1;
        assert_eq!(p.fit, None);
        assert_eq!(p.done, calls);
        assert_eq!(p.total, 20);
    })
    .unwrap();
    assert_eq!(calls, 20);
    write_report(&report, &out, false, true).unwrap();

    // rd.json: CompressAI-style entries per codec, means over both images.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("rd.json")).unwrap()).unwrap();
    let codecs = json["codecs"].as_array().unwrap();
    let names: Vec<&str> = codecs.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["jpeg", "mozjpeg"]);
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for c in codecs {
        assert!(!c["description"].as_str().unwrap().is_empty());
        let r = &c["results"];
        for key in ["bpp", "psnr", "encode_s", "decode_s"] {
            assert_eq!(r[key].as_array().unwrap().len(), 5, "{key}");
        }
        for k in 0..5 {
            let per: Vec<f64> = images
                .iter()
                .map(|i| {
                    i["points"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|p| p["codec"] == c["name"])
                        .nth(k)
                        .unwrap()["psnr"]
                        .as_f64()
                        .unwrap()
                })
                .collect();
            let mean = r["psnr"][k].as_f64().unwrap();
            assert!((mean - (per[0] + per[1]) / 2.0).abs() < 1e-9);
        }
    }
    // BD of mozjpeg against jpeg is computed (overlapping curves) and is plausible.
    let bd = json["bd"].as_array().unwrap();
    assert_eq!(bd.len(), 1);
    assert_eq!(bd[0]["codec"], "mozjpeg");
    let rate = bd[0]["bd_rate_percent"].as_f64().unwrap();
    assert!(rate.abs() < 60.0, "{rate}");

    // One CSV per image with the expected header and real byte counts.
    for (i, img) in report.images.iter().enumerate() {
        assert_eq!(img.csv, format!("img{i}.csv"));
        let csv = std::fs::read_to_string(out.join(&img.csv)).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("codec,param,bytes,bpp,psnr,encode_s,decode_s")
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 10);
        for r in &rows {
            let bytes: f64 = r[2].parse().unwrap();
            let bpp: f64 = r[3].parse().unwrap();
            assert!((bpp - 8.0 * bytes / (48.0 * 40.0)).abs() < 1e-5);
        }
    }
    // Plots: an SVG document with labelled axes and legend, and a real PNG.
    let svg = std::fs::read_to_string(out.join("rd.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for label in [
        "bits per pixel",
        "PSNR",
        "jpeg",
        "mozjpeg",
        "COIN (published",
    ] {
        assert!(svg.contains(label), "SVG lacks {label}");
    }
    let png = image::open(out.join("rd.png")).unwrap();
    assert_eq!((png.width(), png.height()), inr::rd::plot::PLOT_SIZE);

    // Outputs are not overwritten without force.
    assert!(matches!(
        write_report(&report, &out, false, false),
        Err(inr::rd::RdError::Exists(_))
    ));
    write_report(&report, &out, true, false).unwrap();
}

#[test]
fn rd_is_deterministic_apart_from_timings_and_respects_limit() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    tiny_images(&data);
    let cfg = RdConfig {
        limit: Some(1),
        ..jpeg_only()
    };
    let a = run_rd(&data, &cfg, &mut |_| {}).unwrap();
    let b = run_rd(&data, &cfg, &mut |_| {}).unwrap();
    assert_eq!(a.images.len(), 1);
    let key = |r: &inr::rd::RdReport| -> Vec<(String, String, u64, u64)> {
        r.images[0]
            .points
            .iter()
            .map(|p| (p.codec.clone(), p.param.clone(), p.bytes, p.psnr.to_bits()))
            .collect()
    };
    assert_eq!(key(&a), key(&b));
}

#[test]
fn rd_rejects_bad_configurations() {
    let t = tempfile::tempdir().unwrap();
    let bad_q = RdConfig {
        jpeg_qualities: vec![0],
        ..jpeg_only()
    };
    assert!(matches!(
        run_rd(t.path(), &bad_q, &mut |_| {}),
        Err(inr::rd::RdError::Config(_))
    ));
    assert!(matches!(
        run_rd(t.path(), &jpeg_only(), &mut |_| {}),
        Err(inr::rd::RdError::NoImages(_))
    ));
}

#[test]

fn rd_with_inr_presets_measures_decoded_files() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    tiny_images(&data);
    let cfg = RdConfig {
        presets: vec![inr::Preset::Tiny, inr::Preset::Small],
        steps: Some(100),
        ..jpeg_only()
    };
    let report = run_rd(&data, &cfg, &mut |_| {}).unwrap();
    let inr_curve = report.codecs.iter().find(|c| c.name == "inr").unwrap();
    assert_eq!(inr_curve.results.param, ["tiny", "small"]);
    for img in &report.images {
        for p in img.points.iter().filter(|p| p.codec == "inr") {
            assert!(p.bytes > 0 && p.psnr > 10.0 && p.decode_s > 0.0);
        }
    }
    assert!(report.bd.iter().any(|b| b.codec == "inr"));
    write_report(&report, &t.path().join("r"), false, false).unwrap();
}

#[test]
fn cli_rd_jpeg_only_writes_report_and_refuses_to_overwrite() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    tiny_images(&data);
    let out = t.path().join("report");
    let run = |extra: &[&str]| {
        let mut c = assert_cmd::Command::cargo_bin("inr").unwrap();
        c.arg("rd")
            .arg(&data)
            .arg("-o")
            .arg(&out)
            .args([
                "--jpeg-only",
                "--jpeg-qualities",
                "20,50,80",
                "--json",
                "--quiet",
            ])
            .args(extra);
        c.assert()
    };
    let ok = run(&[]).success();
    let v: serde_json::Value = serde_json::from_slice(&ok.get_output().stdout).unwrap();
    assert_eq!(
        v["codecs"][0]["results"]["bpp"].as_array().unwrap().len(),
        3
    );
    for f in ["rd.json", "rd.svg", "rd.png", "img0.csv", "img1.csv"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    run(&[])
        .failure()
        .stderr(predicates::str::contains("--force"));
    run(&["--force"]).success();
}

/// Grid points by rate weight, by target rate and by target PSNR: each target's real files
/// land at or under the rate within the ±3 % band (or, where rate control keeps a smaller and
/// better file, below it), a larger rate target gives a larger mean file, a PSNR target reached
/// is met by every decoded file, and bad targets are configuration errors.
#[test]
fn rd_grid_points_by_lambda_and_by_target_rate() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    tiny_images(&data);
    // 48x40 crops: the ~500-byte network alone is about 2 bpp.
    let cfg = RdConfig {
        grid_lambdas: vec![0.005],
        grid_bpps: vec![4.0, 8.0],
        grid_psnrs: vec![24.0],
        grid_fit_steps: Some(60),
        ..jpeg_only()
    };
    let report = run_rd(&data, &cfg, &mut |_| {}).unwrap();
    let by_rate = report
        .codecs
        .iter()
        .find(|c| c.name == "inr-grid-bpp")
        .unwrap();
    assert_eq!(by_rate.results.param, ["b4", "b8"]);
    assert!(
        by_rate.results.bpp[0] < by_rate.results.bpp[1],
        "{by_rate:?}"
    );
    assert!(by_rate.description.contains("rate control"));
    let by_lambda = report.codecs.iter().find(|c| c.name == "inr-grid").unwrap();
    assert_eq!(by_lambda.results.param, ["l0.005"]);
    for img in &report.images {
        for (p, target) in img
            .points
            .iter()
            .filter(|p| p.codec == "inr-grid-bpp")
            .zip([4.0, 8.0])
        {
            assert!(p.bpp <= target * 1.03 && p.psnr > 15.0, "{p:?}");
        }
    }
    let by_psnr = report
        .codecs
        .iter()
        .find(|c| c.name == "inr-grid-psnr")
        .unwrap();
    assert_eq!(by_psnr.results.param, ["q24"]);
    assert!(by_psnr.description.contains("quality control"));
    for img in &report.images {
        let p = img
            .points
            .iter()
            .find(|p| p.codec == "inr-grid-psnr")
            .unwrap();
        assert!(p.psnr >= 24.0, "{p:?}");
    }
    for bad in [0.0, -1.0, f64::NAN] {
        for c in [
            RdConfig {
                grid_bpps: vec![bad],
                ..cfg.clone()
            },
            RdConfig {
                grid_psnrs: vec![bad],
                ..cfg.clone()
            },
        ] {
            assert!(matches!(
                run_rd(&data, &c, &mut |_| {}),
                Err(inr::rd::RdError::Config(_))
            ));
        }
    }
}

/// `inr rd --presets` measures the presets in `inr encode`'s default image mode (the grid
/// mode: one `inr-grid` point per preset's λ), or in the weight mode with `--mode weights`;
/// `--mode` is refused for audio.
#[test]
fn cli_rd_presets_follow_the_default_image_mode() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    tiny_images(&data);
    let codecs = |extra: &[&str]| -> Vec<(String, Vec<String>)> {
        let out = t.path().join(format!("report{}", extra.len()));
        let o = assert_cmd::Command::cargo_bin("inr")
            .unwrap()
            .args(["--json", "--quiet", "rd"])
            .arg(&data)
            .arg("-o")
            .arg(&out)
            .args(["--presets", "tiny,medium", "--steps", "20", "--no-mozjpeg"])
            .args(["--jpeg-qualities", "50"])
            .args(extra)
            .assert()
            .success();
        let v: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
        v["codecs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let params = c["results"]["param"].as_array().unwrap();
                let params = params.iter().map(|p| p.as_str().unwrap().to_string());
                (c["name"].as_str().unwrap().to_string(), params.collect())
            })
            .collect()
    };
    let grid = codecs(&[]);
    assert!(grid.iter().all(|(name, _)| name != "inr"), "{grid:?}");
    let (_, params) = grid
        .iter()
        .find(|(n, _)| n == "inr-grid")
        .expect("inr-grid");
    assert_eq!(params, &["l0.03", "l0.005"], "tiny and medium λ");
    let weights = codecs(&["--mode", "weights"]);
    assert!(
        weights.iter().all(|(name, _)| name != "inr-grid"),
        "{weights:?}"
    );
    let (_, params) = weights.iter().find(|(n, _)| n == "inr").expect("inr");
    assert_eq!(params, &["tiny", "medium"]);
    assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .args(["rd", "--modality", "audio", "--mode", "grid"])
        .arg(&data)
        .arg("-o")
        .arg(t.path().join("a"))
        .assert()
        .failure()
        .stderr(predicates::str::contains("--mode"));
}
