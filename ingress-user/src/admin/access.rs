//! Control path: who may read and who may change through the admin API.
//! The unix socket (0600, or 0660 for `[admin] group`) admits its owner,
//! root and that group, checked again on the peer's credentials
//! (SO_PEERCRED); over TCP, reads need a loopback peer or the token, and
//! changes need the token from a loopback peer. Also binds the socket.

use std::path::Path;

use tokio::net::UnixListener;

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// A unix socket peer, by its credentials (`None` if they could not be read).
    Unix(Option<Creds>),
    Tcp(std::net::SocketAddr),
}

/// A unix peer's user and whether it is in `[admin] group`, as of its
/// connect (SO_PEERCRED; supplementary groups read once, at accept).
#[derive(Debug, Clone, Copy)]
pub struct Creds {
    pub uid: u32,
    pub in_group: bool,
}

impl Creds {
    /// From the peer's credentials: `group` is checked against its primary
    /// group and, through `/proc/PID/status`, its supplementary ones.
    pub fn of(uid: u32, gid: u32, pid: Option<i32>, group: Option<u32>) -> Self {
        let in_group = group.is_some_and(|g| {
            gid == g
                || pid
                    .filter(|p| *p > 0)
                    .is_some_and(|p| supplementary_groups(p).contains(&g))
        });
        Self { uid, in_group }
    }
}

/// The access rules in force (from `[admin]`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Bearer token (`[admin] token`).
    pub token: Option<String>,
    /// Group whose members may use the unix socket (`[admin] group`).
    pub group: Option<u32>,
    /// Bearer token for picks only (`[admin] pick_token`).
    pub pick_token: Option<String>,
}

/// What a request may do, or why not (the status and the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Change,
    Read,
    /// `GET`/`POST /api/pick/{pool}` only (the pick token).
    Pick,
    Refused(u16, &'static str),
}

impl Policy {
    /// What `peer` may do, given the bearer token it presented.
    pub fn access(&self, peer: Peer, presented: Option<&str>) -> Access {
        match peer {
            Peer::Unix(creds) => {
                if creds.is_some_and(|c| self.unix_may_change(c)) {
                    Access::Change
                } else {
                    Access::Read
                }
            }
            Peer::Tcp(addr) => {
                let loopback = addr.ip().to_canonical().is_loopback();
                let token_ok = matches!((&self.token, presented),
                    (Some(t), Some(p)) if constant_time_eq(t.as_bytes(), p.as_bytes()));
                let pick_ok = matches!((&self.pick_token, presented),
                    (Some(t), Some(p)) if !t.is_empty() && constant_time_eq(t.as_bytes(), p.as_bytes()));
                if pick_ok && !token_ok {
                    return Access::Pick;
                }
                match (loopback, token_ok) {
                    (true, true) => Access::Change,
                    (true, false) | (false, true) => Access::Read,
                    (false, false) => Access::Refused(401, "a bearer token is required from this address"),
                }
            }
        }
    }

    fn unix_may_change(&self, c: Creds) -> bool {
        let me = nix::unistd::geteuid().as_raw();
        c.uid == 0 || c.uid == me || (self.group.is_some() && c.in_group)
    }
}

/// Why a change from this access is refused.
pub fn change_refused(access: Access) -> Option<&'static str> {
    match access {
        Access::Change => None,
        Access::Pick => Some("the pick token allows picks only"),
        Access::Read => Some(
            "changes need the unix socket (as its owner, root or [admin] group) or, from loopback, the bearer token",
        ),
        Access::Refused(_, why) => Some(why),
    }
}

/// The supplementary groups of process `pid` (its `Groups:` line).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        })
        .unwrap_or_default()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Resolves `[admin] group`: a group name or a numeric id.
pub fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("admin.group: no group named `{group}`")),
        Err(e) => Err(format!("admin.group: looking up `{group}`: {e}")),
    }
}

