//! The parts of the load harness other crates use too: the gateway's tests drive the
//! same [`voice_peer`] as the harness's `voice` scenario.

pub mod voice_peer;
