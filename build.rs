//! Compiles the protobuf definitions with a vendored `protoc`, so that a
//! plain `cargo build` works on a machine without one.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // The build script is single-threaded, so setting the variable is safe;
    // prost-build reads PROTOC from the environment.
    #[allow(clippy::disallowed_methods)]
    std::env::set_var("PROTOC", protoc);
    // The public API (`tessera.v1`) is compiled by the `tessera-proto`
    // crate; the server compiles only its internal Raft package and the
    // do-nothing service `tessera bench --baseline` compares against.
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/tessera/raft/v1/raft.proto",
            "proto/tessera/bench/v1/bench.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/tessera/raft");
    println!("cargo:rerun-if-changed=proto/tessera/bench");
    Ok(())
}
