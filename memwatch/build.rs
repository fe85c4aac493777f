//! Builds `memwatch-ebpf` for bpfel-unknown-none with the nightly toolchain (aya-build)
//! and leaves the object in OUT_DIR, where `probes::OBJECT` embeds it.

use std::process::Command;

use anyhow::{anyhow, Context as _};
use cargo_metadata::MetadataCommand;

/// Set by `cargo xtask fuzz` only: the fuzz targets call the parsers, never the probes,
/// so their build embeds an empty placeholder instead of building the eBPF object with
/// the nightly (which would also inherit cargo-fuzz's sanitizer flags). A memwatch built
/// this way fails to load its probes with a clear error; never ship one.
const PLACEHOLDER_ENV: &str = "MEMWATCH_FUZZ_PLACEHOLDER_EBPF";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={PLACEHOLDER_ENV}");
    if std::env::var_os(PLACEHOLDER_ENV).is_some_and(|v| v == "1") {
        let out = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
        std::fs::write(std::path::Path::new(&out).join("memwatch"), b"")
            .context("writing the placeholder eBPF object")?;
        println!(
            "cargo:warning={PLACEHOLDER_ENV}=1: embedding an empty eBPF object (fuzz builds only)"
        );
        println!("cargo:rustc-env=MEMWATCH_GIT_REVISION=fuzz");
        return Ok(());
    }
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name == "memwatch-ebpf")
        .ok_or_else(|| anyhow!("memwatch-ebpf not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("memwatch-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "memwatch-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building memwatch-ebpf (if bpf-linker or rust-src is missing, run `cargo xtask setup`)",
    )?;

    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MEMWATCH_GIT_REVISION={revision}");
    let git_dir = metadata.workspace_root.join(".git");
    for f in ["HEAD", "index"] {
        println!("cargo:rerun-if-changed={}", git_dir.join(f));
    }
    Ok(())
}
