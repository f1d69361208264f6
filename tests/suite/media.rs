//! Input policy of `inr::media` on hand-made fixtures (see tests/fixtures/make_fixtures.py).

use std::path::PathBuf;

use inr::media::{
    decode_image_bytes, decode_image_bytes_with, load_image, load_image_with, save_image, Image,
    LoadOptions, MediaError, MediaLimits,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// RGB(x, y) = (15x, 15y, 7(x+y) + 10), the pattern of the 16x16 colour fixtures.
fn rgb_pattern() -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..16u32 {
        for x in 0..16u32 {
            v.extend([15 * x, 15 * y, 7 * (x + y) + 10].map(|c| c as u8));
        }
    }
    v
}

/// GRAY(x, y) = 8x + 7y + 3.
fn gray_pattern() -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..16u32 {
        for x in 0..16u32 {
            v.push((8 * x + 7 * y + 3) as u8);
        }
    }
    v
}

fn rgb16x16() -> Image {
    Image {
        width: 16,
        height: 16,
        channels: 3,
        data: rgb_pattern(),
    }
}

fn gray16x16() -> Image {
    Image {
        width: 16,
        height: 16,
        channels: 1,
        data: gray_pattern(),
    }
}

fn ignore_alpha() -> LoadOptions {
    LoadOptions {
        ignore_alpha: true,
        ..LoadOptions::default()
    }
}

#[test]
fn rgb8_loads_exactly() {
    let l = load_image(&fixture("rgb_16x16.png")).unwrap();
    assert_eq!(l.image, rgb16x16());
    assert_eq!(l.format, image::ImageFormat::Png);
    assert!(l.notes.is_empty(), "{:?}", l.notes);
}

#[test]
fn gray_stays_one_channel() {
    let l = load_image(&fixture("gray_16x16.png")).unwrap();
    assert_eq!(l.image, gray16x16());
    assert!(l.notes.is_empty());
}

#[test]
fn opaque_alpha_is_dropped_losslessly() {
    let ga = load_image(&fixture("graya_opaque_16x16.png")).unwrap();
    assert_eq!(ga.image, gray16x16());
    assert!(ga.notes.is_empty(), "{:?}", ga.notes);
    let rgba = load_image(&fixture("rgba_opaque_16x16.png")).unwrap();
    assert_eq!(rgba.image, rgb16x16());
    assert_eq!(rgba.source_color, "Rgba8");
    assert!(rgba.notes.is_empty(), "{:?}", rgba.notes);
}

