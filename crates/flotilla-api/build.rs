//! Generates Rust types and gRPC stubs from `proto/`, with the protoc shipped in
//! `protoc-bin-vendored` (no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "flotilla/api/v1/core.proto",
        "flotilla/api/v1/apps.proto",
        "flotilla/api/v1/batch.proto",
        "flotilla/api/v1/objects.proto",
        "flotilla/api/v1/object_service.proto",
        "flotilla/api/v1/pod_service.proto",
        "flotilla/admin/v1/cluster.proto",
        "flotilla/raft/v1/raft.proto",
        "flotilla/node/v1/runtime.proto",
        "flotilla/agent/v1/agent.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| root.join(f)).collect();
    for p in &paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    // The descriptor set drives the manifest <-> object conversion (prost-reflect), so the
    // proto files stay the one schema.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .btree_map(".")
        .bytes(".flotilla.raft.v1.Entry.normal")
        .file_descriptor_set_path(out.join("flotilla_descriptor.bin"))
        .compile_protos(&paths, &[root])?;
    Ok(())
}
