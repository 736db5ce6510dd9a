//! The `chat-client` binary; everything is in the library.

fn main() -> std::process::ExitCode {
    chat_client::main()
}
