//! A voice participant's side of WebRTC, sans-IO, on str0m: it answers the SFU's offers,
//! sends a steady Opus stream (20 ms frames of a fixed payload: the SFU forwards RTP
//! without decoding it) and counts what it receives from each other participant. No
//! socket and no clock: the caller hands in datagrams and the time and sends what
//! [`VoicePeer::poll`] hands out. The load harness's `voice` scenario and the
//! gateway's tests (in memory and over real UDP) drive it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// An Opus frame's duration, and so the pace of [`VoicePeer::send_audio`].
pub const FRAME: Duration = Duration::from_millis(20);
/// RTP ticks per frame at Opus's 48 kHz clock.
const FRAME_TICKS: u64 = 960;
/// What each frame carries: the size of a typical 32 kbit/s Opus voice frame.
const FRAME_PAYLOAD: [u8; 80] = [0x5a; 80];

/// What a peer has received from one other participant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub packets: u64,
    /// When the first one arrived.
    pub first_at: Option<Instant>,
}

/// One participant's WebRTC session; see the module docs.
pub struct VoicePeer {
    rtc: Rtc,
    local: SocketAddr,
    /// The line this peer sends its audio on.
    uplink: Option<Mid>,
    /// Who each received line carries (the SFU names the source in the stream id).
    heard: HashMap<String, Heard>,
    connected_at: Option<Instant>,
    rtp_time: u64,
    failed: bool,
}

impl VoicePeer {
    /// A peer whose datagrams leave from `local` (its host candidate).
    pub fn new(local: SocketAddr, now: Instant) -> VoicePeer {
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        if let Ok(candidate) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(candidate);
        }
        VoicePeer {
            rtc,
            local,
            uplink: None,
            heard: HashMap::new(),
            connected_at: None,
            rtp_time: 0,
            failed: false,
        }
    }

    /// Answers an offer of the SFU: the SDP to send back as `voice_answer`.
    pub fn answer(&mut self, offer: &str) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| e.to_string())?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| e.to_string())?;
        Ok(answer.to_sdp_string())
    }

    /// One of the server's ICE candidates (`voice_ice_candidate`).
    pub fn add_remote_candidate(&mut self, line: &str) {
        if let Ok(candidate) = Candidate::from_sdp_string(line.trim_start_matches("a=")) {
            self.rtc.add_remote_candidate(candidate);
        }
    }

    /// A datagram from `source`.
    pub fn handle_datagram(&mut self, source: SocketAddr, contents: &[u8], now: Instant) {
        let Ok(contents) = contents.try_into() else {
            return;
        };
        let receive = Receive {
            proto: Protocol::Udp,
            source,
            destination: self.local,
            contents,
        };
        if self.rtc.handle_input(Input::Receive(now, receive)).is_err() {
            self.failed = true;
        }
    }

    /// Lets the session's timers run up to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
            self.failed = true;
        }
    }

    /// Everything the session has to send (destination, datagram), recording what it
    /// received meanwhile; and when it next wants [`Self::handle_timeout`].
    pub fn poll(&mut self, now: Instant) -> (Vec<(SocketAddr, Vec<u8>)>, Instant) {
        let mut out = Vec::new();
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => return (out, at),
                Ok(Output::Transmit(t)) => out.push((t.destination, t.contents.to_vec())),
                Ok(Output::Event(Event::Connected)) => self.connected_at = Some(now),
                Ok(Output::Event(Event::MediaAdded(added))) => {
                    if added.kind == MediaKind::Audio && added.direction == Direction::SendOnly {
                        self.uplink = Some(added.mid);
                    }
                }
                Ok(Output::Event(Event::MediaData(data))) => {
                    let source = self
                        .rtc
                        .media(data.mid)
                        .map(|m| m.stream_id().to_owned())
                        .unwrap_or_default();
                    let heard = self.heard.entry(source).or_default();
                    heard.packets += 1;
                    heard.first_at.get_or_insert(now);
                }
                Ok(Output::Event(_)) => {}
                Err(_) => {
                    self.failed = true;
                    return (out, now + Duration::from_secs(1));
                }
            }
        }
    }

    /// Writes the next 20 ms frame, once the session is up; `false` when it could not.
    pub fn send_audio(&mut self, now: Instant) -> bool {
        let Some(mid) = self.uplink.filter(|_| self.connected_at.is_some()) else {
            return false;
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return false;
        };
        let Some(pt) = writer.payload_params().next().map(|p| p.pt()) else {
            return false;
        };
        let time = MediaTime::new(self.rtp_time, Frequency::FORTY_EIGHT_KHZ);
        self.rtp_time += FRAME_TICKS;
        writer.write(pt, now, time, FRAME_PAYLOAD.to_vec()).is_ok()
    }

    /// When the session came up (ICE and DTLS), if it has.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// Packets received from everyone.
    pub fn packets_received(&self) -> u64 {
        self.heard.values().map(|h| h.packets).sum()
    }

    /// When the first packet from anyone arrived.
    pub fn first_heard_at(&self) -> Option<Instant> {
        self.heard.values().filter_map(|h| h.first_at).min()
    }

    /// What this peer received from `user_id`.
    pub fn heard_from(&self, user_id: &str) -> Heard {
        self.heard.get(user_id).copied().unwrap_or_default()
    }

    /// Whether the session failed (the SFU went away, DTLS broke).
    pub fn failed(&self) -> bool {
        self.failed || !self.rtc.is_alive()
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }
}
