//! Every answer code edgefilter gives (SPEC §5): status, machine-readable code, default message.
//!
//! Errors are data: the HTTP body, the log line, the metric label and `explain` all render from
//! this one enum.

/// One answer code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No key anywhere.
    MissingKey,
    /// Key found only where this route does not accept it.
    KeyInWrongPlace,
    /// Not the key format.
    MalformedKey,
    /// Well-formed, checksum fails.
    KeyChecksumMismatch,
    /// `ef_test_` key at a `live` edge, or the reverse.
    WrongEnvironment,
    /// Not in the store.
    UnknownKey,
    /// Revoked, or rotated and past its grace.
    KeyRevoked,
    /// Before `not_before`.
    KeyNotYetValid,
    /// After `expires_at`.
    KeyExpired,
    /// The key's user is suspended.
    UserSuspended,
    /// The key's user is deleted.
    UserDeleted,
    /// Key awaits approval.
    SubscriptionPending,
    /// Client address outside the key's CIDRs.
    IpNotAllowed,
    /// Key lacks the route's scope.
    ScopeMissing,
    /// Token bucket empty.
    RateLimited,
    /// Opaque mode's stand-in for every 401 key code.
    InvalidCredentials,
    /// No route matches the path.
    NoRoute,
    /// Malformed request.
    BadRequest,
    /// Body over `limits.max_body_bytes`.
    PayloadTooLarge,
    /// Head over `limits.max_header_bytes`.
    HeadersTooLarge,
    /// Upstream refused or failed.
    UpstreamUnavailable,
    /// Upstream too slow.
    UpstreamTimeout,
}

impl ErrorCode {
    /// Every code, in SPEC order.
    pub const ALL: [ErrorCode; 22] = [
        Self::MissingKey,
        Self::KeyInWrongPlace,
        Self::MalformedKey,
        Self::KeyChecksumMismatch,
        Self::WrongEnvironment,
        Self::UnknownKey,
        Self::KeyRevoked,
        Self::KeyNotYetValid,
        Self::KeyExpired,
        Self::UserSuspended,
        Self::UserDeleted,
        Self::SubscriptionPending,
        Self::IpNotAllowed,
        Self::ScopeMissing,
        Self::RateLimited,
        Self::InvalidCredentials,
        Self::NoRoute,
        Self::BadRequest,
        Self::PayloadTooLarge,
        Self::HeadersTooLarge,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
    ];

    /// HTTP status.
    #[must_use]
    pub const fn status(self) -> u16 {
        match self {
            Self::MalformedKey | Self::BadRequest => 400,
            Self::MissingKey
            | Self::KeyInWrongPlace
            | Self::KeyChecksumMismatch
            | Self::WrongEnvironment
            | Self::UnknownKey
            | Self::KeyRevoked
            | Self::KeyNotYetValid
            | Self::KeyExpired
            | Self::UserSuspended
            | Self::UserDeleted
            | Self::InvalidCredentials => 401,
            Self::SubscriptionPending | Self::IpNotAllowed | Self::ScopeMissing => 403,
            Self::NoRoute => 404,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::HeadersTooLarge => 431,
            Self::UpstreamUnavailable => 502,
            Self::UpstreamTimeout => 504,
        }
    }

    /// The machine-readable code, e.g. `KEY_EXPIRED`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingKey => "MISSING_KEY",
            Self::KeyInWrongPlace => "KEY_IN_WRONG_PLACE",
            Self::MalformedKey => "MALFORMED_KEY",
            Self::KeyChecksumMismatch => "KEY_CHECKSUM_MISMATCH",
            Self::WrongEnvironment => "WRONG_ENVIRONMENT",
            Self::UnknownKey => "UNKNOWN_KEY",
            Self::KeyRevoked => "KEY_REVOKED",
            Self::KeyNotYetValid => "KEY_NOT_YET_VALID",
            Self::KeyExpired => "KEY_EXPIRED",
            Self::UserSuspended => "USER_SUSPENDED",
            Self::UserDeleted => "USER_DELETED",
            Self::SubscriptionPending => "SUBSCRIPTION_PENDING",
            Self::IpNotAllowed => "IP_NOT_ALLOWED",
            Self::ScopeMissing => "SCOPE_MISSING",
            Self::RateLimited => "RATE_LIMITED",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::NoRoute => "NO_ROUTE",
            Self::BadRequest => "BAD_REQUEST",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
        }
    }

    /// A one-line default message.
    #[must_use]
    pub const fn default_message(self) -> &'static str {
        match self {
            Self::MissingKey => "No API key was sent.",
            Self::KeyInWrongPlace => "The API key was sent where this route does not accept it.",
            Self::MalformedKey => "The API key is not in the expected format.",
            Self::KeyChecksumMismatch => {
                "The API key's checksum does not match: it was mistyped or cut."
            }
            Self::WrongEnvironment => "The API key is for another environment.",
            Self::UnknownKey => "The API key is not known to this edge.",
            Self::KeyRevoked => "The API key has been revoked.",
            Self::KeyNotYetValid => "The API key is not valid yet.",
            Self::KeyExpired => "The API key has expired.",
            Self::UserSuspended => "The user this key belongs to is suspended.",
            Self::UserDeleted => "The user this key belongs to has been deleted.",
            Self::SubscriptionPending => "The API key is awaiting approval.",
            Self::IpNotAllowed => "The API key may not be used from this address.",
            Self::ScopeMissing => "The API key lacks the scope this route needs.",
            Self::RateLimited => "Too many requests for this API key.",
            Self::InvalidCredentials => "Invalid credentials.",
            Self::NoRoute => "No route matches this path.",
            Self::BadRequest => "The request is malformed.",
            Self::PayloadTooLarge => "The request body is too large.",
            Self::HeadersTooLarge => "The request headers are too large.",
            Self::UpstreamUnavailable => "The upstream service is unavailable.",
            Self::UpstreamTimeout => "The upstream service did not answer in time.",
        }
    }

    /// Whether opaque mode (`keys.errors = "opaque"`) hides this code as `INVALID_CREDENTIALS`.
    #[must_use]
    pub const fn is_hidden_when_opaque(self) -> bool {
        self.status() == 401 && !matches!(self, Self::InvalidCredentials)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of an upstream failure (SPEC §8's `class` label, §9's `upstream_error`); [`UpstreamErrorClass::as_str`] is its label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorClass {
    /// No connection: refused, unreachable, or any other failure to connect.
    Connect,
    /// The TLS handshake with the upstream failed (HTTPS upstreams; none yet).
    Tls,
    /// The connection broke after it was made: reset, broken pipe, or closed before a complete
    /// response head (or in the middle of a response body).
    Reset,
    /// `limits.upstream_timeout` passed while connecting, sending or waiting for the answer.
    Timeout,
    /// The response head is unparsable, too large, or a shape the proxy does not pass, or the
    /// response body's framing is broken.
    BadResponse,
}

impl UpstreamErrorClass {
    /// Every class, in label order.
    pub const ALL: [Self; 5] = [
        Self::Connect,
        Self::Tls,
        Self::Reset,
        Self::Timeout,
        Self::BadResponse,
    ];

    /// The label value: `connect`, `tls`, `reset`, `timeout` or `bad_response`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::BadResponse => "bad_response",
        }
    }
}

impl std::fmt::Display for UpstreamErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
