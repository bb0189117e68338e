//! What a certificate directory holds: `*.pem` bundles (chain + key in one
//! file) and certbot's lineages (`live/<domain>/{fullchain,privkey}.pem`,
//! symlinks into `archive/` followed), each under its stem; and a cheap
//! fingerprint of them, to notice a renewal that only re-points symlinks.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::CertError;

/// The files of a certbot lineage directory.
pub const FULLCHAIN: &str = "fullchain.pem";
pub const PRIVKEY: &str = "privkey.pem";

/// One candidate bundle: a `*.pem` file, or a lineage directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub stem: String,
    /// The file, or the lineage directory: what errors name.
    pub path: PathBuf,
    /// The files read, in order, concatenated: the bundle's content.
    pub files: Vec<PathBuf>,
}

impl Source {
    /// The bundle's bytes: chain first, then the key.
    pub fn read(&self) -> Result<Vec<u8>, CertError> {
        let mut content = Vec::new();
        for f in &self.files {
            let bytes = std::fs::read(f).map_err(|source| CertError::Read {
                path: f.clone(),
                source,
            })?;
            content.extend_from_slice(&bytes);
            if !content.ends_with(b"\n") {
                content.push(b'\n');
            }
        }
        Ok(content)
    }
}

/// The candidates in `dir`, sorted by stem, and the entries that look like
/// a bundle but cannot be one (a lineage missing a file, a stem taken
/// twice). Anything else in the directory (certbot's README, keys of other
/// tools) is not a candidate.
pub fn list(dir: &Path) -> Result<(Vec<Source>, Vec<CertError>), CertError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CertError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut sources: Vec<Source> = Vec::new();
    let mut errors = Vec::new();
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_name().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        // Follows symlinks: certbot's live/<domain> entries are directories,
        // a hand-made bundle may be a symlink to a file.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let source = if meta.is_dir() {
            let fullchain = path.join(FULLCHAIN);
            let privkey = path.join(PRIVKEY);
            let present = |p: &Path| match std::fs::metadata(p) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                // Unreadable (a lineage certbot left 0700): said, not skipped.
                Err(source) => Err(CertError::Read {
                    path: p.to_owned(),
                    source,
                }),
            };
            let (has_chain, has_key) = match (present(&fullchain), present(&privkey)) {
                (Ok(c), Ok(k)) => (c, k),
                (Err(e), _) | (_, Err(e)) => {
                    errors.push(e);
                    continue;
                }
            };
            match (has_chain, has_key) {
                (false, false) => continue,
                (true, true) => Source {
                    stem: name,
                    path: path.clone(),
                    files: vec![fullchain, privkey],
                },
                (has_chain, _) => {
                    let missing = if has_chain { PRIVKEY } else { FULLCHAIN };
                    errors.push(CertError::Bundle {
                        path,
                        reason: format!("certbot lineage without {missing}"),
                    });
                    continue;
                }
            }
        } else if let Some(stem) = name.strip_suffix(".pem")
            && !stem.is_empty()
        {
            Source {
                stem: stem.to_owned(),
                path: path.clone(),
                files: vec![path],
            }
        } else {
            continue;
        };
        if let Some(first) = sources.iter().find(|s| s.stem == source.stem) {
            errors.push(CertError::Bundle {
                path: source.path,
                reason: format!("stem {:?} is already {}", source.stem, first.path.display()),
            });
            continue;
        }
        sources.push(source);
    }
    sources.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok((sources, errors))
}

/// Each candidate file and what stat said of it.
pub type Fingerprint = Vec<(PathBuf, Result<[i64; 6], io::ErrorKind>)>;

/// What identifies the directory's state without reading the bundles:
/// each candidate file's device, inode, size, modification and change
/// times through its symlinks (a renewal re-points `live/` links at new
/// `archive/` files, so the inode changes; a `chmod` by a deploy hook
/// changes the change time), or the error that stat gave.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok((sources, _)) = list(dir) else {
        return vec![(dir.to_owned(), Err(io::ErrorKind::NotFound))];
    };
    let mut out = Vec::new();
    for s in sources {
        for f in s.files {
            let m = std::fs::metadata(&f)
                .map(|m| {
                    [
                        m.dev() as i64,
                        m.ino() as i64,
                        m.size() as i64,
                        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                        i64::from(m.mode()),
                    ]
                })
                .map_err(|e| e.kind());
            out.push((f, m));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_and_certbot_lineages_are_listed_by_stem() {
        let dir = tempdir();
        std::fs::write(dir.join("b.pem"), "x").unwrap();
        std::fs::write(dir.join("README"), "certbot's").unwrap();
        std::fs::create_dir_all(dir.join("archive/a.example")).unwrap();
        std::fs::write(dir.join("archive/a.example/fullchain1.pem"), "c").unwrap();
        std::fs::write(dir.join("archive/a.example/privkey1.pem"), "k").unwrap();
        let live = dir.join("live");
        std::fs::create_dir_all(live.join("a.example")).unwrap();
        std::os::unix::fs::symlink(
            "../../archive/a.example/fullchain1.pem",
            live.join("a.example/fullchain.pem"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../../archive/a.example/privkey1.pem",
            live.join("a.example/privkey.pem"),
        )
        .unwrap();
        std::fs::create_dir_all(live.join("half.example")).unwrap();
        std::fs::write(live.join("half.example/fullchain.pem"), "c").unwrap();
        std::fs::write(live.join("a.example.pem"), "dup").unwrap();

        let (sources, errors) = list(&live).unwrap();
        let stems: Vec<_> = sources.iter().map(|s| s.stem.as_str()).collect();
        assert_eq!(stems, ["a.example"]);
        assert_eq!(sources[0].read().unwrap(), b"c\nk\n");
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("half.example") && e.contains("without privkey.pem"))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("a.example.pem") && e.contains("already"))
        );

        let (top, _) = list(&dir).unwrap();
        assert_eq!(top.iter().map(|s| s.stem.as_str()).collect::<Vec<_>>(), ["b"]);

        // Re-pointing a link changes the fingerprint; rereading does not.
        let before = fingerprint(&live);
        assert_eq!(before, fingerprint(&live));
        std::fs::write(dir.join("archive/a.example/fullchain2.pem"), "c2").unwrap();
        let link = live.join("a.example/fullchain.pem");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("../../archive/a.example/fullchain2.pem", &link).unwrap();
        assert_ne!(before, fingerprint(&live));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ingress-certs-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
