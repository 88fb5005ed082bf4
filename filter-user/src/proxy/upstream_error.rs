//! Why an upstream exchange failed: one error type for the proxy's upstream boundary, keeping
//! the I/O cause, with the class (SPEC §8's `class` label of
//! `edgefilter_upstream_errors_total`, §9's `upstream_error`) decided once, here.
//!
//! Where in the exchange an error happened matters as much as its kind: a refused or
//! unreachable connect is `connect`, while an established connection that is reset, broken or
//! closed before a complete response head is `reset`.

use std::io;

pub use crate::codes::UpstreamErrorClass;

/// An upstream failure: its class and its cause.
#[derive(Debug, thiserror::Error)]
#[error("upstream {class}: {source}")]
pub struct UpstreamError {
    /// The class (the metric label).
    pub class: UpstreamErrorClass,
    /// What the OS or the proxy saw.
    #[source]
    pub source: io::Error,
}

impl UpstreamError {
    /// Connecting failed with `e` (refused, unreachable, or the OS gave up): `connect`. Our
    /// own deadline passing is [`UpstreamError::timeout`].
    #[must_use]
    pub fn connect(e: io::Error) -> Self {
        Self {
            class: UpstreamErrorClass::Connect,
            source: e,
        }
    }

    /// Sending to or reading from an established connection failed with `e`.
    #[must_use]
    pub fn io(e: io::Error) -> Self {
        // A TLS alert or error after the handshake (e.g. a client certificate refused under
        // TLS 1.3, which the client learns on its first read) is the TLS layer's.
        if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
            return Self {
                class: UpstreamErrorClass::Tls,
                source: e,
            };
        }
        let class = match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => UpstreamErrorClass::Timeout,
            io::ErrorKind::InvalidData => UpstreamErrorClass::BadResponse,
            // Reset, aborted, broken pipe, early EOF, and anything else on a live connection.
            _ => UpstreamErrorClass::Reset,
        };
        Self { class, source: e }
    }

    /// The TLS handshake failed: `what` says how (expired, unknown issuer, name mismatch, …).
    #[must_use]
    pub fn tls(what: String) -> Self {
        Self {
            class: UpstreamErrorClass::Tls,
            source: io::Error::other(what),
        }
    }

    /// `limits.upstream_timeout` passed.
    #[must_use]
    pub fn timeout() -> Self {
        Self::io(io::ErrorKind::TimedOut.into())
    }

    /// The upstream closed the connection before the answer was complete.
    #[must_use]
    pub fn closed_early() -> Self {
        Self::io(io::ErrorKind::UnexpectedEof.into())
    }

    /// The answer is malformed: `what` says how (never holds upstream bytes).
    #[must_use]
    pub fn bad_response(what: &'static str) -> Self {
        Self::io(io::Error::new(io::ErrorKind::InvalidData, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_specs() {
        let labels: Vec<_> = UpstreamErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            labels,
            ["connect", "tls", "reset", "timeout", "bad_response"]
        );
        assert_eq!(UpstreamErrorClass::BadResponse.to_string(), "bad_response");
    }

    #[test]
    fn connect_failures_are_connect() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
            io::ErrorKind::AddrNotAvailable,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::TimedOut,
        ] {
            assert_eq!(
                UpstreamError::connect(kind.into()).class,
                UpstreamErrorClass::Connect,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn failures_on_a_live_connection_are_reset_timeout_or_bad_response() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::NotConnected,
        ] {
            assert_eq!(
                UpstreamError::io(kind.into()).class,
                UpstreamErrorClass::Reset,
                "{kind:?}"
            );
        }
        assert_eq!(
            UpstreamError::closed_early().class,
            UpstreamErrorClass::Reset
        );
        assert_eq!(UpstreamError::timeout().class, UpstreamErrorClass::Timeout);
        let bad = UpstreamError::bad_response("unparsable response head");
        assert_eq!(bad.class, UpstreamErrorClass::BadResponse);
        assert_eq!(
            bad.to_string(),
            "upstream bad_response: unparsable response head"
        );
    }
}