/// Binds the unix socket, mode 0600 (0660 and owned by `group` if given).
///
/// The socket is bound inside a fresh directory only the daemon's user can
/// enter, given its mode and group there, and then renamed into place: under
/// any umask it is never reachable by others, not even between bind and chmod.
/// A stale socket at `path` is replaced; anything else there is an error.
pub fn bind_unix(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            )));
        }
        _ => {}
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // A fresh name: `create` fails rather than reuse anything already there.
    let private = dir.join(format!(".ingress-admin.{}.{nanos:09}", std::process::id()));
    let staged = private.join("admin.sock");
    // sun_path holds 107 bytes and a NUL, and the staged name is the longer one.
    if staged.as_os_str().len() > 107 || path.as_os_str().len() > 107 {
        return Err(std::io::Error::other(format!(
            "{}: too long for a unix socket (its directory's path must stay under about 60 bytes)",
            path.display()
        )));
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = UnixListener::bind(&staged).and_then(|l| {
        let mode = if let Some(gid) = group {
            std::os::unix::fs::chown(&staged, None, Some(gid))?;
            0o660
        } else {
            0o600
        };
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> Peer {
        Peer::Tcp(s.parse().unwrap())
    }

    #[test]
    fn tcp_changes_need_loopback_and_the_token() {
        let p = Policy {
            token: Some("t0k".into()),
            group: None,
            pick_token: None,
        };
        assert_eq!(p.access(tcp("127.0.0.1:1"), None), Access::Read);
        assert_eq!(p.access(tcp("127.0.0.1:1"), Some("t0k")), Access::Change);
        assert_eq!(p.access(tcp("127.0.0.1:1"), Some("t0K")), Access::Read);
        assert_eq!(
            p.access(tcp("[::ffff:127.0.0.1]:1"), None),
            Access::Read,
            "IPv4-mapped loopback is loopback"
        );
        assert_eq!(p.access(tcp("[::1]:1"), Some("t0k")), Access::Change);
        assert_eq!(
            p.access(tcp("10.0.0.1:1"), Some("t0k")),
            Access::Read,
            "never a change from off-box"
        );
        assert!(matches!(p.access(tcp("10.0.0.1:1"), None), Access::Refused(401, _)));
        let no_token = Policy::default();
        assert_eq!(no_token.access(tcp("127.0.0.1:1"), Some("")), Access::Read);
    }

    #[test]
    fn the_pick_token_picks_from_anywhere_and_does_nothing_else() {
        let p = Policy {
            token: Some("admin".into()),
            group: None,
            pick_token: Some("dial".into()),
        };
        assert_eq!(p.access(tcp("10.0.0.1:1"), Some("dial")), Access::Pick);
        assert_eq!(p.access(tcp("127.0.0.1:1"), Some("dial")), Access::Pick);
        assert_eq!(p.access(tcp("127.0.0.1:1"), Some("admin")), Access::Change);
        assert!(change_refused(Access::Pick).is_some());
        let empty = Policy {
            pick_token: Some(String::new()),
            ..Policy::default()
        };
        assert!(matches!(
            empty.access(tcp("10.0.0.1:1"), Some("")),
            Access::Refused(401, _)
        ));
    }

    #[test]
    fn unix_peers_change_as_owner_root_or_group() {
        let me = nix::unistd::geteuid().as_raw();
        let p = Policy {
            token: None,
            group: Some(4242),
            pick_token: None,
        };
        let creds = |uid, gid| Peer::Unix(Some(Creds::of(uid, gid, None, Some(4242))));
        assert_eq!(p.access(creds(me, 1), None), Access::Change);
        assert_eq!(p.access(creds(0, 0), None), Access::Change);
        assert_eq!(p.access(creds(65534, 4242), None), Access::Change);
        assert_eq!(p.access(creds(65534, 65534), None), Access::Read);
        assert_eq!(p.access(Peer::Unix(None), None), Access::Read);
        let me = std::process::id() as i32;
        let own = nix::unistd::getgroups().unwrap_or_default();
        if let Some(g) = own.first() {
            assert!(
                Creds::of(65534, 65534, Some(me), Some(g.as_raw())).in_group,
                "a supplementary group counts"
            );
        }
        assert_eq!(resolve_group("4242"), Ok(4242));
        assert!(resolve_group("no-such-group-here").unwrap_err().contains("admin.group"));
    }
}
