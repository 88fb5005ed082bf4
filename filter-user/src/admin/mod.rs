//! Admin API server and the CLI-side client.