#[test]
fn translucent_alpha_is_refused_with_a_hint() {
    for name in [
        "rgba_translucent_16x16.png",
        "graya_translucent_16x16.png",
        "rgba16_almost_opaque_16x16.png",
    ] {
        let err = load_image(&fixture(name)).unwrap_err();
        match &err {
            MediaError::TranslucentAlpha {
                translucent,
                pixels,
            } => {
                assert_eq!((*translucent, *pixels), (1, 256), "{name}");
            }
            e => panic!("{name}: unexpected error {e:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("--ignore-alpha"), "{msg}");
        assert!(msg.contains("alpha"), "{msg}");
    }
}

#[test]
fn translucent_alpha_with_ignore_flag_drops_alpha_and_notes_it() {
    let l = load_image_with(&fixture("rgba_translucent_16x16.png"), &ignore_alpha()).unwrap();
    assert_eq!(l.image, rgb16x16());
    assert_eq!(l.notes.len(), 1);
    assert!(l.notes[0].contains("alpha"), "{:?}", l.notes);
    let g = load_image_with(&fixture("graya_translucent_16x16.png"), &ignore_alpha()).unwrap();
    assert_eq!(g.image, gray16x16());
}

#[test]
fn sixteen_bit_is_rounded_with_a_note() {
    // The fixtures store v * 257 + d with d < 128, which rounds back to v exactly.
    for (name, want) in [
        ("rgb16_16x16.png", rgb16x16()),
        ("gray16_16x16.png", gray16x16()),
        ("rgba16_opaque_16x16.png", rgb16x16()),
    ] {
        let l = load_image(&fixture(name)).unwrap();
        assert_eq!(l.image, want, "{name}");
        assert_eq!(l.notes.len(), 1, "{name}: {:?}", l.notes);
        assert!(l.notes[0].contains("16-bit"), "{:?}", l.notes);
    }
}

#[test]
fn palette_png_becomes_rgb() {
    let l = load_image(&fixture("palette_16x16.png")).unwrap();
    let pal = [[255u8, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 250]];
    let mut want = Vec::new();
    for y in 0..16 {
        for x in 0..16 {
            want.extend(pal[(x + y) % 4]);
        }
    }
    assert_eq!(l.image.channels, 3);
    assert_eq!(l.image.data, want);
}

#[test]
fn odd_and_portrait_sizes() {
    let l = load_image(&fixture("rgb_24x17.png")).unwrap();
    assert_eq!(
        (l.image.width, l.image.height, l.image.channels),
        (24, 17, 3)
    );
    // Row-major, interleaved: pixel (x=5, y=3) = (10x, 15y, 200).
    let i = (3 * 24 + 5) * 3;
    assert_eq!(&l.image.data[i..i + 3], &[50, 45, 200]);

    let p = load_image(&fixture("rgb_11x23.png")).unwrap();
    assert_eq!((p.image.width, p.image.height), (11, 23));
    let i = (22 * 11 + 10) * 3; // last pixel: (20*10, 10*22, 99)
    assert_eq!(&p.image.data[i..i + 3], &[200, 220, 99]);
}

#[test]
fn format_is_detected_by_content_not_extension() {
    let l = load_image(&fixture("ppm_named.png")).unwrap();
    assert_eq!(l.format, image::ImageFormat::Pnm);
    assert_eq!(l.image, rgb16x16());
    let b = load_image(&fixture("rgb_16x16.bmp")).unwrap();
    assert_eq!(b.format, image::ImageFormat::Bmp);
    assert_eq!(b.image, rgb16x16());
}

/// Encode `img` with the image crate in memory, then load it through our policy.
fn via(format: image::ImageFormat, img: &image::DynamicImage) -> inr::media::LoadedImage {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    let l = decode_image_bytes(buf.get_ref()).unwrap();
    assert_eq!(l.format, format);
    l
}

#[test]
fn other_container_formats_load() {
    let rgb = image::RgbImage::from_raw(16, 16, rgb_pattern()).unwrap();
    let dynimg = image::DynamicImage::ImageRgb8(rgb);
    // Lossless containers give the exact pixels back.
    for f in [
        image::ImageFormat::Tiff,
        image::ImageFormat::WebP,
        image::ImageFormat::Qoi,
    ] {
        assert_eq!(via(f, &dynimg).image, rgb16x16(), "{f:?}");
    }
    // JPEG is lossy: shape only, and close to the original.
    let j = via(image::ImageFormat::Jpeg, &dynimg).image;
    assert_eq!((j.width, j.height, j.channels), (16, 16, 3));
    assert!(inr::metrics::psnr(&j, &rgb16x16()).unwrap() > 30.0);
    // GIF is paletted RGBA; fully opaque, so it comes back as RGB.
    let g = via(image::ImageFormat::Gif, &dynimg).image;
    assert_eq!((g.width, g.height, g.channels), (16, 16, 3));
    // A gray JPEG stays gray.
    let gray = image::DynamicImage::ImageLuma8(
        image::GrayImage::from_raw(16, 16, gray_pattern()).unwrap(),
    );
    assert_eq!(via(image::ImageFormat::Jpeg, &gray).image.channels, 1);
}

#[test]
fn float_images_are_clamped_with_a_note() {
    let px: Vec<f32> = vec![-0.5, 0.0, 0.5, 1.0, 2.0, f32::NAN];
    let img = image::DynamicImage::ImageRgb32F(image::Rgb32FImage::from_raw(2, 1, px).unwrap());
    let l = via(image::ImageFormat::OpenExr, &img);
    assert_eq!(l.image.data, vec![0, 0, 128, 255, 255, 0]);
    assert!(l.notes.iter().any(|n| n.contains("float")), "{:?}", l.notes);
}

#[test]
fn broken_inputs_give_typed_errors() {
    let e = load_image(&fixture("not_an_image.txt")).unwrap_err();
    assert!(matches!(e, MediaError::UnknownFormat), "{e:?}");
    for name in ["truncated.png", "corrupt.png"] {
        let e = load_image(&fixture(name)).unwrap_err();
        assert!(matches!(e, MediaError::Decode { .. }), "{name}: {e:?}");
    }
    let e = load_image(&fixture("does_not_exist.png")).unwrap_err();
    assert!(matches!(e, MediaError::Read { .. }), "{e:?}");
    assert!(decode_image_bytes(&[]).is_err());
    // Every prefix that cuts the pixel data fails cleanly; only the 12-byte IEND chunk may be
    // missing (the pixels are complete then). No prefix panics.
    let good = std::fs::read(fixture("rgb_16x16.png")).unwrap();
    for n in 0..good.len() {
        let r = decode_image_bytes(&good[..n]);
        if n < good.len() - 12 {
            assert!(r.is_err(), "prefix {n}");
        }
    }
}

#[test]
fn absurd_sizes_are_refused_before_decoding() {
    let e = load_image(&fixture("huge_header.png")).unwrap_err();
    assert!(
        matches!(
            e,
            MediaError::TooLarge { .. } | MediaError::LimitsExceeded { .. }
        ),
        "{e:?}"
    );
    // Custom limits: 16x16 is refused when at most 100 pixels are allowed.
    let opts = LoadOptions {
        limits: MediaLimits {
            max_pixels: 100,
            ..MediaLimits::default()
        },
        ..LoadOptions::default()
    };
    let bytes = std::fs::read(fixture("rgb_16x16.png")).unwrap();
    let e = decode_image_bytes_with(&bytes, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            MediaError::TooLarge {
                width: 16,
                height: 16,
                ..
            }
        ),
        "{e:?}"
    );
    let opts = LoadOptions {
        limits: MediaLimits {
            max_file_bytes: 10,
            ..MediaLimits::default()
        },
        ..LoadOptions::default()
    };
    let e = load_image_with(&fixture("rgb_16x16.png"), &opts).unwrap_err();
    assert!(matches!(e, MediaError::FileTooLarge { max: 10 }), "{e:?}");
}

#[test]
fn save_round_trips_and_respects_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let img = load_image(&fixture("rgb_24x17.png")).unwrap().image;
    for name in ["a.png", "a.bmp", "a.ppm", "a.tiff"] {
        let p = dir.path().join(name);
        save_image(&p, &img, false).unwrap();
        assert_eq!(load_image(&p).unwrap().image, img, "{name}");
    }
    let p = dir.path().join("a.png");
    let before = std::fs::read(&p).unwrap();
    let other = gray16x16();
    let e = save_image(&p, &other, false).unwrap_err();
    assert!(matches!(e, MediaError::Write { .. }), "{e:?}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        before,
        "existing file untouched"
    );
    save_image(&p, &other, true).unwrap();
    assert_eq!(load_image(&p).unwrap().image, other);
    // Unsupported extension and invalid images are refused.
    let e = save_image(&dir.path().join("a.jpg"), &img, false).unwrap_err();
    assert!(
        matches!(e, MediaError::UnsupportedOutputFormat { .. }),
        "{e:?}"
    );
    let bad = Image {
        width: 2,
        height: 2,
        channels: 3,
        data: vec![0; 5],
    };
    let e = save_image(&dir.path().join("b.png"), &bad, false).unwrap_err();
    assert!(matches!(e, MediaError::InvalidImage(_)), "{e:?}");
    assert!(!dir.path().join("b.png").exists());
}

