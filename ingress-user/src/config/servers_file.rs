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
        let key = format!("pools.{name}.servers_file");
        let text = std::fs::read_to_string(file)
            .map_err(|e| invalid(key.clone(), format!("cannot read {}: {e}", file.display())))?;
        let defs = parse_servers_file(&text).map_err(|e| invalid(key, format!("{}: {e}", file.display())))?;
        out.insert(name.clone(), defs);
    }
    Ok(out)
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
/// A symlink is followed (the file it names is replaced, the link stays) and
/// the file keeps its permission bits.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path)?,
        _ => path.to_owned(),
    };
    let path = target.as_path();
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("servers");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    if let Ok(old) = std::fs::metadata(path) {
        f.set_permissions(old.permissions())?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

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
