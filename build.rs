//! Compiles the protobuf definitions with a vendored `protoc`, so that a
//! plain `cargo build` works on a machine without one.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // The build script is single-threaded, so setting the variable is safe;
    // prost-build reads PROTOC from the environment.
    #[allow(clippy::disallowed_methods)]
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Our codec: an undecodable message is INVALID_ARGUMENT, not INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::pb_codec::StrictCodec")
        .file_descriptor_set_path(out.join("tessera_descriptor.bin"))
        .compile_protos(
            &[
                "proto/tessera/v1/tessera.proto",
                "proto/tessera/v1/admin.proto",
                "proto/tessera/v1/watch.proto",
            ],
            &["proto"],
        )?;
    tonic_prost_build::configure()
        .compile_protos(&["proto/tessera/raft/v1/raft.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
