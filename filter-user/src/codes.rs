//! Every answer code edgefilter gives (SPEC §5): status, machine-readable code, default message;
//! and the [`Rule`] a `BAD_REQUEST` broke.
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
    /// The key's credits are spent.
    CreditsExhausted,
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
    /// Every provider credential of the route rests (rate-limited or refused by the provider).
    UpstreamCredentialsExhausted,
    /// The edge could not build a valid request for the upstream (e.g. a value it adds holds a
    /// control byte); nothing was forwarded.
    Internal,
}

impl ErrorCode {
    /// Every code, in SPEC order.
    pub const ALL: [ErrorCode; 25] = [
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
        Self::CreditsExhausted,
        Self::InvalidCredentials,
        Self::NoRoute,
        Self::BadRequest,
        Self::PayloadTooLarge,
        Self::HeadersTooLarge,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
        Self::UpstreamCredentialsExhausted,
        Self::Internal,
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
            Self::RateLimited | Self::CreditsExhausted => 429,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::UpstreamUnavailable => 502,
            Self::UpstreamTimeout => 504,
            Self::UpstreamCredentialsExhausted => 503,
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
            Self::CreditsExhausted => "CREDITS_EXHAUSTED",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::NoRoute => "NO_ROUTE",
            Self::BadRequest => "BAD_REQUEST",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Self::UpstreamCredentialsExhausted => "UPSTREAM_CREDENTIALS_EXHAUSTED",
            Self::Internal => "INTERNAL",
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
            Self::CreditsExhausted => "The API key's credits are spent.",
            Self::InvalidCredentials => "Invalid credentials.",
            Self::NoRoute => "No route matches this path.",
            Self::BadRequest => "The request is malformed.",
            Self::PayloadTooLarge => "The request body is too large.",
            Self::HeadersTooLarge => "The request headers are too large.",
            Self::UpstreamUnavailable => "The upstream service is unavailable.",
            Self::UpstreamTimeout => "The upstream service did not answer in time.",
            Self::UpstreamCredentialsExhausted => {
                "Every upstream credential of this route is resting; try again later."
            }
            Self::Internal => "The edge could not forward this request.",
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

/// The rule a `BAD_REQUEST` broke (SPEC §5: the hint names it): the error body's `rule` field
/// ([`Rule::as_str`]) and its hint ([`Rule::hint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The head is not HTTP/1.x: a bad request line, header name or value, obs-fold.
    HeadSyntax,
    /// HTTP/1.1 without `Host`.
    HostMissing,
    /// Two `Host` headers.
    HostDuplicate,
    /// `Host`, `Connection` or `X-Forwarded-For` is not UTF-8.
    HeaderNotUtf8,
    /// More `Connection` headers than the proxy reads.
    ConnectionHeaders,
    /// A `Content-Length` that is not 1 to 19 digits, or two different ones.
    ContentLength,
    /// A `Transfer-Encoding` other than exactly one `chunked`.
    TransferEncoding,
    /// `Content-Length` beside `Transfer-Encoding`.
    LengthWithChunked,
    /// Chunked framing in an HTTP/1.0 request.
    ChunkedInHttp10,
    /// A chunked body's framing is broken (chunk size, CRLF, extension).
    ChunkedFraming,
    /// A chunked body's trailer section is not header lines (e.g. a request line in it), or is
    /// too large.
    TrailerSection,
    /// The target is not origin-form (`/path?query`), or carries a `#` fragment.
    TargetForm,
    /// A `%` not followed by two hex digits (`%u002e`, `%zz`, a lone `%`).
    PathBadEscape,
    /// Decoding the path once leaves a percent-escape (`%252e`).
    PathDoubleEncoding,
    /// The decoded path is not UTF-8 (overlong forms such as `%c0%ae` included).
    PathNotUtf8,
    /// The decoded path holds a NUL or another control byte.
    PathControl,
    /// A `\` in the path, raw or `%5c`.
    PathBackslash,
    /// A `/` written `%2f`.
    PathEncodedSlash,
    /// An empty segment (`//`, or `/;param/`, which reads as `//` once parameters are dropped).
    PathEmptySegment,
    /// A `.` or `..` segment, however written (`%2e`, `..;param`).
    PathDotSegment,
    /// A WebSocket upgrade on a route without `websocket = true`.
    WebsocketNotAllowed,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Self; 21] = [
        Self::HeadSyntax,
        Self::HostMissing,
        Self::HostDuplicate,
        Self::HeaderNotUtf8,
        Self::ConnectionHeaders,
        Self::ContentLength,
        Self::TransferEncoding,
        Self::LengthWithChunked,
        Self::ChunkedInHttp10,
        Self::ChunkedFraming,
        Self::TrailerSection,
        Self::TargetForm,
        Self::PathBadEscape,
        Self::PathDoubleEncoding,
        Self::PathNotUtf8,
        Self::PathControl,
        Self::PathBackslash,
        Self::PathEncodedSlash,
        Self::PathEmptySegment,
        Self::PathDotSegment,
        Self::WebsocketNotAllowed,
    ];

