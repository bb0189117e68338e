//! Configuration: the `servers_file` format — one `ADDR [name=NAME]
//! [sni=HOST] [maxconn=N] [state=drain|maint]` per line — parsed, rendered
//! back, read from disk and replaced atomically.

use std::{collections::BTreeMap, path::Path};

use super::{Config, ConfigError, invalid};
use crate::model::{AdminState, ServerDef, addr::parse_host_port};

/// The servers of one `servers_file`, with their operator states.
pub type FileServers = Vec<(ServerDef, AdminState)>;

/// Reads the `servers_file` of every pool that has one, by pool name; a
/// missing or bad file is an error naming the pool's key and the line.
pub fn read_all(config: &Config) -> Result<BTreeMap<String, FileServers>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, pool) in &config.pools {
        let Some(file) = &pool.servers_file else { continue };
        // Until the first runtime change writes servers_file, the seed is the list.
        let (file, key) = match &pool.servers_seed {
            Some(seed) if !file.exists() => (seed, format!("pools.{name}.servers_seed")),
            Some(seed) => {
                if seed_is_newer(seed, file) {
                    tracing::warn!(pool = %name, seed = %seed.display(), servers_file = %file.display(), "servers_seed changed after servers_file was written and is not read: change the list with ingress ctl add/remove, or edit servers_file");
                }
                (file, format!("pools.{name}.servers_file"))
            }
            None => (file, format!("pools.{name}.servers_file")),
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| invalid(key.clone(), format!("cannot read {}: {e}", file.display())))?;
        super::load::refuse_placeholder(file, &text)?;
        let defs = parse_servers_file(&text).map_err(|e| invalid(key, format!("{}: {e}", file.display())))?;
        out.insert(name.clone(), defs);
    }
    Ok(out)
}

/// Whether the seed was modified after `file` (both readable).
pub fn seed_is_newer(seed: &Path, file: &Path) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((mtime(seed), mtime(file)), (Some(s), Some(f)) if s > f)
}

/// Parses a `servers_file`: one `ADDR [name=NAME] [sni=HOST] [maxconn=N]
/// [state=drain|maint]` per line; `#` starts a comment; blank lines are ignored.
pub fn parse_servers_file(text: &str) -> Result<Vec<(ServerDef, AdminState)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let lineno = i + 1;
        let mut words = line.split_whitespace();
        let addr = words.next().unwrap_or_default();
        let (host, port) = parse_host_port(addr).map_err(|e| format!("line {lineno}: {e}"))?;
        let mut def = ServerDef {
            name: addr.to_owned(),
            host,
            port,
            sni: None,
            maxconn: None,
        };
        let mut state = AdminState::Ready;
        for word in words {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| format!("line {lineno}: `{word}` is not key=value"))?;
            match k {
                "name" => def.name = v.to_owned(),
                "sni" => def.sni = Some(v.to_owned()),
                "maxconn" => {
                    def.maxconn = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("line {lineno}: maxconn `{v}` is not a positive integer"))?,
                    )
                }
                "state" => {
                    state = AdminState::parse(v)
                        .ok_or_else(|| format!("line {lineno}: state `{v}` is not ready, drain or maint"))?
                }
                other => {
                    return Err(format!(
                        "line {lineno}: unknown key `{other}` (expected name, sni, maxconn, state)"
                    ));
                }
            }
        }
        out.push((def, state));
    }
    Ok(out)
}

/// Writes servers in the `servers_file` format (inverse of [`parse_servers_file`]).
pub fn render_servers_file(servers: &[(ServerDef, AdminState)]) -> String {
    let mut out = String::new();
    for (s, state) in servers {
        out.push_str(&s.addr());
        if s.name != s.addr() {
            out.push_str(&format!(" name={}", s.name));
        }
        if let Some(sni) = &s.sni {
            out.push_str(&format!(" sni={sni}"));
        }
        if let Some(m) = s.maxconn {
            out.push_str(&format!(" maxconn={m}"));
        }
        if *state != AdminState::Ready {
            out.push_str(&format!(" state={}", state.as_str()));
        }
        out.push('\n');
    }
    out
}
/// Writes `path` so that a crash leaves either the old or the new content.
/// A symlink is followed (the file it names is replaced, the link stays)
/// only when the link's directory is the daemon's own (owned by it or root,
/// writable by nobody else); in a directory others may write, a link could
/// point anywhere, so the link itself is replaced. The file keeps its
/// permission bits and, where the daemon may set them, owner and group. The
/// temporary file is created exclusively, never through a link.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{
        io::Write as _,
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    };
    let link_dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() && is_private_dir(link_dir) => std::fs::canonicalize(path)?,
        _ => path.to_owned(),
    };
    let path = target.as_path();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("servers");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.tmp.{}.{nanos:09}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = (|| {
        if let Ok(old) = std::fs::metadata(path) {
            // Owner and group only where allowed (root, or already ours).
            let _ = std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()));
            f.set_permissions(old.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Whether only the daemon (or root) can change what is in `dir`.
fn is_private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let euid = nix::unistd::geteuid().as_raw();
    std::fs::metadata(dir).is_ok_and(|m| (m.uid() == 0 || m.uid() == euid) && m.mode() & 0o022 == 0)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_link_in_a_directory_others_can_write_is_replaced_not_followed() {
        let dir = std::env::temp_dir().join(format!("ingress-servers-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let victim = std::env::temp_dir().join(format!("ingress-servers-victim-{}", std::process::id()));
        std::fs::write(&victim, "precious\n").unwrap();
        let link = dir.join("fleet-servers.txt");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomically(&link, b"b.example\n").unwrap();
        let victim_now = std::fs::read_to_string(&victim).unwrap();
        let link_meta = std::fs::symlink_metadata(&link).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&victim);
        assert_eq!(victim_now, "precious\n", "the file the link named is untouched");
        assert!(link_meta.file_type().is_file(), "the link was replaced by the file");
    }

    #[test]
    fn a_rewrite_follows_a_symlink_and_keeps_the_mode() {
        let dir = std::env::temp_dir().join(format!("ingress-servers-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let real = dir.join("real/fleet-servers.txt");
        std::fs::write(&real, "a.example\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("fleet-servers.txt");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, b"b.example\n").unwrap();
        let link_meta = std::fs::symlink_metadata(&link).unwrap();
        let real_meta = std::fs::metadata(&real).unwrap();
        let content = std::fs::read_to_string(&real).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(link_meta.file_type().is_symlink(), "the link stays a link");
        assert_eq!(content, "b.example\n");
        assert_eq!(real_meta.permissions().mode() & 0o777, 0o640);
    }
}
