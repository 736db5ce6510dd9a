//! `chat-client`.

fn main() {}
