//! The sharded HTTP/1.1 (+TLS) reverse proxy.
