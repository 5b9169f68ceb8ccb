//! Compiles the public API (`tessera.v1`) with a vendored `protoc`, so that
//! a plain `cargo build` works on a machine without one. The `.proto` files
//! stay in the repository's top-level `proto/` (the server's internal Raft
//! package is compiled by the server's own `build.rs`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // The build script is single-threaded, so setting the variable is safe;
    // prost-build reads PROTOC from the environment.
    #[allow(clippy::disallowed_methods)]
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let root = "../../proto";
    // Our codec: an undecodable message is INVALID_ARGUMENT, not INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(out.join("tessera_descriptor.bin"))
        .compile_protos(
            &[
                format!("{root}/tessera/v1/tessera.proto"),
                format!("{root}/tessera/v1/admin.proto"),
                format!("{root}/tessera/v1/watch.proto"),
            ],
            &[root.to_string()],
        )?;
    println!("cargo:rerun-if-changed={root}/tessera/v1");
    Ok(())
}
