//! The names edgefilter keeps and forwards — tenant names, user names and scopes — as types
//! that can only hold text their rule allows ([`TenantName`], [`UserName`], [`Scope`]).
//!
//! A tenant or user name is written into the request sent upstream (`X-Edgefilter-Tenant`,
//! `X-Edgefilter-User`), printed by the CLI and put into answers, so its rule is narrow: 1 to
//! [`NAME_MAX_BYTES`] bytes of `A-Z a-z 0-9 . _ @ + -`, starting with a letter or a digit (an
//! e-mail address is a valid user name). A scope follows RFC 6749's `scope-token`: 1 to
//! [`SCOPE_MAX_BYTES`] bytes of printable ASCII other than space, `"` and `\`. Neither can hold
//! a control character, so neither can end a header line or steer a terminal.
//!
//! The rule is checked wherever a name enters: the CLI's argument parsers, the admin API, the
//! store's rules for a new key (both backends), the config's route scopes, and the loader that
//! turns stored rows into the proxy's key cache (a row written by hand or by an older version
//! is refused there). A [`NameError`] says which rule was broken ([`NameError::rule`]) and never
//! repeats the name (it may be anything, even a key pasted into the wrong field).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

/// The longest tenant or user name, in bytes.
pub const NAME_MAX_BYTES: usize = 128;

/// The longest scope, in bytes.
pub const SCOPE_MAX_BYTES: usize = 128;

/// The tenant and user name rule, as the docs and every error state it.
pub const NAME_RULE: &str =
    "1 to 128 bytes of A-Z a-z 0-9 . _ @ + -, starting with a letter or a digit";

/// The scope rule, as the docs and every error state it.
pub const SCOPE_RULE: &str =
    "1 to 128 bytes of printable ASCII other than space, \" and \\ (an RFC 6749 scope-token)";

/// Which kind of name a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A tenant's name ([`NAME_RULE`]).
    Tenant,
    /// A user's name ([`NAME_RULE`]).
    User,
    /// A scope ([`SCOPE_RULE`]).
    Scope,
}

impl NameKind {
    /// What the kind is called in messages: `tenant name`, `user name`, `scope`.
    #[must_use]
    pub const fn noun(self) -> &'static str {
        match self {
            Self::Tenant => "tenant name",
            Self::User => "user name",
            Self::Scope => "scope",
        }
    }

    /// The kind's rule in words.
    #[must_use]
    pub const fn rule(self) -> &'static str {
        match self {
            Self::Tenant | Self::User => NAME_RULE,
            Self::Scope => SCOPE_RULE,
        }
    }

    /// The longest name of this kind, in bytes.
    #[must_use]
    pub const fn max_bytes(self) -> usize {
        match self {
            Self::Tenant | Self::User => NAME_MAX_BYTES,
            Self::Scope => SCOPE_MAX_BYTES,
        }
    }

    /// Whether `c` may appear in a name of this kind (anywhere, first or not).
    fn allows(self, c: char) -> bool {
        match self {
            Self::Tenant | Self::User => {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-')
            }
            // RFC 6749 §3.3: NQCHAR = %x21 / %x23-5B / %x5D-7E.
            Self::Scope => c.is_ascii_graphic() && c != '"' && c != '\\',
        }
    }

    /// Whether `c` may start a name of this kind.
    fn allows_first(self, c: char) -> bool {
        match self {
            Self::Tenant | Self::User => c.is_ascii_alphanumeric(),
            Self::Scope => self.allows(c),
        }
    }
}

/// Which part of a rule a name breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// No text at all.
    Empty,
    /// More bytes than the kind allows.
    TooLong {
        /// The name's length in bytes.
        len: usize,
    },
    /// A control character (CR, LF, NUL, ESC, DEL, a C1 control …) at byte `at`.
    Control {
        /// Byte offset.
        at: usize,
        /// The character.
        ch: char,
    },
    /// A character outside the kind's set at byte `at`.
    NotAllowed {
        /// Byte offset.
        at: usize,
        /// The character.
        ch: char,
    },
    /// Starts with a character that may appear only later.
    First {
        /// The character.
        ch: char,
    },
}

