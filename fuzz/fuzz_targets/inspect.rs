//! Header and section parsing (`inr::inspect`, no entropy decoding) with the default limits.
//! Invariants checked on success: the reported sizes add up to the file size, and the step
//! table matches the architecture.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fn check(bytes: &[u8]) {
    // Modulation-mode files (codec-spec §12): the full reader must never panic either, and
    // agree with `inspect` on what it accepts.
    let modulated = inr::format::read_mod_file(bytes, &inr::Limits::default());
    if let Err(e) = &modulated {
        let _ = e.to_string();
    }
    let info = match inr::inspect(bytes) {
        Ok(info) => info,
        Err(e) => {
            let _ = e.to_string(); // messages must format without panicking
            return;
        }
    };
    {
        let groups_len = 4 * info.groups.len() as u64;
        assert_eq!(
            info.header_bytes
                + info.side_info_bytes
                + info.sparsity.as_ref().map_or(0, |s| s.section_bytes)
                + info.codebooks.as_ref().map_or(0, |c| c.section_bytes)
                + info.payload_bytes
                + info.crc_bytes,
            info.total_bytes,
            "section sizes must add up"
        );
        assert!(groups_len <= info.side_info_bytes);
        assert_eq!(info.total_bytes, bytes.len() as u64);
        assert_eq!(info.steps.len(), info.num_tensors);
        assert_eq!(info.tensor_bits.len(), info.num_tensors);
        match &info.modulation {
            // Grid files (§13, §14): the synthesis tensors (none when shared, §13.8, or the
            // output layer's two with flag bit 7), then one entry per latent level.
            None if info.grid.is_some() => assert_eq!(
                match (info.base_id.is_some(), info.flags & 0x80 != 0) {
                    (false, false) => info.arch.num_tensors(),
                    (true, false) => 0,
                    (true, true) => 2,
                    (false, true) => panic!("flag bit 7 accepted without bit 0"),
                } + usize::from(info.arch.coord_dims),
                info.num_tensors
            ),
            None => assert_eq!(info.arch.num_tensors(), info.num_tensors),
            Some(m) => {
                assert_eq!(usize::from(m.latent_dim), info.num_tensors);
                assert_eq!(m.latents, info.num_params);
                if let Ok(f) = &modulated {
                    assert_eq!(f.channels.len(), info.num_tensors);
                }
            }
        }
        if info.modality == "image" {
            assert!(info.width >= 1 && info.height >= 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&common::with_valid_crc(data));
});
