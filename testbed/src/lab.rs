//! A small network of namespaces for tests of more than one ingress:
//! namespaces joined by veth pairs (made inside the namespaces, never in
//! the root one), bridges, addresses, routes and sysctls. Every namespace
//! is deleted on drop, also when the owner panics, and with it everything
//! in it; those of a process that no longer runs are swept at the next
//! creation. Traffic stays inside.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::netns::{PREFIX, kill_inside, sweep_stale};

/// The namespaces of one test.
pub struct Lab {
    /// `{PREFIX}{tag}{pid}`: every namespace's name starts with it.
    stem: String,
    made: Vec<String>,
}

impl Lab {
    /// `tag`: one ASCII letter that tells whose namespaces they are.
    pub fn new(tag: char) -> anyhow::Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("network namespaces need root; run as root, as CI does");
        }
        sweep_stale();
        Ok(Self {
            stem: format!("{PREFIX}{tag}{}", std::process::id()),
            made: Vec::new(),
        })
    }

    /// Makes namespace `name` (a few letters and digits, starting with a
    /// letter) with loopback up; returns its full name.
    pub fn ns(&mut self, name: &str) -> anyhow::Result<String> {
        let full = format!("{}{name}", self.stem);
        run(Command::new("ip").args(["netns", "add", &full]))?;
        self.made.push(full.clone());
        ip(&full, &["link", "set", "lo", "up"])?;
        Ok(full)
    }

    /// A veth pair: `a_if` in `a_ns`, `b_if` in `b_ns` (the same namespace
    /// for both is allowed), both up, each with its addresses (`"10.0.0.1/24"`).
    pub fn veth(&self, a: (&str, &str, &[&str]), b: (&str, &str, &[&str])) -> anyhow::Result<()> {
        let ((a_ns, a_if, a_addrs), (b_ns, b_if, b_addrs)) = (a, b);
        ip(
            a_ns,
            &["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b_ns],
        )?;
        for (ns, dev, addrs) in [(a_ns, a_if, a_addrs), (b_ns, b_if, b_addrs)] {
            for addr in addrs {
                ip(ns, &["addr", "add", addr, "dev", dev])?;
            }
            ip(ns, &["link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// A bridge `name` in `ns`, up.
    pub fn bridge(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        ip(ns, &["link", "add", name, "type", "bridge"])?;
        ip(ns, &["link", "set", name, "up"])
    }

    /// Puts `dev` (in `ns`) on bridge `bridge` (in `ns`).
    pub fn enslave(&self, ns: &str, dev: &str, bridge: &str) -> anyhow::Result<()> {
        ip(ns, &["link", "set", dev, "master", bridge])
    }

    /// `sysctl -w key=value` inside `ns`.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", &format!("{key}={value}")]))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            kill_inside(ns);
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// `ip -n ns ARGS`.
pub fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(["-n", ns]).args(args))
}

/// `ip -n ns ARGS`'s standard output.
pub fn ip_out(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(["-n", ns]).args(args).output().context("ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{cmd:?} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