/// A name that breaks its rule: which kind, and what is wrong. Never holds the name itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} {}; a {} is {}", kind.noun(), Problem(*broken), kind.noun(), kind.rule())]
pub struct NameError {
    /// The kind of name.
    pub kind: NameKind,
    /// What is wrong with it.
    pub broken: Broken,
}

impl NameError {
    /// The broken rule as a machine-readable word: `empty`, `too_long`, `control_character`,
    /// `character_not_allowed` or `first_character`.
    #[must_use]
    pub const fn rule(&self) -> &'static str {
        match self.broken {
            Broken::Empty => "empty",
            Broken::TooLong { .. } => "too_long",
            Broken::Control { .. } => "control_character",
            Broken::NotAllowed { .. } => "character_not_allowed",
            Broken::First { .. } => "first_character",
        }
    }

    /// What is wrong, without the rule: `user name holds a control character (U+000D) at
    /// byte 1`.
    #[must_use]
    pub fn problem(&self) -> String {
        format!("{} {}", self.kind.noun(), Problem(self.broken))
    }
}

/// What is wrong, in words; characters are shown as `U+XXXX` (and printable ASCII also as
/// itself), so the message can hold no control or invisible character.
struct Problem(Broken);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Broken::Empty => f.write_str("is empty"),
            Broken::TooLong { len } => write!(f, "is {len} bytes long"),
            Broken::Control { at, ch } => {
                write!(f, "holds a control character ({}) at byte {at}", Shown(ch))
            }
            Broken::NotAllowed { at, ch } => {
                write!(f, "holds {} at byte {at}, which is not allowed", Shown(ch))
            }
            Broken::First { ch } => write!(f, "starts with {}", Shown(ch)),
        }
    }
}

/// A character as an error shows it: `U+000D`, or `` `/` (U+002F) `` when printable ASCII.
struct Shown(char);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = u32::from(self.0);
        if self.0.is_ascii_graphic() && self.0 != '`' {
            write!(f, "`{}` (U+{code:04X})", self.0)
        } else {
            write!(f, "U+{code:04X}")
        }
    }
}

/// Checks `s` against the rule of `kind`: length first, then every character, then the first.
///
/// # Errors
/// A [`NameError`] naming the first part of the rule `s` breaks.
pub fn check(kind: NameKind, s: &str) -> Result<(), NameError> {
    let broken = |broken| Err(NameError { kind, broken });
    if s.is_empty() {
        return broken(Broken::Empty);
    }
    if s.len() > kind.max_bytes() {
        return broken(Broken::TooLong { len: s.len() });
    }
    for (at, ch) in s.char_indices() {
        if ch.is_control() {
            return broken(Broken::Control { at, ch });
        }
        if !kind.allows(ch) {
            return broken(Broken::NotAllowed { at, ch });
        }
    }
    match s.chars().next() {
        Some(ch) if !kind.allows_first(ch) => broken(Broken::First { ch }),
        _ => Ok(()),
    }
}

/// Defines a name type: valid by construction, cheap to clone, read as a `&str`.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The kind of name this type holds.
            pub const KIND: NameKind = $kind;

            /// `s` as this name.
            ///
            /// # Errors
            /// A [`NameError`] when `s` breaks the rule.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check(Self::KIND, s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The name as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                *self.0 == *other
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }
    };
}

name_type!(
    /// A tenant's name ([`NAME_RULE`]); written upstream as `X-Edgefilter-Tenant`.
    TenantName,
    NameKind::Tenant
);

name_type!(
    /// A user's name ([`NAME_RULE`]); written upstream as `X-Edgefilter-User`.
    UserName,
    NameKind::User
);

