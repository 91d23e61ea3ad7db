//! Where each setting came from (the built-in default, a file, a variable, a command-line flag),
//! and configuration errors in an operator's words: the source that set the value, the key, and
//! what a valid value looks like; never a Rust type name.

use std::{collections::HashMap, fmt, path::PathBuf};

use figment::error::{Actual, Kind};

use super::env::{keys, EMBEDDED_DEFAULTS};

/// The layer a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// A config file (`--config`, or `config/default.toml` in the working directory).
    File(PathBuf),
    /// An environment variable, by name.
    Variable(String),
    /// A command-line flag, e.g. `--listen`.
    Flag(&'static str),
}

impl Origin {
    /// How specific the layer is: a value an operator set outranks a default when a rule
    /// between two keys is broken (the one they set is the one to blame).
    fn rank(&self) -> u8 {
        match self {
            Self::Default => 0,
            Self::File(_) => 1,
            Self::Variable(_) => 2,
            Self::Flag(_) => 3,
        }
    }

    /// The origin as `config show` prints it: `default`, a path, a variable name, a flag.
    pub fn short(&self) -> String {
        match self {
            Self::Default => "default".to_owned(),
            Self::File(path) => path.display().to_string(),
            Self::Variable(name) => name.clone(),
            Self::Flag(flag) => (*flag).to_owned(),
        }
    }

    /// The origin of `key` in an error message.
    fn describe(&self, key: &str) -> String {
        match self {
            Self::Default => format!("built-in default of {key}"),
            Self::File(path) => format!("{}, key {key}", path.display()),
            Self::Variable(name) => format!("environment variable {name}, key {key}"),
            Self::Flag(flag) => format!("command-line flag {flag}, key {key}"),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("built-in default"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Variable(name) => write!(f, "environment variable {name}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A command-line flag that sets a key (the top layer): `serve --listen` sets `server.listen`.
#[derive(Debug, Clone)]
pub struct FlagValue {
    pub flag: &'static str,
    pub key: &'static str,
    pub value: String,
}

/// The file that was read (if any) and the origin of every key that is not its built-in default.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub file: Option<PathBuf>,
    pub(super) origins: HashMap<String, Origin>,
}

impl Provenance {
    /// Where `key`'s value came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Every key (`section.key`, in the order of `config/default.toml`) with its origin.
    pub fn keys(&self) -> Vec<(String, Origin)> {
        keys(EMBEDDED_DEFAULTS)
            .map(|(_, key)| {
                let origin = self.origin(&key);
                (key, origin)
            })
            .collect()
    }

    /// One problem with one key's value, e.g.
    /// `environment variable NEO_LISTEN, key server.listen: "8080" is a port without an address;
    /// expected …`.
    pub(super) fn explain(&self, key: &str, kind: &Kind) -> String {
        let source = self.origin(key).describe(key);
        match kind {
            // A deserializer of ours wrote the problem and the valid form itself.
            Kind::Message(message) => format!("{source}: {message}"),
            Kind::InvalidValue(_, expected) if expected.starts_with("a nonzero") => {
                format!(
                    "{source}: must be at least 1; expected {}",
                    valid_form(key, expected)
                )
            }
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                format!(
                    "{source}: {} is not valid; expected {}",
                    shown(actual),
                    valid_form(key, expected)
                )
            }
            Kind::UnknownVariant(given, allowed) => format!(
                "{source}: {given:?} is not valid; expected one of {}",
                allowed.join(", ")
            ),
            Kind::UnknownField(field, _) => format!(
                "{source}: there is no key {field:?} here (a typo? every key: docs/operating.md#configuration)"
            ),
            Kind::MissingField(field) => format!("{source}: {field} must be set"),
            other => format!("{source}: {other}"),
        }
    }

    /// A rule broken (by one key's value, or between keys): where the value to blame came from
    /// (of the keys involved, the one an operator set: a default is never the one to blame), the
    /// rule with what would do, and the other keys' values with their origins.
    pub(super) fn explain_rule(
        &self,
        keys: &[&'static str],
        message: &str,
        value_of: impl Fn(&str) -> String,
    ) -> String {
        let mut keys: Vec<(&str, Origin)> = keys.iter().map(|k| (*k, self.origin(k))).collect();
        // Stable: among keys of the same origin, the rule's own first key.
        keys.sort_by_key(|(_, origin)| std::cmp::Reverse(origin.rank()));
        let Some(((blamed, origin), others)) = keys.split_first() else {
            return message.to_owned();
        };
        let mut line = format!(
            "{} = {}: {message}",
            origin.describe(blamed),
            value_of(blamed)
        );
        if !others.is_empty() {
            let others: Vec<String> = others
                .iter()
                .map(|(key, origin)| format!("{key} is {}, from the {origin}", value_of(key)))
                .collect();
            line.push_str(&format!("; {}", others.join("; ")));
        }
        line
    }
}

/// A value in an error, as an operator wrote it (a string quoted, a number as it is).
fn shown(actual: &Actual) -> String {
    match actual {
        Actual::Bool(b) => b.to_string(),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Char(c) => format!("{c:?}"),
        Actual::Str(s) => format!("{s:?}"),
        Actual::Unit => "an empty value".to_owned(),
        Actual::Seq => "a list".to_owned(),
        Actual::Map => "a table".to_owned(),
        other => format!("{other}"),
    }
}

/// What a valid value of `key` looks like, from the type serde expected (said in words) and the
/// key's built-in default as an example.
fn valid_form(key: &str, expected: &str) -> String {
    let kind = match expected.trim_start_matches("a nonzero ") {
        "u16" => "a whole number from 0 to 65535",
        "u32" if expected.starts_with("a nonzero") => "a whole number from 1 to 4294967295",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" if expected.starts_with("a nonzero") => "a whole number of 1 or more",
        "u64" | "usize" => "a whole number of 0 or more",
        "a boolean" => "true or false",
        "a string" => "text (in a file: in double quotes)",
        other => other,
    };
    match example(key) {
        Some(example) => format!("{kind}, e.g. {example}"),
        None => kind.to_owned(),
    }
}

/// The value `config/default.toml` shows for `key` (its default, or the commented example).
pub(super) fn example(key: &str) -> Option<String> {
    let (section, field) = key.split_once('.')?;
    let mut current = "";
    for line in EMBEDDED_DEFAULTS.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name;
            continue;
        }
        if current != section {
            continue;
        }
        let line = line.strip_prefix('#').map_or(line, str::trim_start);
        if let Some((name, value)) = line.split_once(" = ") {
            if name == field {
                return Some(value.trim().to_owned());
            }
        }
    }
    None
}

/// Whether `key` takes text (its line in `config/default.toml` shows a quoted value): a
/// variable's value is then taken as it is, never read as a number or a boolean
/// (`NEO_LISTEN=8080` is the text "8080", so the error is about an address, not a type).
pub(super) fn takes_text(key: &str) -> bool {
    example(key).is_some_and(|value| value.starts_with('"'))
}
