//! Fault tolerance of the real `inr` binary: SIGINT during `batch` (clean stop, consistent
//! manifest, no temporary files, resumable), read-only output folders, a full disk (simulated
//! with `RLIMIT_FSIZE`) and a full stdout (`/dev/full`). Outputs are never partial.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_inr");

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".inr-tmp-"))
        })
        .collect()
}

/// A 40x40 RGB test image, different for every `seed`.
fn png(path: &Path, seed: u32) {
    image::RgbImage::from_fn(40, 40, |x, y| {
        image::Rgb([
            (x * 6 + seed * 17) as u8,
            (y * 6) as u8,
            ((x * y + seed * 31) % 256) as u8,
        ])
    })
    .save(path)
    .unwrap();
}

fn batch_cmd(inp: &Path, out: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("batch")
        .arg(inp)
        .arg("-o")
        .arg(out)
        .args(["--preset", "tiny", "--width", "16", "--depth", "3"])
        .args(["--steps", "400", "--jobs", "1", "--threads", "1", "--json"]);
    c
}

#[test]
fn sigint_stops_batch_cleanly_and_a_rerun_resumes() {
    const N: usize = 8;
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    std::fs::create_dir_all(&inp).unwrap();
    for i in 0..N {
        png(&inp.join(format!("img{i}.png")), i as u32);
    }
    let out = t.path().join("out");
    let manifest = out.join("manifest.csv");
    let mut child = batch_cmd(&inp, &out)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first file has its row, then interrupt.
    let start = Instant::now();
    loop {
        let rows = inr::batch::read_manifest(&manifest).unwrap_or_default();
        if !rows.is_empty() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "batch exited before any row"
        );
        assert!(start.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "stderr: {stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("rerun"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let done = summary["encoded"].as_u64().unwrap() as usize;
    let skipped = summary["interrupted"].as_u64().unwrap() as usize;
    assert!(done >= 1 && skipped >= 1, "{summary}");
    assert_eq!(done + skipped, N);

    // The manifest is complete and consistent: one ok row per finished file, each output
    // valid, no cut lines, no temporary files, no outputs without a row.
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.ends_with('\n'));
    let rows = inr::batch::read_manifest(&manifest).unwrap();
    assert_eq!(rows.len(), done);
    assert_eq!(text.lines().count(), done + 1, "{text}");
    for r in &rows {
        assert_eq!(r.status, inr::batch::RowStatus::Ok, "{r:?}");
        let bytes = std::fs::read(out.join(&r.output)).unwrap();
        assert_eq!(Some(bytes.len() as u64), r.bytes);
        inr::inspect(&bytes).unwrap();
    }
    let outputs: Vec<PathBuf> = files_under(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "inr"))
        .collect();
    assert_eq!(outputs.len(), done, "{outputs:?}");
    assert!(temp_files(&out).is_empty(), "{:?}", temp_files(&out));

    // A rerun keeps the finished files and does exactly the rest.
    let again = batch_cmd(&inp, &out).arg("--quiet").output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(s["kept"].as_u64(), Some(done as u64), "{s}");
    assert_eq!(s["encoded"].as_u64(), Some(skipped as u64), "{s}");
    assert_eq!(s["interrupted"].as_u64(), Some(0));
    let rows = inr::batch::read_manifest(&manifest).unwrap();
    assert_eq!(rows.len(), N);
    assert!(rows.iter().all(|r| r.status == inr::batch::RowStatus::Ok));
    assert!(temp_files(&out).is_empty());
}

/// Runs `cmd` as an unprivileged user when the tests run as root (root ignores permission
/// bits, so a read-only folder would not be read-only for it).
fn unprivileged(cmd: &mut Command) -> &mut Command {
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::geteuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A temporary folder that other users can traverse (tempfile creates 0700 folders).
fn shared_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

#[test]
fn read_only_output_folder_is_a_clear_error_and_leaves_nothing() {
    let t = shared_tempdir();
    let golden = t.path().join("golden.inr");
    std::fs::copy(fixture("golden_v1.inr"), &golden).unwrap();
    std::fs::set_permissions(&golden, std::fs::Permissions::from_mode(0o644)).unwrap();
    let src = t.path().join("src.png");
    std::fs::copy(fixture("rgb_16x16.png"), &src).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ro = t.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();

    let out = ro.join("out.png");
    let o = unprivileged(
        Command::new(BIN)
            .arg("decode")
            .arg(&golden)
            .arg("-o")
            .arg(&out),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error:"), "{stderr}");
    assert!(stderr.contains("out.png"), "names the output: {stderr}");
    assert!(stderr.contains("ermission denied"), "says why: {stderr}");

    let out = ro.join("out.inr");
    let o = unprivileged(
        Command::new(BIN)
            .args(["encode", "-q", "--preset", "tiny", "--steps", "5"])
            .arg(&src)
            .arg("-o")
            .arg(&out),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("out.inr"), "{stderr}");
    assert!(stderr.contains("ermission denied"), "{stderr}");
    assert!(files_under(&ro).is_empty());
}

/// Runs `cmd` with a file-size limit of `bytes` (writes beyond it fail with EFBIG, as on a
/// full disk: the process keeps running because SIGXFSZ is ignored).
fn with_file_size_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[test]
fn full_disk_leaves_no_partial_output_and_no_temporary_file() {
    let t = tempfile::tempdir().unwrap();
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // Decoding the golden file at 64x64 gives a PNG of several KB; 1000 bytes do not fit.
    let out = out_dir.join("big.png");
    let o = with_file_size_limit(
        Command::new(BIN)
            .arg("decode")
            .arg(fixture("golden_v1.inr"))
            .args(["--size", "64x64", "-o"])
            .arg(&out),
        1000,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error:") && stderr.contains("big.png"),
        "{stderr}"
    );
    assert!(stderr.contains("too large"), "says why (EFBIG): {stderr}");
    assert!(
        files_under(&out_dir).is_empty(),
        "{:?}",
        files_under(&out_dir)
    );

    // The same for an encoder output (a 16x16 tiny-preset file is ~2 KB > 200 bytes).
    let out = out_dir.join("x.inr");
    let o = with_file_size_limit(
        Command::new(BIN)
            .args([
                "encode", "-q", "--mode", "weights", "--preset", "tiny", "--steps", "5",
            ])
            .arg(fixture("rgb_16x16.png"))
            .arg("-o")
            .arg(&out),
        200,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("x.inr"), "{stderr}");
    assert!(
        files_under(&out_dir).is_empty(),
        "{:?}",
        files_under(&out_dir)
    );
}

#[test]
fn full_stdout_is_a_clean_error() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("no /dev/full on this system; skipped");
        return;
    };
    let o = Command::new(BIN)
        .arg("info")
        .arg(fixture("golden_v1.inr"))
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write to stdout"), "{stderr}");
    assert!(stderr.contains("No space left"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn outputs_get_the_usual_file_mode() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("a.png");
    let o = Command::new(BIN)
        .arg("decode")
        .arg(fixture("golden_v1.inr"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success());
    // 0666 minus the umask, as for any new file (tempfile's default would be 0600).
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    // The umask, read without changing it (Linux >= 4.7 reports it in /proc).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(umask) = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
    else {
        eprintln!("umask unknown on this system; skipped");
        return;
    };
    assert_eq!(mode, 0o666 & !umask, "mode {mode:o}");
}