name_type!(
    /// A scope a key grants or a route needs ([`SCOPE_RULE`]).
    Scope,
    NameKind::Scope
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack from the issue: a user name that ends the header and starts a request.
    const SMUGGLER: &str = "u\r\nX-Edgefilter-Tenant: root\r\nContent-Length: 0\r\n\r\nGET /admin/pwned HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn ordinary_names_and_emails_are_valid() {
        for ok in [
            "acme",
            "alice",
            "a",
            "9",
            "alice@example.com",
            "first.last+tag@mail.example.co.uk",
            "svc_billing-2",
            "ACME-Corp.EU",
            &"x".repeat(NAME_MAX_BYTES),
        ] {
            assert_eq!(
                UserName::parse(ok).map(|n| n.to_string()),
                Ok(ok.to_owned())
            );
            assert!(TenantName::parse(ok).is_ok(), "{ok}");
        }
        for ok in [
            "ai:invoke",
            "read:users",
            "https://api.example.com/auth/drive.readonly",
            "a,b",
            "*",
            "{x}[y]~!#$%&'()*+-./;<=>?^_`|",
        ] {
            assert!(Scope::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn every_broken_rule_is_named_and_the_name_is_never_repeated() {
        let long = "a".repeat(60 * 1024);
        let cases: [(NameKind, &str, &str, &str); 16] = [
            (
                NameKind::User,
                SMUGGLER,
                "control_character",
                "(U+000D) at byte 1",
            ),
            (
                NameKind::User,
                "u\nv",
                "control_character",
                "(U+000A) at byte 1",
            ),
            (
                NameKind::User,
                "u\0",
                "control_character",
                "(U+0000) at byte 1",
            ),
            (
                NameKind::Tenant,
                "t\u{1b}[2J",
                "control_character",
                "U+001B",
            ),
            (NameKind::Tenant, "t\u{7f}", "control_character", "U+007F"),
            (NameKind::Tenant, "t\u{85}", "control_character", "U+0085"),
            (NameKind::User, "", "empty", "is empty"),
            (NameKind::User, &long, "too_long", "is 61440 bytes long"),
            (
                NameKind::User,
                "a b",
                "character_not_allowed",
                "U+0020 at byte 1",
            ),
            (
                NameKind::User,
                "a:b",
                "character_not_allowed",
                "`:` (U+003A) at byte 1",
            ),
            (
                NameKind::User,
                "jos\u{e9}",
                "character_not_allowed",
                "U+00E9 at byte 3",
            ),
            (
                NameKind::User,
                "a\u{202e}b",
                "character_not_allowed",
                "U+202E",
            ),
            (NameKind::User, "-rf", "first_character", "starts with `-`"),
            (
                NameKind::Tenant,
                ".hidden",
                "first_character",
                "starts with `.`",
            ),
            (
                NameKind::Scope,
                "ai invoke",
                "character_not_allowed",
                "U+0020",
            ),
            (
                NameKind::Scope,
                "a\"b",
                "character_not_allowed",
                "`\"` (U+0022)",
            ),
        ];
        for (kind, name, rule, says) in cases {
            let e = check(kind, name).expect_err(name);
            assert_eq!((e.kind, e.rule()), (kind, rule), "{name:?}");
            let msg = e.to_string();
            assert!(msg.contains(says), "{name:?}: {msg}");
            assert!(msg.contains(kind.rule()), "{msg}");
            assert!(!msg.chars().any(char::is_control), "{msg:?}");
            if name.len() > 3 {
                assert!(!msg.contains(name), "the name is repeated: {msg}");
            }
        }
        assert_eq!(
            Scope::parse(&"s".repeat(SCOPE_MAX_BYTES + 1)).map_err(|e| e.rule()),
            Err("too_long")
        );
        assert!(UserName::parse(&"u".repeat(NAME_MAX_BYTES + 1)).is_err());
    }

    #[test]
    fn a_name_reads_as_its_text() {
        let n = TenantName::parse("acme").unwrap();
        assert_eq!(&*n, "acme");
        assert_eq!(n.as_bytes(), b"acme");
        assert_eq!(format!("{n} {n:?}"), "acme \"acme\"");
        assert!(n == *"acme");
        assert_eq!("acme".parse::<TenantName>(), Ok(n.clone()));
        assert_eq!(String::from(n), "acme");
    }
}
