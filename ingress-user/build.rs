//! Builds the XDP program (`ingress-ebpf`) with aya-build so that a plain
//! `cargo build` of the daemon rebuilds the kernel side when it changes.
//!
//! It uses the bpf-linker that `cargo xtask setup` builds under
//! `target/xtask-tools/`, and the active stable toolchain with
//! `RUSTC_BOOTSTRAP=1` (for `-Z build-std=core`), so nothing depends on the
//! caller's PATH or environment.
use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("workspace root")?.to_path_buf();
    let linker_dir = root.join("target/xtask-tools/bpf-linker/bin");
    if !linker_dir.join("bpf-linker").exists() {
        bail!(
            "bpf-linker not found in {}: run `cargo xtask setup` first",
            linker_dir.display()
        );
    }
    println!("cargo:rerun-if-changed={}", linker_dir.join("bpf-linker").display());
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_dir];
    paths.extend(env::split_paths(&path));
    let joined = env::join_paths(paths).context("PATH")?;
    // SAFETY: build scripts are single-threaded; aya-build's child inherits these.
    unsafe {
        env::set_var("PATH", joined);
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    let ebpf_dir = root.join("ingress-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    println!("cargo:rerun-if-changed={}", root.join("ingress-common/src").display());
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    let package = aya_build::Package {
        name: "ingress-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
}
