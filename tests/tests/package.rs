//! The Debian package as an operator gets it (`cargo xtask test` builds it
//! with `cargo xtask deb` first): its contents are the README's list, its
//! maintainer scripts are `ops/debian/`'s, it installs for real (`dpkg -i`,
//! purged on drop, also when the test fails), `systemd-analyze verify`
//! accepts its unit, its config is refused while a placeholder is left, and
//! the packaged binary run as the system user with exactly the unit's
//! capabilities (`setpriv`) reads certificates as certbot leaves them after
//! the shipped deploy hook, binds :443 and :80, attaches XDP in a namespace,
//! carries a call, and writes its servers_file to its state directory. The
//! config it runs is the shipped one with this host's values put in.

use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use ingress_tests::{
    Fleet, Ingress, Pki, TestDir, echo,
    netns::{NetPair, call_from},
    run_ok,
};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn deb() -> PathBuf {
    let p = repo(&format!(
        "target/debian/ingress_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask test` builds it (or `cargo xtask deb`)",
        p.display()
    );
    p
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package installed for the test, on a bpffs mounted as systemd
/// mounts it (mode 0700); purged on drop with the system user and group it
/// made (Debian's postrm keeps them), the bpffs mode put back.
struct Installed {
    made_user: bool,
    made_group: bool,
    bpffs_mode: u32,
}

impl Installed {
    fn install(deb: &Path) -> Self {
        let exists = |db: &str| {
            Command::new("getent")
                .args([db, "ingress"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let installed = Command::new("dpkg")
            .args(["-s", "ingress"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            !installed,
            "the ingress package is installed on this machine: the test would purge it"
        );
        let bpffs_mode = std::fs::metadata("/sys/fs/bpf").unwrap().permissions().mode() & 0o7777;
        let me = Self {
            made_user: !exists("passwd"),
            made_group: !exists("group"),
            bpffs_mode,
        };
        std::fs::set_permissions("/sys/fs/bpf", std::fs::Permissions::from_mode(0o700)).unwrap();
        run_ok(
            Command::new("dpkg")
                .arg("-i")
                .arg(deb)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        );
        me
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "ingress"]).output();
        if self.made_user {
            let _ = Command::new("deluser")
                .args(["--system", "--quiet", "ingress"])
                .output();
        }
        if self.made_group {
            let _ = Command::new("delgroup")
                .args(["--system", "--quiet", "ingress"])
                .output();
        }
        let _ = std::fs::set_permissions("/sys/fs/bpf", std::fs::Permissions::from_mode(self.bpffs_mode));
    }
}

/// The package's files as the README's "Install" section lists them.
fn readme_files() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let block = readme
        .split("<!-- package files -->")
        .nth(1)
        .expect("README: a `<!-- package files -->` block in Install");
    block
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The unit's capabilities, e.g. `["net_bind_service", …]`, checked to be
/// the same in the bounding and the ambient set.
fn unit_caps(unit: &str) -> Vec<String> {
    let line = |key: &str| -> Vec<String> {
        let l = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("unit without {key}"));
        let mut caps: Vec<String> = l
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
            .collect();
        caps.sort();
        caps
    };
    let ambient = line("AmbientCapabilities=");
    assert_eq!(ambient, line("CapabilityBoundingSet="), "bounding set = ambient set");
    ambient
}

fn cap_bit(name: &str) -> u32 {
    match name {
        "net_bind_service" => 10,
        "net_admin" => 12,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other} has no number here"),
    }
}

fn uid_gid(user: &str) -> (u32, u32) {
    let out = run_ok(Command::new("getent").args(["passwd", user]));
    let line = text(&out);
    let f: Vec<&str> = line.trim().split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

fn chown(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `live/localhost/{fullchain,privkey}.pem` → `archive/localhost/*1.pem`,
/// directories 0700 and the key 0600, all root's: what certbot writes.
fn certbot_layout(dir: &TestDir, pki: &Pki) -> PathBuf {
    let leaf = pki.ca.issue(&["localhost", "127.0.0.1"]).unwrap();
    let le = dir.path("letsencrypt");
    let archive = le.join("archive/localhost");
    let lineage = le.join("live/localhost");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&lineage).unwrap();
    std::fs::write(archive.join("fullchain1.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(archive.join("privkey1.pem"), &leaf.key_pem).unwrap();
    for (link, target) in [("fullchain.pem", "fullchain1.pem"), ("privkey.pem", "privkey1.pem")] {
        std::os::unix::fs::symlink(format!("../../archive/localhost/{target}"), lineage.join(link)).unwrap();
    }
    for d in [le.join("live"), le.join("archive"), lineage.clone(), archive.clone()] {
        chown(&d, 0, 0, 0o700);
    }
    chown(&archive.join("privkey1.pem"), 0, 0, 0o600);
    lineage
}

#[test]
fn the_package_installs_and_its_binary_serves_as_the_ingress_user_with_the_units_capabilities() {
    let deb = deb();

    // Contents: the README's list, exactly.
    let listing = text(&run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    assert_eq!(files, readme_files(), "the package's files vs the README's list");
    assert!(
        listing.contains("./etc/letsencrypt/renewal-hooks/deploy/ingress -> /usr/share/ingress/certbot-deploy-hook"),
        "{listing}"
    );
    // Maintainer scripts: ops/debian's; conffiles: the two files under /etc/ingress.
    let control = TestDir::new("package-control");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(control.path("DEBIAN")));
    for s in ["postinst", "prerm", "postrm"] {
        assert_eq!(
            std::fs::read(control.path(&format!("DEBIAN/{s}"))).unwrap(),
            std::fs::read(repo(&format!("ops/debian/{s}"))).unwrap(),
            "{s}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(control.path("DEBIAN/conffiles")).unwrap(),
        "/etc/ingress/ingress.toml\n/etc/ingress/fleet-servers.txt\n"
    );

    let _installed = Installed::install(&deb);
    let (uid, gid) = uid_gid("ingress");
    let passwd = text(&run_ok(Command::new("getent").args(["passwd", "ingress"])));
    assert!(
        passwd.trim().ends_with(":/var/lib/ingress:/usr/sbin/nologin"),
        "{passwd}"
    );
    for (path, owner, mode) in [
        ("/etc/ingress", (0, gid), 0o750),
        ("/etc/ingress/ingress.toml", (0, gid), 0o640),
        ("/etc/ingress/fleet-servers.txt", (0, gid), 0o640),
        ("/sys/fs/bpf/ingress", (uid, gid), 0o750),
        // systemd's 0700 mount, opened for traversal by the tmpfiles entry.
        ("/sys/fs/bpf", (0, 0), 0o711),
    ] {
        let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(((m.uid(), m.gid()), m.mode() & 0o777), (owner, mode), "{path}");
    }
    let verify = run_ok(Command::new("systemd-analyze").args(["verify", "/usr/lib/systemd/system/ingress.service"]));
    assert!(
        verify.stdout.is_empty() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&verify),
        String::from_utf8_lossy(&verify.stderr)
    );
    // The shipped config is refused until its placeholder is set.
    let check = Command::new("/usr/bin/ingress")
        .args(["check", "--config", "/etc/ingress/ingress.toml"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        !check.status.success() && said.contains("ingress.toml:") && said.contains("__INGRESS_DOMAIN__"),
        "{said}"
    );

    // The unprivileged run.
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/ingress.service").unwrap();
    assert!(unit.contains("\nUser=ingress\n"), "the unit runs as ingress");
    let caps = unit_caps(&unit);
    let set = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
    let pair = NetPair::new();
    let dir = TestDir::new("package");
    let pki = Pki::new(&dir);
    let fleets = [1, 2].map(|n| Fleet::start_with(&dir, &pki, &format!("fleet{n}"), 4, Some(&pair.ingress_ns)));
    let lineage = certbot_layout(&dir, &pki);
    run_ok(Command::new("/usr/share/ingress/certbot-deploy-hook").env("RENEWED_LINEAGE", &lineage));
    let run_dir = dir.path("run");
    let state = dir.path("state");
    for d in [&run_dir, &state] {
        std::fs::create_dir_all(d).unwrap();
        chown(d, uid, gid, 0o750);
    }
    // The shipped files with this host's values: the placeholders, and the
    // paths systemd would make (RuntimeDirectory, StateDirectory) or certbot.
    let mut seed = std::fs::read_to_string("/etc/ingress/fleet-servers.txt").unwrap();
    for (n, f) in fleets.iter().enumerate() {
        seed = seed.replace(
            &format!("__FLEET{}_HOST__", n + 1),
            &format!("{} sni=localhost", f.https),
        );
    }
    let seed = dir.write("fleet-servers.txt", &seed);
    let servers_file = state.join("fleet-servers.txt");
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let cfg = [
        ("__INGRESS_DOMAIN__", "localhost".to_owned()),
        ("__CARRIER_INTERFACE__", pair.ingress_if.clone()),
        ("\"/etc/letsencrypt/live\"", q(lineage.parent().unwrap())),
        ("\"/run/ingress/admin.sock\"", q(&run_dir.join("admin.sock"))),
        ("\"/var/lib/ingress/fleet-servers.txt\"", q(&servers_file)),
        ("\"/etc/ingress/fleet-servers.txt\"", q(&seed)),
        ("verify = true", format!("verify = true\nca = {}", q(&pki.ca_path))),
    ]
    .iter()
    .fold(
        std::fs::read_to_string("/etc/ingress/ingress.toml").unwrap(),
        |cfg, (from, to)| {
            assert!(cfg.contains(from), "the shipped ingress.toml has {from}");
            cfg.replace(from, to)
        },
    );
    let as_ingress: Vec<String> = [
        "setpriv",
        "--reuid=ingress",
        "--regid=ingress",
        "--init-groups",
        "--no-new-privs",
        &format!("--inh-caps=-all,{set}"),
        &format!("--ambient-caps=-all,{set}"),
        &format!("--bounding-set=-all,{set}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut prefix = vec!["nsenter".to_owned(), format!("--net=/run/netns/{}", pair.ingress_ns)];
    prefix.extend(as_ingress.iter().cloned());
    let ingress = Ingress::start_exe(&dir, &cfg, Path::new("/usr/bin/ingress"), &prefix, &[]);

    // Its user and its capabilities, exactly the unit's.
    let status = std::fs::read_to_string(format!("/proc/{}/status", ingress.proc.pid())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_owned()
    };
    let uids: Vec<u32> = field("Uid:").split_whitespace().map(|u| u.parse().unwrap()).collect();
    assert_eq!(uids, [uid; 4], "real, effective, saved and filesystem uid");
    let expected = caps.iter().fold(0u64, |m, c| m | 1 << cap_bit(c));
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        expected,
        "{status}"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        ingress.wait_state(&["fleet1", "fleet2"], "UP").await;
        let st: serde_json::Value = serde_json::from_str(&ingress.admin_get("/api/status").await.1).unwrap();
        assert_eq!(st["xdp"]["attached"], true, "XDP attached as the ingress user: {st}");
        let https = std::net::SocketAddr::from((pair.ingress_ip, 443));
        let mut ws = call_from(
            &pair.carrier_ns,
            https,
            "/ws/package",
            pki.client_tls(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a call through the unprivileged daemon: {e}\n{}",
                ingress.proc.log_tail(30)
            )
        });
        echo(&mut ws, "hello").await.unwrap();
    });
    // Both families, as shipped: [::]:443 and [::]:80 beside 0.0.0.0's.
    for port in [443, 80] {
        let r = ingress_tests::netns::run_in(&pair.ingress_ns, move || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port)),
                Duration::from_secs(2),
            )
        });
        assert!(r.is_ok(), "[::1]:{port}: {r:?}");
    }

    // Operator commands as the unit runs them (ExecReload is the ingress user's),
    // and the list written to the state directory, not to the seed.
    let ctl = |args: &[&str]| {
        let mut cmd = Command::new(&as_ingress[0]);
        cmd.args(&as_ingress[1..])
            .args(["/usr/bin/ingress", "ctl", "--socket"])
            .arg(run_dir.join("admin.sock"))
            .args(args);
        run_ok(&mut cmd)
    };
    assert!(!servers_file.exists());
    ctl(&["reload"]);
    ctl(&["drain", "fleets/fleet1"]);
    let written = std::fs::read_to_string(&servers_file).unwrap();
    assert!(written.contains("state=drain"), "{written}");
    assert_eq!(std::fs::metadata(&servers_file).unwrap().uid(), uid);
    assert!(
        !std::fs::read_to_string(&seed).unwrap().contains("state="),
        "the seed is not written"
    );
    drop((ingress, fleets));
}
