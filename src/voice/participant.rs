//! One participant of a room: its WebRTC session (a str0m [`Rtc`], ICE-lite, Opus only)
//! and the negotiation the SFU leads. The SFU always offers: one `recvonly` audio line
//! for the participant's microphone, and one `sendonly` line per other participant, so
//! that every participant receives every other's audio on a track of its own. A change
//! of the room (a join, a leave) renegotiates: lines are added for newcomers and stopped
//! for those gone. One offer is outstanding at a time; what changes meanwhile waits for
//! its answer, then goes out in the next offer.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::Rtc;

use super::sfu::{ParticipantId, Peer};

/// One other participant's audio on its way to this one.
#[derive(Debug)]
struct Outbound {
    source: ParticipantId,
    mid: Mid,
    line: Line,
}

/// Where a line stands in the negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Added by the outstanding offer: not in the session until it is answered.
    Offered,
    /// Negotiated: media flows on it.
    Open,
    /// Being stopped (its source left) by the outstanding offer.
    Stopping,
}

/// Why an answer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("no offer is waiting for an answer")]
    NoOffer,
    #[error("the answer is not valid SDP: {0}")]
    Unparsable(String),
    #[error("the answer does not fit the offer: {0}")]
    Refused(String),
}

/// A participant; see the module docs.
pub struct Participant {
    pub peer: Peer,
    pub user_id: String,
    pub name: Option<String>,
    pub channel: String,
    pub muted: bool,
    pub rtc: Rtc,
    /// The server side's ICE ufrag: the demultiplexing key of its STUN traffic.
    pub ufrag: String,
    /// The remote addresses its datagrams came from (the demultiplexing keys of the rest).
    pub addresses: Vec<SocketAddr>,
    pub joined_at: Instant,
    /// When its WebRTC session came up (ICE and DTLS); `None` until then.
    pub connected_at: Option<Instant>,
    /// When it must be connected by, or be removed.
    pub connect_deadline: Instant,
    /// When its `Rtc` next wants the clock (its key in the SFU's timer set).
    pub next_timeout: Option<Instant>,
    /// The line of its own audio, once offered, and whether an answer took it.
    uplink: Option<(Mid, Line)>,
    outbound: Vec<Outbound>,
    pending: Option<SdpPendingOffer>,
    /// The room changed while an offer was outstanding.
    stale: bool,
}

impl Participant {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        peer: Peer,
        user_id: String,
        name: Option<String>,
        channel: String,
        rtc: Rtc,
        ufrag: String,
        now: Instant,
        connect_deadline: Instant,
    ) -> Participant {
        Participant {
            peer,
            user_id,
            name,
            channel,
            muted: false,
            rtc,
            ufrag,
            addresses: Vec::new(),
            joined_at: now,
            connected_at: None,
            connect_deadline,
            next_timeout: None,
            uplink: None,
            outbound: Vec::new(),
            pending: None,
            stale: false,
        }
    }

    /// The SDP offer that brings this participant's session in line with `others`
    /// (who else is in the room now): `None` when nothing needs negotiating, or when an
    /// offer is outstanding (the change then goes out once it is answered).
    pub fn offer(&mut self, others: &[(ParticipantId, &str)]) -> Option<String> {
        if self.pending.is_some() {
            self.stale = true;
            return None;
        }
        let mut change = self.rtc.sdp_api();
        if self.uplink.is_none() {
            let stream = Some(self.user_id.clone());
            let mid = change.add_media(MediaKind::Audio, Direction::RecvOnly, stream, None, None);
            self.uplink = Some((mid, Line::Offered));
        }
        for (source, user_id) in others {
            if self.outbound.iter().any(|o| o.source == *source) {
                continue;
            }
            // The stream id names whose audio the track carries (`MediaStream.id`).
            let stream = Some((*user_id).to_owned());
            let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, stream, None, None);
            self.outbound.push(Outbound {
                source: *source,
                mid,
                line: Line::Offered,
            });
        }
        for outbound in &mut self.outbound {
            let gone = !others.iter().any(|(id, _)| *id == outbound.source);
            if gone && outbound.line == Line::Open {
                change.stop_media(outbound.mid);
                outbound.line = Line::Stopping;
            }
        }
        let (offer, pending) = change.apply()?;
        self.pending = Some(pending);
        Some(offer.to_sdp_string())
    }

    /// Takes the client's answer to the outstanding offer. `Ok(true)` when the room
    /// changed meanwhile and another offer is due.
    pub fn answer(&mut self, sdp: &str) -> Result<bool, AnswerError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| AnswerError::Unparsable(e.to_string()))?;
        let pending = self.pending.take().ok_or(AnswerError::NoOffer)?;
        if let Err(e) = self.rtc.sdp_api().accept_answer(pending, answer) {
            // The offer is spent and changed nothing: what it added is forgotten and
            // what it stopped is open still, to be offered again.
            self.settle(|line| match line {
                Line::Offered => None,
                Line::Open | Line::Stopping => Some(Line::Open),
            });
            self.stale = true;
            return Err(AnswerError::Refused(e.to_string()));
        }
        self.settle(|line| match line {
            Line::Offered | Line::Open => Some(Line::Open),
            Line::Stopping => None,
        });
        Ok(std::mem::take(&mut self.stale))
    }

    /// Every line's next state once an offer is settled; `None` drops it.
    fn settle(&mut self, next: impl Fn(Line) -> Option<Line>) {
        self.uplink = self
            .uplink
            .and_then(|(mid, line)| next(line).map(|line| (mid, line)));
        self.outbound.retain_mut(|o| match next(o.line) {
            Some(line) => {
                o.line = line;
                true
            }
            None => false,
        });
    }

    /// Whether `mid` is this participant's own audio.
    pub fn is_uplink(&self, mid: Mid) -> bool {
        self.uplink.is_some_and(|(uplink, _)| uplink == mid)
    }

    /// The line that carries `source`'s audio to this participant, once negotiated.
    pub fn line_for(&self, source: ParticipantId) -> Option<Mid> {
        self.outbound
            .iter()
            .find(|o| o.source == source && o.line == Line::Open)
            .map(|o| o.mid)
    }
}
