use std::env;

/// The eBPF object is linked by `bpf-linker`, a binary cargo does not track. Rebuild when
/// the one on PATH changes, and say what to run when there is none.
fn main() {
    let path = env::var_os("PATH").unwrap_or_default();
    let linker = env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file());
    match linker {
        Some(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        None => panic!("bpf-linker not found on PATH: run `cargo xtask setup` (it builds one against the nightly's LLVM)"),
    }
}
