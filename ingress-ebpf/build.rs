//! Rebuild the program when the linker changes (a new bpf-linker can emit different BTF).
use which::which;

fn main() {
    // Host-side checks (clippy on the workspace) run without it; that is fine.
    if let Ok(path) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
