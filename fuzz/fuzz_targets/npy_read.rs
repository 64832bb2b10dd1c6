//! Fuzz target: the `.npy` reader on arbitrary bytes, as each dtype it reads. It must never
//! panic, and an array it accepts must survive writing and reading back unchanged.

#![no_main]

use intattention_cli::npy::{self, Element};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: Element>(bytes: &[u8]) {
    let Ok(a) = npy::read_bytes::<T>(bytes) else {
        return;
    };
    assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
    // Compared as bytes, so that NaN payloads count as equal to themselves.
    let mut first = Vec::new();
    npy::write_to(&mut first, &a.shape, &a.data).expect("an accepted array can be written");
    let b = npy::read_bytes::<T>(&first).expect("what we write we read");
    assert_eq!(a.shape, b.shape);
    let mut second = Vec::new();
    npy::write_to(&mut second, &b.shape, &b.data).expect("written again");
    assert_eq!(first, second);
}

fuzz_target!(|bytes: &[u8]| {
    round_trip::<f32>(bytes);
    round_trip::<i32>(bytes);
    round_trip::<u8>(bytes);
    round_trip::<u32>(bytes);
    round_trip::<bool>(bytes);
});
