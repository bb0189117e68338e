//! `cargo xtask setup`: idempotent bootstrap. Mounts bpffs, adds `rust-src`,
//! builds bpf-linker against the active toolchain's own libLLVM (rebuilt
//! only when that library changes), installs the Debian packages the tests
//! use. A second run does nothing and takes seconds.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{root, run};

/// Debian packages the tests need: `bpftool` reads the pinned maps like an operator would,
/// `ip`/`nsenter` build and enter namespaces, `openssl s_client` offers old TLS versions,
/// `promtool` (package prometheus) checks `/metrics`, headless `chromium` renders `/stats`,
/// `keepalived` (with `curl` for its tracked check) and `bird2` run the HA pair and the ECMP set,
/// `certbot` and `pebble` (an ACME server and its DNS) issue and renew a certificate through `:80`.
const TEST_PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "util-linux",
    "openssl",
    "prometheus",
    "chromium",
    "keepalived",
    "curl",
    "bird2",
    "certbot",
    "pebble",
    "haproxy", // tests/tests/import.rs runs the original haproxy.cfg beside its import
    // The package test installs the .deb (adduser in postinst) and verifies its unit.
    "adduser",
    "systemd",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where the xtask keeps the tools it builds.
pub fn tools_dir() -> PathBuf {
    root().join("target/xtask-tools")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn setup() -> anyhow::Result<()> {
    mount_bpffs()?;
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    rust_src(&sysroot)?;
    bpf_linker(&sysroot)?;
    debian_packages(TEST_PACKAGES)?;
    Ok(())
}

fn mount_bpffs() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    if !is_root() {
        eprintln!("xtask: bpffs is not mounted at /sys/fs/bpf and we are not root; XDP will be off");
        return Ok(());
    }
    eprintln!("xtask: mounting bpffs at /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf").ok();
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn rust_src(sysroot: &Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").exists() {
        return Ok(());
    }
    eprintln!("xtask: adding the rust-src component (core for bpfel-unknown-none)");
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// The real libLLVM shared object of the toolchain (not the linker script beside it).
fn find_libllvm(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no libLLVM.so.* in {}: this toolchain cannot build bpf-linker",
            lib.display()
        )
    })
}

fn llvm_major() -> anyhow::Result<String> {
    let vv = output(Command::new("rustc").arg("-vV"))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV printed no LLVM version")?;
    Ok(version.split('.').next().unwrap_or_default().to_owned())
}

fn bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let libllvm = find_libllvm(sysroot)?;
    let meta = fs::metadata(&libllvm)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let major = llvm_major()?;
    let stamp_value = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{major} {} {} {mtime}\n",
        libllvm.display(),
        meta.len()
    );
    let dir = tools_dir();
    let linker = dir.join("bpf-linker/bin/bpf-linker");
    let stamp = dir.join("bpf-linker/stamp");
    if linker.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_value.as_str()) {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        libllvm.display()
    );
    let prefix = dir.join("llvm");
    let lib = prefix.join("lib");
    let _ = fs::remove_dir_all(&prefix);
    fs::create_dir_all(&lib)?;
    let soname = libllvm.file_name().context("libLLVM file name")?;
    std::os::unix::fs::symlink(&libllvm, lib.join("libLLVM.so"))?;
    std::os::unix::fs::symlink(&libllvm, lib.join(soname))?;
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(dir.join("bpf-linker"))
        .env("LLVM_PREFIX", &prefix))?;
    fs::write(&stamp, stamp_value)?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs missing Debian packages (one `apt-get update` first).
pub fn debian_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run as root (or apt-get install them)");
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
