//! How one setting's declaration becomes a file key, an environment variable, a flag
//! and help text: the [`Setting`] trait (per value type: parsing, reading from the
//! file, showing the default) and the text helpers the `define_config!` macro calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::ValueParser;
use clap::ValueEnum;
use serde::{Deserialize, Deserializer};

use super::{AuthorizerKind, LogFormat};

/// Every environment variable's prefix: `heartbeat_interval` is read from
/// `COREGATE_HEARTBEAT_INTERVAL`.
pub const ENV_PREFIX: &str = "COREGATE_";

/// A value type a setting can have.
pub trait Setting: Sized {
    /// What a flag or an environment variable holds: the value itself, or for an
    /// optional setting the value inside (`--shards 4` sets `Some(4)`).
    type Arg: Clone + Send + Sync + 'static;
    /// The placeholder in `--help`, e.g. `--listen <ADDR>`.
    const VALUE_NAME: &'static str;
    /// Parses a flag's or an environment variable's text into [`Setting::Arg`].
    fn value_parser() -> ValueParser;
    fn from_arg(arg: Self::Arg) -> Self;
    /// Reads the value from the configuration file.
    fn deserialize_setting<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
    /// The value as a flag would give it: what `[default: …]` shows.
    fn show(&self) -> String;
}

/// Types that parse with `FromStr` and read as themselves from the file.
macro_rules! plain_setting {
    ($($ty:ty => $value_name:literal, $parser:expr;)*) => {$(
        impl Setting for $ty {
            type Arg = $ty;
            const VALUE_NAME: &'static str = $value_name;
            fn value_parser() -> ValueParser {
                $parser.into()
            }
            fn from_arg(arg: $ty) -> $ty {
                arg
            }
            fn deserialize_setting<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                <$ty>::deserialize(d)
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

plain_setting! {
    usize => "N", clap::value_parser!(usize);
    u32 => "N", clap::value_parser!(u32);
    bool => "true|false", clap::value_parser!(bool);
    SocketAddr => "ADDR", clap::value_parser!(SocketAddr);
}

impl Setting for String {
    type Arg = String;
    const VALUE_NAME: &'static str = "TEXT";
    fn value_parser() -> ValueParser {
        ValueParser::string()
    }
    fn from_arg(arg: String) -> String {
        arg
    }
    fn deserialize_setting<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        String::deserialize(d)
    }
    fn show(&self) -> String {
        if self.is_empty() {
            "\"\"".to_owned()
        } else {
            self.clone()
        }
    }
}

impl Setting for PathBuf {
    type Arg = PathBuf;
    const VALUE_NAME: &'static str = "FILE";
    fn value_parser() -> ValueParser {
        ValueParser::path_buf()
    }
    fn from_arg(arg: PathBuf) -> PathBuf {
        arg
    }
    fn deserialize_setting<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        PathBuf::deserialize(d)
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// Durations are text everywhere, in humantime's syntax: `30s`, `100ms`, `1m 30s`.
impl Setting for Duration {
    type Arg = Duration;
    const VALUE_NAME: &'static str = "DURATION";
    fn value_parser() -> ValueParser {
        ValueParser::new(parse_duration)
    }
    fn from_arg(arg: Duration) -> Duration {
        arg
    }
    fn deserialize_setting<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 30s: {e}"))
}

/// `--history`: `PREFIX=SIZE/TTL,…`, as text everywhere.
impl Setting for coregate_shards::history::HistoryPolicy {
    type Arg = coregate_shards::history::HistoryPolicy;
    const VALUE_NAME: &'static str = "RULES";
    fn value_parser() -> ValueParser {
        ValueParser::new(coregate_shards::history::HistoryPolicy::parse)
    }
    fn from_arg(arg: Self::Arg) -> Self {
        arg
    }
    fn deserialize_setting<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        coregate_shards::history::HistoryPolicy::parse(&text).map_err(serde::de::Error::custom)
    }
    fn show(&self) -> String {
        if self.is_empty() {
            "\"\"".to_owned()
        } else {
            self.to_string()
        }
    }
}

/// An optional setting: unset by default, a flag or a file key sets it. (A TOML file
/// has no null, so a file cannot unset it either: leave the key out.)
impl<T> Setting for Option<T>
where
    T: Setting<Arg = T> + Clone + Send + Sync + 'static,
{
    type Arg = T;
    const VALUE_NAME: &'static str = T::VALUE_NAME;
    fn value_parser() -> ValueParser {
        T::value_parser()
    }
    fn from_arg(arg: T) -> Option<T> {
        Some(arg)
    }
    fn deserialize_setting<'de, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        T::deserialize_setting(d).map(Some)
    }
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "none".to_owned(), T::show)
    }
}

