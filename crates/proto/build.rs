//! Compiles `proto/chat/v1/chat.proto` with a vendored `protoc`, so the build
//! needs nothing installed beyond the Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/chat/v1/chat.proto");
    // `build_transport(false)`: the generated clients would otherwise get a
    // `connect` constructor, which clashes with the `Connect` RPC. Clients
    // are built from a `Channel` with `new` instead.
    // `codec_path`: undecodable requests are INVALID_ARGUMENT (see
    // `src/codec.rs`), not tonic's default INTERNAL.
    tonic_build::configure()
        .build_transport(false)
        .codec_path("crate::codec::StrictCodec")
        .compile_protos(&["proto/chat/v1/chat.proto"], &["proto"])?;
    Ok(())
}
