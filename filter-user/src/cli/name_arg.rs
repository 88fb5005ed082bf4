//! The command line's parser for names ([`crate::names`]): `--tenant`, `--user`, `--scope` and
//! the `users` commands' USER are checked as they are parsed, so a name that breaks its rule is
//! a usage error (exit 2) that names the argument and the rule, and never repeats the value (it
//! may hold control characters, or a key pasted into the wrong place).

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

use crate::names::{NameError, NameKind, Scope, TenantName, UserName};

/// A name type the command line takes.
pub trait ArgName: Clone + Send + Sync + 'static {
    /// Which rule it follows.
    const KIND: NameKind;

    /// `s` as this name.
    ///
    /// # Errors
    /// The rule `s` breaks.
    fn parse_arg(s: &str) -> Result<Self, NameError>;
}

impl ArgName for TenantName {
    const KIND: NameKind = Self::KIND;
    fn parse_arg(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

impl ArgName for UserName {
    const KIND: NameKind = Self::KIND;
    fn parse_arg(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

impl ArgName for Scope {
    const KIND: NameKind = Self::KIND;
    fn parse_arg(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

/// The value parser for `T`: `#[arg(long, value_parser = name_arg::<UserName>())]`.
#[derive(Debug)]
pub struct NameArg<T>(PhantomData<fn() -> T>);

impl<T> Clone for NameArg<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for NameArg<T> {}

/// The value parser for names of type `T`.
#[must_use]
pub fn name_arg<T: ArgName>() -> NameArg<T> {
    NameArg(PhantomData)
}

impl<T: ArgName> TypedValueParser for NameArg<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let parsed = match value.to_str() {
            Some(s) => T::parse_arg(s).map_err(|e| e.to_string()),
            None => Err(format!(
                "{} is not UTF-8; a {} is {}",
                T::KIND.noun(),
                T::KIND.noun(),
                T::KIND.rule()
            )),
        };
        parsed.map_err(|why| {
            let arg = arg.map_or_else(|| "...".to_owned(), ToString::to_string);
            cmd.clone().error(
                ErrorKind::ValueValidation,
                format!("invalid value for '{arg}': {why}"),
            )
        })
    }
}
