//! Generates the etcd KV.Put client with the vendored protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/etcd_kv_put.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd_kv_put.proto"], &["proto"])?;
    Ok(())
}
