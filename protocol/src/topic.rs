//! Topics (`namespace:id` or `global`) and the subscription patterns of the JWT `topics`
//! claim (PROTOCOL.md §3).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

/// The longest topic (and pattern) accepted, in bytes (PROTOCOL.md §3): room for
/// `presence:<sub>`, the longest automatic topic, with the longest `sub` a token may
/// carry (128 bytes, [`crate::Claims::MAX_SUB_LEN`]), and some to spare.
pub const MAX_TOPIC_LEN: usize = 160;
const _: () = assert!(MAX_TOPIC_LEN >= "presence:".len() + crate::claims::Claims::MAX_SUB_LEN);

/// Why a topic or pattern was rejected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// The empty string.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("topic is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A byte outside printable ASCII (0x21..=0x7E): spaces, control characters, non-ASCII.
    #[error("topic contains invalid byte 0x{byte:02x} (only printable ASCII without spaces)")]
    InvalidCharacter {
        /// The first offending byte.
        byte: u8,
    },
    /// `namespace:` with nothing after the colon, or a namespace with no colon at all.
    #[error("topic has no id after its namespace")]
    MissingId,
    /// A namespace not in the table of PROTOCOL.md §3.
    #[error("unknown topic namespace {0:?}")]
    UnknownNamespace(String),
    /// `global` takes no id (`global:x` is not a topic).
    #[error("the global topic takes no id")]
    GlobalTakesNoId,
}

/// The namespace of a topic, which decides who may subscribe and who feeds it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// `channel:<id>`: backend events and typing.
    Channel,
    /// `server:<id>`: guild/community-wide events.
    Server,
    /// `user:<sub>`: only that user; auto-subscribed.
    User,
    /// `presence:<sub>`: the presence tracker.
    Presence,
    /// `voice:<id>`: the voice module.
    Voice,
    /// `global`: everyone; auto-subscribed.
    Global,
}

impl Namespace {
    /// Every namespace.
    pub const ALL: [Namespace; 6] = [
        Namespace::Channel,
        Namespace::Server,
        Namespace::User,
        Namespace::Presence,
        Namespace::Voice,
        Namespace::Global,
    ];

    /// The namespace as written before the colon (`global` has no colon).
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Channel => "channel",
            Namespace::Server => "server",
            Namespace::User => "user",
            Namespace::Presence => "presence",
            Namespace::Voice => "voice",
            Namespace::Global => "global",
        }
    }

    fn from_prefix(s: &str) -> Option<Namespace> {
        Some(match s {
            "channel" => Namespace::Channel,
            "server" => Namespace::Server,
            "user" => Namespace::User,
            "presence" => Namespace::Presence,
            "voice" => Namespace::Voice,
            "global" => Namespace::Global,
            _ => return None,
        })
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated topic name.
///
/// Backed by an `Arc<str>` because topics are cloned into every shard's table and every
/// publication: cloning is a reference-count bump, not an allocation. Equality, ordering
/// and hashing are those of the string, so `HashMap<Topic, _>` can be queried with a `&str`.
/// The namespace is read back from the name rather than kept beside it: 16 bytes, not
/// 24, in every table that holds a topic per connection (its `user:<sub>`).
#[derive(Clone)]
pub struct Topic {
    name: Arc<str>,
}

fn check_chars(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: MAX_TOPIC_LEN,
        });
    }
    match s.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        Some(byte) => Err(TopicError::InvalidCharacter { byte }),
        None => Ok(()),
    }
}

fn classify(s: &str) -> Result<Namespace, TopicError> {
    check_chars(s)?;
    match s.split_once(':') {
        None if s == "global" => Ok(Namespace::Global),
        None => match Namespace::from_prefix(s) {
            Some(_) => Err(TopicError::MissingId),
            None => Err(TopicError::UnknownNamespace(s.to_owned())),
        },
        Some((ns, id)) => match Namespace::from_prefix(ns) {
            Some(Namespace::Global) => Err(TopicError::GlobalTakesNoId),
            Some(_) if id.is_empty() => Err(TopicError::MissingId),
            Some(namespace) => Ok(namespace),
            None => Err(TopicError::UnknownNamespace(ns.to_owned())),
        },
    }
}

impl Topic {
    /// Validates `s`: `namespace:id` with a namespace of the table, or the bare `global`;
    /// printable ASCII (0x21..=0x7E) only; at most [`MAX_TOPIC_LEN`] bytes; non-empty id.
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        classify(s)?;
        Ok(Topic { name: Arc::from(s) })
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Its namespace.
    pub fn namespace(&self) -> Namespace {
        let prefix = self.name.split_once(':').map_or(&*self.name, |(ns, _)| ns);
        // The name was classified when the topic was made: only `global` has no
        // namespace of the table before a colon.
        Namespace::from_prefix(prefix).unwrap_or(Namespace::Global)
    }

    /// The part after the first colon; `""` for `global`.
    pub fn id(&self) -> &str {
        match self.name.split_once(':') {
            Some((_, id)) => id,
            None => "",
        }
    }

