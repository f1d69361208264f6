//! What does the explicit mask section (format v2, §4.6) cost against plain coding of the
//! zeros, and against Deep Compression's CSR relative indices? For each `.inr` file given,
//! the hidden matrices' masks are taken as "symbol != 0" and the file is written both ways.
//!
//! `cargo run --release --example mask_cost -- FILE.inr ...`
use inr::format::{read_file, write_file, Limits};

fn main() {
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).expect("readable file");
        let mut f = read_file(&bytes, &Limits::default()).expect("valid .inr");
        let t = f.tensors.len();
        f.masks = (0..t)
            .map(|i| {
                (i >= 2 && i % 2 == 0)
                    .then(|| f.tensors[i].symbols.iter().map(|&s| s != 0).collect())
            })
            .collect();
        let sparse = write_file(&f).expect("writes");
        let (mut kept, mut values, mut csr) = (0u64, 0u64, 0u64);
        for m in f.masks.iter().flatten() {
            kept += m.iter().filter(|&&k| k).count() as u64;
            values += m.len() as u64;
            csr += inr::entropy::csr_relative_index_entries(m, 5).0;
        }
        let sp = inr::format::inspect(&sparse)
            .expect("inspects")
            .sparsity
            .expect("masks");
        let mut plain = f.clone();
        plain.masks = Vec::new();
        let plain = write_file(&plain).expect("writes");
        let d = kept as f64 / values as f64;
        let h = -(d * d.log2() + (1.0 - d) * (1.0 - d).log2());
        println!(
            "{path}: density {d:.3}; plain {} B, with mask section {} B (mask stream {} B = \
             {:.2} bits/kept; iid bound H(d)/d = {:.2}; CSR 5-bit = {:.2} bits/kept)",
            plain.len(),
            sparse.len(),
            sp.mask_stream_bytes,
            sp.mask_bits_per_kept,
            h / d,
            5.0 * csr as f64 / kept as f64
        );
    }
}
