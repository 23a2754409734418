//! Any bytes, as one JSON client message and as a frame of them: must never panic.
#![no_main]

use coregate_protocol::{decode_client, decode_client_frame, decode_server, Encoding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_client(Encoding::Json, &mut data.to_vec(), 64 * 1024);
    let _ = decode_client_frame(Encoding::Json, &mut data.to_vec(), 64 * 1024).count();
    let _ = decode_server(Encoding::Json, data);
});