    /// The `global` topic every connection is subscribed to.
    pub fn global() -> Topic {
        thread_local! {
            /// One name per thread for every connection's `global`, instead of an
            /// allocation each.
            static GLOBAL: Arc<str> = Arc::from("global");
        }
        Topic {
            name: GLOBAL.with(Arc::clone),
        }
    }

    /// `user:<sub>`, the topic every connection of `sub` is subscribed to.
    pub fn user(sub: &str) -> Result<Topic, TopicError> {
        Self::with_namespace(Namespace::User, sub)
    }

    /// `presence:<sub>`.
    pub fn presence(sub: &str) -> Result<Topic, TopicError> {
        Self::with_namespace(Namespace::Presence, sub)
    }

    /// `<namespace>:<id>` (or `global` when `namespace` is `Global` and `id` is empty).
    pub fn with_namespace(namespace: Namespace, id: &str) -> Result<Topic, TopicError> {
        if namespace == Namespace::Global {
            return if id.is_empty() {
                Ok(Topic::global())
            } else {
                Err(TopicError::GlobalTakesNoId)
            };
        }
        let mut s = String::with_capacity(namespace.as_str().len() + 1 + id.len());
        s.push_str(namespace.as_str());
        s.push(':');
        s.push_str(id);
        Topic::parse(&s)
    }
}

impl PartialEq for Topic {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for Topic {}
impl Hash for Topic {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}
impl PartialOrd for Topic {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Topic {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}
impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}
impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Topic").field(&self.as_str()).finish()
    }
}
impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::parse(s)
    }
}
impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Topic::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One entry of the JWT `topics` claim: an exact topic, or a prefix ending in `*`
/// (`channel:*`, `*`) that matches any suffix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    /// The pattern without its trailing `*` when `prefix` is set.
    text: Box<str>,
    prefix: bool,
}

impl TopicPattern {
    /// Parses a pattern. A trailing `*` makes it a prefix match; anything else must be a
    /// valid [`Topic`], so that a typo in a claim is caught rather than silently matching
    /// nothing. Prefix patterns only need the topic character set and length.
    pub fn parse(s: &str) -> Result<TopicPattern, TopicError> {
        match s.strip_suffix('*') {
            Some(prefix) => {
                check_chars(s)?;
                Ok(TopicPattern {
                    text: prefix.into(),
                    prefix: true,
                })
            }
            None => {
                classify(s)?;
                Ok(TopicPattern {
                    text: s.into(),
                    prefix: false,
                })
            }
        }
    }

