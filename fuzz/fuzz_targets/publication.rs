//! Any bytes as a backend payload and as an admin body; whatever decodes must encode to
//! messages that decode again.
#![no_main]

use coregate_protocol::{decode_server, Encoding, Publication, Topic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = Topic::parse("channel:1") else {
        return;
    };
    let decoded = [
        Publication::from_backend_payload(topic, &mut data.to_vec(), 64 * 1024),
        Publication::from_admin_body(&mut data.to_vec(), 64 * 1024),
    ];
    for publication in decoded.into_iter().flatten() {
        for encoding in Encoding::ALL {
            let bytes = publication.encode(encoding);
            assert!(decode_server(encoding, &bytes).is_ok());
        }
        let _ = publication.to_backend_payload();
    }
});