#[test]
fn exif_orientation_is_applied_with_a_note() {
    use image::ImageEncoder as _;
    // 3x2 RGB, pixel value = index; EXIF orientation 6 = rotate 90 degrees clockwise.
    let data: Vec<u8> = (0..6u8).flat_map(|i| [i * 40, 0, 0]).collect();
    let exif: Vec<u8> = [
        &b"II*\0"[..],
        &8u32.to_le_bytes(),
        &1u16.to_le_bytes(),
        &0x0112u16.to_le_bytes(),
        &3u16.to_le_bytes(),
        &1u32.to_le_bytes(),
        &6u16.to_le_bytes(),
        &0u16.to_le_bytes(),
        &0u32.to_le_bytes(),
    ]
    .concat();
    let mut buf = Vec::new();
    let mut enc = image::codecs::webp::WebPEncoder::new_lossless(&mut buf);
    enc.set_exif_metadata(exif).unwrap();
    enc.write_image(&data, 3, 2, image::ExtendedColorType::Rgb8)
        .unwrap();
    let l = decode_image_bytes(&buf).unwrap();
    assert_eq!((l.image.width, l.image.height), (2, 3));
    // Rows of the original: [0 1 2] / [3 4 5]; rotated clockwise: [3 0] / [4 1] / [5 2].
    let red: Vec<u8> = l.image.data.chunks(3).map(|p| p[0] / 40).collect();
    assert_eq!(red, vec![3, 0, 4, 1, 5, 2]);
    assert!(
        l.notes.iter().any(|n| n.contains("orientation")),
        "{:?}",
        l.notes
    );
}

