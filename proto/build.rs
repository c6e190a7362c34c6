//! Compiles the `.proto` contract with a vendored protoc, so a fresh machine needs no
//! protobuf-compiler package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_build::configure()
        .bytes(["."])
        .type_attribute("shoal.mds.Timespec", "#[derive(Eq, Hash)]")
        .type_attribute("shoal.mds.Layout", "#[derive(Eq, Hash)]")
        .compile_protos(
            &["proto/mds.proto", "proto/osd.proto", "proto/csi.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