/// Closed sets of words: `--help` lists them, the file spells them the same.
macro_rules! enum_setting {
    ($($ty:ty),*) => {$(
        impl Setting for $ty {
            type Arg = $ty;
            const VALUE_NAME: &'static str = "WORD";
            fn value_parser() -> ValueParser {
                clap::builder::EnumValueParser::<$ty>::new().into()
            }
            fn from_arg(arg: $ty) -> $ty {
                arg
            }
            fn deserialize_setting<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                <$ty>::deserialize(d)
            }
            fn show(&self) -> String {
                self.to_possible_value()
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default()
            }
        }
    )*};
}

enum_setting!(AuthorizerKind, LogFormat);

/// `COREGATE_` and the setting's name in capitals, as bytes; see `env_name!`.
pub const fn env_var_name<const N: usize>(name: &str) -> [u8; N] {
    let prefix = ENV_PREFIX.as_bytes();
    let name = name.as_bytes();
    assert!(prefix.len() + name.len() == N, "wrong length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < prefix.len() {
        out[i] = prefix[i];
        i += 1;
    }
    let mut j = 0;
    while j < name.len() {
        out[prefix.len() + j] = name[j].to_ascii_uppercase();
        j += 1;
    }
    out
}

/// The environment variable of a setting, computed at compile time:
/// `env_name!(heartbeat_interval)` is `"COREGATE_HEARTBEAT_INTERVAL"`.
macro_rules! env_name {
    ($name:ident) => {{
        const NAME: &str = stringify!($name);
        const BYTES: [u8; $crate::config::settings::ENV_PREFIX.len() + NAME.len()] =
            $crate::config::settings::env_var_name(NAME);
        const ENV: &str = match ::std::str::from_utf8(&BYTES) {
            Ok(env) => env,
            Err(_) => panic!("setting names are ASCII"),
        };
        ENV
    }};
}
pub(crate) use env_name;

/// A doc comment's paragraphs: lines trimmed and joined, blank lines between.
pub fn paragraphs(doc: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    // `"".lines()` is empty: split on '\n' so that a blank `///` line counts.
    for line in doc.iter().flat_map(|d| d.split('\n')).map(str::trim) {
        if line.is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(line);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `-h`: the doc's first paragraph and the default.
pub fn short_help(doc: &[&str], default: &str) -> String {
    let first = paragraphs(doc).into_iter().next().unwrap_or_default();
    format!("{first} [default: {default}]")
}

/// `--help`: the whole doc and the default.
pub fn long_help(doc: &[&str], default: &str) -> String {
    let mut text = paragraphs(doc).join("\n\n");
    text.push_str(&format!("\n\n[default: {default}]"));
    text
}

/// What the README and the tests know of a setting.
#[cfg(test)]
#[derive(Clone, Copy)]
pub struct SettingInfo {
    /// The file key; the flag is `--` and this with `-`.
    pub name: &'static str,
    /// `COREGATE_` and the name in capitals.
    pub env: &'static str,
    /// The section of `--help` (and of the README's table) it is listed in.
    pub heading: &'static str,
    pub doc: &'static [&'static str],
    /// The default, as `[default: …]` shows it.
    pub show_default: fn(&super::Config) -> String,
}

#[cfg(test)]
impl SettingInfo {
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }
}

/// README.md's settings table, generated from the declarations.
#[cfg(test)]
pub fn markdown_table(settings: &[SettingInfo]) -> String {
    let defaults = super::Config::default();
    let mut out = String::from("| flag | default | |\n|---|---|---|\n");
    let mut heading = "";
    for s in settings {
        if s.heading != heading {
            heading = s.heading;
            out.push_str(&format!("| **{heading}** | | |\n"));
        }
        let what = paragraphs(s.doc).into_iter().next().unwrap_or_default();
        out.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            s.flag(),
            (s.show_default)(&defaults),
            what.replace('|', "\\|")
        ));
    }
    out
}
