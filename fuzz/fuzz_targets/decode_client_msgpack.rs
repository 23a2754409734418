//! Any bytes, as one MessagePack client message and as a frame of them: must never panic
//! nor allocate beyond what the input can hold.
#![no_main]

use coregate_protocol::{
    decode_client, decode_client_frame, decode_server, split_server_frame, Encoding,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_client(Encoding::MsgPack, &mut data.to_vec(), 64 * 1024);
    let _ = decode_client_frame(Encoding::MsgPack, &mut data.to_vec(), 64 * 1024).count();
    let _ = decode_server(Encoding::MsgPack, data);
    let _ = split_server_frame(Encoding::MsgPack, data);
});