    /// The machine-readable name, e.g. `path_dot_segment`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HeadSyntax => "head_syntax",
            Self::HostMissing => "host_missing",
            Self::HostDuplicate => "host_duplicate",
            Self::HeaderNotUtf8 => "header_not_utf8",
            Self::ConnectionHeaders => "connection_headers",
            Self::ContentLength => "content_length",
            Self::TransferEncoding => "transfer_encoding",
            Self::LengthWithChunked => "length_with_chunked",
            Self::ChunkedInHttp10 => "chunked_in_http10",
            Self::ChunkedFraming => "chunked_framing",
            Self::TrailerSection => "trailer_section",
            Self::TargetForm => "target_form",
            Self::PathBadEscape => "path_bad_escape",
            Self::PathDoubleEncoding => "path_double_encoding",
            Self::PathNotUtf8 => "path_not_utf8",
            Self::PathControl => "path_control",
            Self::PathBackslash => "path_backslash",
            Self::PathEncodedSlash => "path_encoded_slash",
            Self::PathEmptySegment => "path_empty_segment",
            Self::PathDotSegment => "path_dot_segment",
            Self::WebsocketNotAllowed => "websocket_not_allowed",
        }
    }

    /// What was wrong, for a person (the error body's hint).
    #[must_use]
    pub const fn hint(self) -> &'static str {
        match self {
            Self::HeadSyntax => {
                "The request head is not valid HTTP/1.1: check the request line, header names \
                 and values (no control characters, no folded lines)."
            }
            Self::HostMissing => "An HTTP/1.1 request needs a Host header.",
            Self::HostDuplicate => "Send one Host header, not two.",
            Self::HeaderNotUtf8 => "Host, Connection and X-Forwarded-For must be UTF-8 text.",
            Self::ConnectionHeaders => "Send at most 4 Connection headers.",
            Self::ContentLength => {
                "Content-Length must be one decimal number (1 to 19 digits), sent once or \
                 repeated with the same value."
            }
            Self::TransferEncoding => "The only Transfer-Encoding accepted is a single `chunked`.",
            Self::LengthWithChunked => {
                "Send Content-Length or Transfer-Encoding: chunked, not both."
            }
            Self::ChunkedInHttp10 => "HTTP/1.0 has no chunked framing: send Content-Length.",
            Self::ChunkedFraming => {
                "The chunked body is malformed: each chunk is a hex size line, CRLF, the data, \
                 CRLF."
            }
            Self::TrailerSection => {
                "The chunked body's trailer section must be header lines (`Name: value`) ending \
                 with an empty line, at most 8 KiB."
            }
            Self::TargetForm => {
                "The request target must be a path starting with `/` (optionally `?query`), \
                 without a `#fragment`."
            }
            Self::PathBadEscape => {
                "A `%` in the path must be followed by two hex digits (`%u…` escapes are not \
                 accepted)."
            }
            Self::PathDoubleEncoding => {
                "The path is percent-encoded twice (e.g. `%252e`): upstreams that decode twice \
                 would read another path. Encode it once."
            }
            Self::PathNotUtf8 => {
                "The path must decode to UTF-8; overlong forms such as `%c0%ae` are read as `.` \
                 by lax decoders."
            }
            Self::PathControl => {
                "The path decodes to a NUL or another control character (%00-%1F, %7F)."
            }
            Self::PathBackslash => {
                "The path holds a backslash (`\\` or `%5c`), which some upstreams read as `/`."
            }
            Self::PathEncodedSlash => {
                "The path holds an encoded slash (`%2f`), which upstreams may decode into a new \
                 segment."
            }
            Self::PathEmptySegment => {
                "The path holds an empty segment (`//`, or `/;param/` once parameters are \
                 dropped), which upstreams merge away."
            }
            Self::PathDotSegment => {
                "The path holds a `.` or `..` segment (also as `%2e` or `..;param`), which \
                 upstreams resolve out of the route. Send the resolved path."
            }
            Self::WebsocketNotAllowed => {
                "This route does not accept WebSocket upgrades (`Connection: Upgrade`, \
                 `Upgrade: websocket`): send the request without them, or use a route that \
                 accepts WebSockets."
            }
        }
    }
}

impl std::fmt::Display for Rule {
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
