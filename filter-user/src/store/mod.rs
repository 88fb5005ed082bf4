//! The key store: the KeyStore trait, SQLite and PostgreSQL backends.
