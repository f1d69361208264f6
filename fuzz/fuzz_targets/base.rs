//! Base-file parsing (`inr::base::Base::from_bytes`, codec-spec §10) with the default limits.
//! Invariants checked on success: the weights match the architecture, are finite, and the
//! file re-serialises to exactly the input (so the id is a function of the content).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fn check(bytes: &[u8]) {
    let b = match inr::base::Base::from_bytes(bytes, &inr::Limits::default()) {
        Ok(b) => b,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(b.params.len(), b.expected_params());
    assert!(b.params.iter().all(|v| v.is_finite()));
    let again = b.to_bytes().expect("a parsed base serialises");
    assert_eq!(again, bytes, "a parsed base must re-serialise to the same bytes");
    assert_eq!(b.id(), inr::base::id_of(bytes));
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&common::with_valid_crc(data));
});
