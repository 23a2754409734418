//! What the read-path targets share: a real [`LocalHub`] with trivial collaborators, a
//! virtual clock, and masked client frames.
#![allow(dead_code)] // each target uses its own part

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use coregate_protocol::{Encoding, TopicPatterns};
use coregate_shards::admission::Admission;
use coregate_shards::hub::{ConnKey, LocalHub, NodeLinks};
use coregate_shards::session::{Now, Start};
use coregate_shards::{
    AuthError, Identity, IngestorCommand, MembershipCheck, ShardConfig, ShardStats,
    SharedAuthorizer, TokenVerifier,
};

/// The wall clock's time at the start of every input, in unix seconds (2027).
pub const UNIX_START: u64 = 1_800_000_000;

/// Tokens: `"ok"` is user `fuzz`, `"ok:<user>"` is `<user>` (any string, so that
/// over-long and odd `sub`s reach the session), both valid for an hour from
/// [`UNIX_START`] and allowed `channel:*`; anything else has a bad signature.
pub struct FuzzVerifier;

impl TokenVerifier for FuzzVerifier {
    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let user = match token {
            "ok" => "fuzz",
            _ => token.strip_prefix("ok:").ok_or(AuthError::BadSignature)?,
        };
        Ok(Identity {
            user_id: user.into(),
            name: Some("Fuzz".into()),
            expires_at: UNIX_START + 3600,
            topics: TopicPatterns::parse_list(["channel:*", "voice:*"])
                .map_err(|_| AuthError::Malformed)?,
            extras: None,
        })
    }
}

/// `FUZZ_TRACE=1` prints what the server wrote, to see what one input does
/// (`cargo fuzz run <target> <input>`).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// One monotonic origin for the whole run: only differences from it matter.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// A hub with one connection, its clock and the other ends of its queues. Built fresh
/// for every input, so that an input's outcome does not depend on the ones before it.
pub struct Rig {
    pub hub: LocalHub,
    pub key: ConnKey,
    pub encoding: Encoding,
    pub elapsed: Duration,
    ingestor: flume::Receiver<IngestorCommand>,
    checks: Option<flume::Receiver<MembershipCheck>>,
    /// Voice ops for the SFU (dropped: the SFU's answers are not fuzzed here).
    voice: flume::Receiver<coregate_shards::VoiceRequest>,
    /// How the membership store answers the next checks: its bits, one per topic.
    pub verdict_bits: u8,
    /// Bytes the connection wrote, over the whole input.
    pub written: usize,
}

impl Rig {
    /// `identity`: the upgrade carried a valid token (ready at once) or not (identify
    /// in-band). `membership`: with the `redis` authorizer, answered by [`Rig::settle`].
    pub fn new(config: ShardConfig, encoding: Encoding, identity: bool, membership: bool) -> Rig {
        let (ingestor_tx, ingestor) = flume::bounded(1024);
        let (voice_tx, voice) = flume::bounded(64);
        let (authorizer, checks) = if membership {
            let (tx, rx) = flume::bounded(64);
            let authorizer =
                SharedAuthorizer::new(tx, Duration::from_secs(5), Duration::from_millis(100));
            (Some(authorizer), Some(rx))
        } else {
            (None, None)
        };
        let admission = Arc::new(Admission::new(&config));
        let mut hub = LocalHub::new(
            0,
            Arc::new(config),
            Arc::new(ShardStats::default()),
            Arc::new(FuzzVerifier),
            admission.clone(),
            NodeLinks {
                ingestor: ingestor_tx,
                authorizer,
                backend: None,
                voice: Some(coregate_shards::SharedVoice::new(voice_tx)),
            },
        );
        let start = if identity {
            let identity = FuzzVerifier.verify("ok").expect("the fuzz token");
            let user = admission
                .claim_user(identity)
                .expect("the first connection of its user");
            Start::Ready { user, data: None }
        } else {
            Start::Identify
        };
        let elapsed = Duration::ZERO;
        let key = hub.connect(encoding, start, now(elapsed));
        Rig {
            hub,
            key,
            encoding,
            elapsed,
            ingestor,
            checks,
            voice,
            verdict_bits: 0xff,
            written: 0,
        }
    }

    pub fn now(&self) -> Now {
        now(self.elapsed)
    }

    /// Bytes read from the socket.
    pub fn input(&mut self, bytes: &[u8]) {
        let now = self.now();
        self.hub.handle_input(self.key, bytes, now);
        self.settle();
    }

    /// Writes everything the connection has to write, as its driver would.
    pub fn drain(&mut self) {
        let now = self.now().instant;
        while let Some(transmit) = self.hub.poll_transmit(self.key, now) {
            let bytes = transmit.bytes(self.encoding);
            self.written += bytes.len();
            if trace() {
                eprintln!("server wrote: {:?}", String::from_utf8_lossy(bytes));
            }
        }
    }

    /// Moves the clock and sweeps deadlines, as the shard's sweeper does.
    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        let now = self.now().instant;
        self.hub.handle_timeouts(now);
        self.settle();
    }

    /// Plays the node's side: the ingestor takes its commands, the membership store
    /// answers every question asked so far.
    pub fn settle(&mut self) {
        self.ingestor.drain().for_each(drop);
        self.voice.drain().for_each(drop);
        let Some(checks) = &self.checks else {
            return;
        };
        for check in checks.drain() {
            let answer = match self.verdict_bits {
                0 => Err(coregate_shards::MembershipError::Unavailable),
                bits => Ok((0..check.topics.len())
                    .map(|i| bits & (1 << (i % 8)) != 0)
                    .collect()),
            };
            let _ = check.reply.send(answer);
        }
        let now = self.now().instant;
        for wait in self.hub.take_membership_waits() {
            let answer =
                wait.answer
                    .try_recv()
                    .unwrap_or(Err(coregate_shards::MembershipError::TimedOut(
                        wait.timeout,
                    )));
            self.hub.finish_check(wait.check_id, answer, now);
        }
    }

    /// The connection ends.
    pub fn finish(mut self) {
        self.hub.remove(self.key);
        self.settle();
        assert_eq!(self.hub.connection_count(), 0);
    }
}

pub fn now(elapsed: Duration) -> Now {
    Now {
        instant: origin() + elapsed,
        unix_secs: UNIX_START + elapsed.as_secs(),
    }
}

/// The mask every client frame here uses; any mask is as good to the server.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: `first` is the first header byte as sent (FIN, RSV, opcode);
/// masked unless `unmasked` (a protocol violation the server must close on).
pub fn client_frame(first: u8, payload: &[u8], unmasked: bool, out: &mut Vec<u8>) {
    out.push(first);
    let mask_bit = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=65_535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    }
}

impl Rig {
    /// What a connection that never reads can make the server hold: the normal lane
    /// is closed at twice the outbound budget, the priority lane at the control budget
    /// (PRE_READY's is smaller); the slack is the few replies and the close frame that
    /// may follow the check.
    pub fn assert_bounded(&self) {
        let Some(session) = self.hub.session(self.key) else {
            return;
        };
        let config = self.hub.config();
        let bound = 2 * config.outbound_budget + config.control_budget + 4096;
        assert!(
            session.queued_bytes() <= bound,
            "{} bytes queued, over the bound of {bound}",
            session.queued_bytes()
        );
    }
}