    /// Whether `topic` is allowed by this pattern.
    pub fn matches(&self, topic: &Topic) -> bool {
        if self.prefix {
            topic.as_str().starts_with(&*self.text)
        } else {
            topic.as_str() == &*self.text
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// A set of patterns, as carried by one token: a topic is allowed if any pattern matches.
/// Every connection keeps its token's set for its life, so it is exactly as long as the
/// claim, and shared: connections whose tokens carry the same claim can hold one copy.
/// A thin pointer (8 bytes in each session, not 16): the slice's length is kept once,
/// in the shared copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPatterns(Arc<Box<[TopicPattern]>>);

impl Default for TopicPatterns {
    /// The empty set, one copy for the process: it is the default of every connection
    /// the backend's connect call authenticates without a token.
    fn default() -> Self {
        static EMPTY: std::sync::OnceLock<TopicPatterns> = std::sync::OnceLock::new();
        EMPTY
            .get_or_init(|| TopicPatterns(Arc::new(Box::default())))
            .clone()
    }
}

impl TopicPatterns {
    /// Whether any pattern matches `topic`. An empty set allows nothing.
    pub fn allows(&self, topic: &Topic) -> bool {
        self.0.iter().any(|p| p.matches(topic))
    }

    /// Parses every pattern; the first bad one is the error.
    pub fn parse_list<'a>(it: impl IntoIterator<Item = &'a str>) -> Result<Self, TopicError> {
        it.into_iter()
            .map(TopicPattern::parse)
            .collect::<Result<Box<[_]>, _>>()
            .map(|patterns| TopicPatterns(Arc::new(patterns)))
    }

    /// Whether both are the same shared copy, not only equal.
    pub fn is_same_copy(&self, other: &TopicPatterns) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::parse(s).expect("valid topic")
    }

    #[test]
    fn valid_topics() {
        let cases = [
            ("channel:1", Namespace::Channel, "1"),
            ("server:42", Namespace::Server, "42"),
            ("user:alice", Namespace::User, "alice"),
            ("presence:bob", Namespace::Presence, "bob"),
            ("voice:room-7", Namespace::Voice, "room-7"),
            ("channel:a:b", Namespace::Channel, "a:b"),
            ("global", Namespace::Global, ""),
        ];
        for (s, ns, id) in cases {
            let topic = t(s);
            assert_eq!(topic.as_str(), s);
            assert_eq!(topic.namespace(), ns);
            assert_eq!(topic.id(), id);
            assert_eq!(topic.to_string(), s);
            assert_eq!(s.parse::<Topic>(), Ok(topic));
        }
        // Held per connection in several tables (its `user:<sub>`): a name and no more.
        assert_eq!(std::mem::size_of::<Topic>(), 16);
        // And a session keeps its token's patterns; the empty set is one shared copy.
        assert_eq!(std::mem::size_of::<TopicPatterns>(), 8);
        assert!(TopicPatterns::default().is_same_copy(&TopicPatterns::default()));
        let max = format!("channel:{}", "x".repeat(MAX_TOPIC_LEN - 8));
        assert_eq!(t(&max).as_str().len(), MAX_TOPIC_LEN);
    }

    #[test]
    fn invalid_topics() {
        let long = format!("channel:{}", "x".repeat(MAX_TOPIC_LEN - 7));
        let cases: [(&str, TopicError); 11] = [
            ("", TopicError::Empty),
            (
                &long,
                TopicError::TooLong {
                    len: MAX_TOPIC_LEN + 1,
                    max: MAX_TOPIC_LEN,
                },
            ),
            ("channel:a b", TopicError::InvalidCharacter { byte: b' ' }),
            ("channel:\n", TopicError::InvalidCharacter { byte: b'\n' }),
            ("channel:é", TopicError::InvalidCharacter { byte: 0xc3 }),
            ("channel:\x7f", TopicError::InvalidCharacter { byte: 0x7f }),
            ("channel:", TopicError::MissingId),
            ("channel", TopicError::MissingId),
            ("room:1", TopicError::UnknownNamespace("room".into())),
            ("globalx", TopicError::UnknownNamespace("globalx".into())),
            ("global:1", TopicError::GlobalTakesNoId),
        ];
        for (s, err) in cases {
            assert_eq!(Topic::parse(s), Err(err), "{s:?}");
        }
    }

    #[test]
    fn constructors() {
        assert_eq!(Topic::global(), t("global"));
        assert_eq!(Topic::user("alice"), Ok(t("user:alice")));
        assert_eq!(Topic::presence("alice"), Ok(t("presence:alice")));
        assert_eq!(Topic::user(""), Err(TopicError::MissingId));
        assert_eq!(
            Topic::user("a b"),
            Err(TopicError::InvalidCharacter { byte: b' ' })
        );
        assert_eq!(
            Topic::with_namespace(Namespace::Global, ""),
            Ok(Topic::global())
        );
    }

    #[test]
    fn the_longest_sub_has_its_user_and_presence_topics() {
        let sub = "s".repeat(crate::Claims::MAX_SUB_LEN);
        assert_eq!(Topic::user(&sub).expect("user topic").as_str().len(), 133);
        assert_eq!(
            Topic::presence(&sub)
                .expect("presence topic")
                .as_str()
                .len(),
            137
        );
    }

    #[test]
    fn equality_hash_and_borrow_follow_the_string() {
        use std::collections::HashSet;
        let mut set = HashSet::new();
        set.insert(t("channel:1"));
        assert!(set.contains("channel:1"));
        assert!(t("channel:1") < t("channel:2"));
    }

    #[test]
    fn serde_validates() {
        let topic: Topic = serde_json::from_str(r#""server:9""#).expect("valid");
        assert_eq!(topic, t("server:9"));
        assert_eq!(
            serde_json::to_string(&topic).expect("serialize"),
            r#""server:9""#
        );
        assert!(serde_json::from_str::<Topic>(r#""nope""#).is_err());
    }

    #[test]
    fn patterns() {
        let p = |s: &str| TopicPattern::parse(s).expect("valid pattern");
        assert!(p("channel:*").matches(&t("channel:1")));
        assert!(p("channel:*").matches(&t("channel:1:2")));
        assert!(!p("channel:*").matches(&t("server:1")));
        assert!(p("*").matches(&t("global")));
        assert!(p("*").matches(&t("voice:x")));
        assert!(p("server:42").matches(&t("server:42")));
        assert!(!p("server:42").matches(&t("server:420")));
        assert!(p("server:4*").matches(&t("server:420")));
        assert_eq!(p("channel:*").to_string(), "channel:*");
        assert_eq!(TopicPattern::parse(""), Err(TopicError::Empty));
        assert_eq!(
            TopicPattern::parse("room:1"),
            Err(TopicError::UnknownNamespace("room".into()))
        );
        assert_eq!(
            TopicPattern::parse("a b*"),
            Err(TopicError::InvalidCharacter { byte: b' ' })
        );

        let set = TopicPatterns::parse_list(["channel:*", "server:42"]).expect("valid");
        assert!(set.allows(&t("channel:9")));
        assert!(set.allows(&t("server:42")));
        assert!(!set.allows(&t("server:43")));
        assert!(!TopicPatterns::default().allows(&t("global")));
        assert!(TopicPatterns::parse_list(["channel:*", "bad"]).is_err());
    }
}
