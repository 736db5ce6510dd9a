//! The command-line chat client.
