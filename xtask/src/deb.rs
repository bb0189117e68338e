//! `cargo xtask deb`: the Debian package, `target/debian/ingress_<version>_amd64.deb`,
//! built with `dpkg-deb` from a staged tree: the release binary (the BPF
//! object is inside it), the hardened unit, the shipped config as conffiles,
//! the certbot deploy hook, the HA/ECMP and monitoring examples, and the maintainer
//! scripts in `ops/debian/`. [`FILES`] is the package's content, and what
//! the README's "Install" section lists.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, root, run};

/// Where a file comes from (relative to the workspace), where it goes, its mode.
pub const FILES: &[(&str, &str, u32)] = &[
    ("target/release/ingress", "usr/bin/ingress", 0o755),
    ("ops/ingress.service", "usr/lib/systemd/system/ingress.service", 0o644),
    ("ops/debian/tmpfiles.conf", "usr/lib/tmpfiles.d/ingress.conf", 0o644),
    ("ops/debian/ingress.toml", "etc/ingress/ingress.toml", 0o640),
    ("ops/debian/fleet-servers.txt", "etc/ingress/fleet-servers.txt", 0o640),
    (
        "ops/certbot-deploy-hook",
        "usr/share/ingress/certbot-deploy-hook",
        0o755,
    ),
    ("README.md", "usr/share/doc/ingress/README.md", 0o644),
    ("ops/debian/copyright", "usr/share/doc/ingress/copyright", 0o644),
    (
        "ops/keepalived/keepalived.conf",
        "usr/share/doc/ingress/examples/keepalived/keepalived.conf",
        0o644,
    ),
    (
        "ops/keepalived/ingress-site.conf.example",
        "usr/share/doc/ingress/examples/keepalived/ingress-site.conf.example",
        0o644,
    ),
    (
        "ops/bird/ingress.conf",
        "usr/share/doc/ingress/examples/bird/ingress.conf",
        0o644,
    ),
    (
        "ops/bird/ingress-site.conf.example",
        "usr/share/doc/ingress/examples/bird/ingress-site.conf.example",
        0o644,
    ),
    (
        "ops/bird/router-example.conf",
        "usr/share/doc/ingress/examples/bird/router-example.conf",
        0o644,
    ),
    (
        "ops/prometheus/alerts.yml",
        "usr/share/doc/ingress/examples/prometheus/alerts.yml",
        0o644,
    ),
    (
        "ops/grafana/ingress.json",
        "usr/share/doc/ingress/examples/grafana/ingress.json",
        0o644,
    ),
];

/// Symlinks: where, to what. certbot runs every executable in
/// `renewal-hooks/deploy/` after a renewal.
pub const LINKS: &[(&str, &str)] = &[(
    "etc/letsencrypt/renewal-hooks/deploy/ingress",
    "/usr/share/ingress/certbot-deploy-hook",
)];

/// Files under /etc: the operator's, kept across upgrades.
pub const CONFFILES: &[&str] = &["/etc/ingress/ingress.toml", "/etc/ingress/fleet-servers.txt"];

pub const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// The package's path for this workspace version.
pub fn package_path() -> PathBuf {
    root().join(format!("target/debian/ingress_{}_amd64.deb", env!("CARGO_PKG_VERSION")))
}

/// Builds the release binary and the package; returns the package's path.
pub fn build() -> anyhow::Result<PathBuf> {
    // strip, dpkg-deb, md5sum.
    crate::setup::debian_packages(&["binutils", "dpkg", "coreutils"])?;
    run(cargo().args(["build", "--release", "-p", "ingress-user", "--bin", "ingress"]))?;
    let out = root().join("target/debian");
    let stage = out.join(format!("ingress_{}_amd64", env!("CARGO_PKG_VERSION")));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    for (from, to, mode) in FILES {
        let dst = stage.join(to);
        fs::create_dir_all(dst.parent().context("a file in a directory")?)?;
        fs::copy(root().join(from), &dst).with_context(|| format!("copying {from}"))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(*mode))?;
    }
    // The debug info stays in target/release; the package carries the code.
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg(stage.join("usr/bin/ingress")))?;
    for (at, to) in LINKS {
        let at = stage.join(at);
        fs::create_dir_all(at.parent().context("a link in a directory")?)?;
        std::os::unix::fs::symlink(to, &at)?;
    }
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    // Whatever the umask: dpkg-deb wants DEBIAN/ 0755, and /etc/letsencrypt
    // must not arrive 0700.
    dirs_0755(&stage)?;
    for s in SCRIPTS {
        let dst = debian.join(s);
        fs::copy(root().join("ops/debian").join(s), &dst).with_context(|| format!("copying {s}"))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
    }
    fs::write(debian.join("conffiles"), CONFFILES.join("\n") + "\n")?;
    fs::write(debian.join("control"), control(size_kib(&stage)?))?;
    md5sums(&stage)?;
    let deb = package_path();
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    eprintln!(
        "xtask: {} ({} KiB)",
        deb.display(),
        fs::metadata(&deb)?.len().div_ceil(1024)
    );
    Ok(deb)
}

fn control(installed_kib: u64) -> String {
    format!(
        "Package: ingress
Version: {version}
Architecture: amd64
Maintainer: ingress developers <ingress@localhost>
Installed-Size: {installed_kib}
Depends: libc6 (>= 2.36), adduser, ca-certificates
Recommends: certbot
Suggests: keepalived, bird2
Section: net
Priority: optional
Description: capacity-aware WSS ingress for voice-call fleets
 Terminates TLS for carriers' long-lived WebSocket calls (/ws/{{bot_id}},
 /exotel/{{bot_id}}) and upgrades each one to the fleet with the most spare
 capacity, read from every fleet's GET /health/fleet. An XDP program sheds
 carriers' SYNs while every fleet is full. Runs as the system user ingress
 with four capabilities; reads certbot's certificates in place.
",
        version = env!("CARGO_PKG_VERSION")
    )
}

fn size_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            total += size_kib(&entry.path())? * 1024;
        } else {
            total += meta.len();
        }
    }
    Ok(total.div_ceil(1024))
}

fn dirs_0755(dir: &Path) -> anyhow::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            dirs_0755(&path)?;
        }
    }
    Ok(())
}

/// `DEBIAN/md5sums`, so `dpkg --verify ingress` can tell a changed file.
fn md5sums(stage: &Path) -> anyhow::Result<()> {
    // Conffiles are the operator's: dpkg tracks them on its own.
    let mut files: Vec<&str> = FILES
        .iter()
        .map(|(_, to, _)| *to)
        .filter(|to| !CONFFILES.contains(&format!("/{to}").as_str()))
        .collect();
    files.sort_unstable();
    let out = Command::new("md5sum")
        .args(&files)
        .current_dir(stage)
        .output()
        .context("md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    fs::write(stage.join("DEBIAN/md5sums"), out.stdout)?;
    Ok(())
}