fn keep_alpha() -> LoadOptions {
    LoadOptions {
        keep_alpha: true,
        ..LoadOptions::default()
    }
}

/// `img` with an alpha sample after each pixel: 255, except 128 at (3, 5) (the fixtures').
fn with_fixture_alpha(img: &Image) -> Image {
    let c = usize::from(img.channels);
    let mut data = Vec::new();
    for (i, px) in img.data.chunks_exact(c).enumerate() {
        data.extend_from_slice(px);
        data.push(if i == 5 * 16 + 3 { 128 } else { 255 });
    }
    Image {
        channels: img.channels + 1,
        data,
        ..img.clone()
    }
}

#[test]
fn translucent_alpha_is_kept_when_asked_and_ignore_wins() {
    let rgba = load_image_with(&fixture("rgba_translucent_16x16.png"), &keep_alpha()).unwrap();
    assert_eq!(rgba.image, with_fixture_alpha(&rgb16x16()));
    assert!(rgba.image.has_alpha());
    assert!(rgba.notes.is_empty(), "{:?}", rgba.notes);
    let ga = load_image_with(&fixture("graya_translucent_16x16.png"), &keep_alpha()).unwrap();
    assert_eq!(ga.image, with_fixture_alpha(&gray16x16()));
    // A fully opaque alpha channel is still dropped.
    let opaque = load_image_with(&fixture("rgba_opaque_16x16.png"), &keep_alpha()).unwrap();
    assert_eq!(opaque.image, rgb16x16());
    // --ignore-alpha takes precedence.
    let both = LoadOptions {
        keep_alpha: true,
        ignore_alpha: true,
        ..LoadOptions::default()
    };
    let l = load_image_with(&fixture("rgba_translucent_16x16.png"), &both).unwrap();
    assert_eq!(l.image, rgb16x16());
    assert_eq!(l.notes.len(), 1, "{:?}", l.notes);
}

#[test]
fn alpha_is_written_where_the_format_stores_it_and_refused_elsewhere() {
    let rgba = with_fixture_alpha(&rgb16x16());
    let ga = with_fixture_alpha(&gray16x16());
    let dir = tempfile::tempdir().unwrap();
    for (img, ext) in [(&rgba, "png"), (&ga, "png"), (&rgba, "tif"), (&rgba, "bmp")] {
        let p = dir.path().join(format!("a{}.{ext}", img.channels));
        save_image(&p, img, false).unwrap();
        let back = load_image_with(&p, &keep_alpha()).unwrap();
        assert_eq!(&back.image, img, "{ext} with {} channels", img.channels);
    }
    for (img, ext) in [(&rgba, "ppm"), (&ga, "pgm"), (&ga, "tif"), (&ga, "bmp")] {
        let p = dir.path().join(format!("b{}.{ext}", img.channels));
        let e = save_image(&p, img, false).unwrap_err();
        assert!(
            matches!(e, MediaError::AlphaNotStored { .. }),
            "{ext}: {e:?}"
        );
        assert!(e.to_string().contains("PNG"), "{e}");
        assert!(!p.exists(), "{ext}: a refused image left a file");
    }
}
