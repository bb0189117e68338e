//! Configuration from disk: a file read, refused while it still holds a
//! placeholder of the shipped config (`__INGRESS_DOMAIN__`), parsed,
//! its relative paths made relative to the file, and validated.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, PoolTlsSetting, invalid};

/// The first `__NAME__` placeholder in `text` outside comments: its line and name.
pub fn placeholder(text: &str) -> Option<(usize, &str)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let code = line.split('#').next().unwrap_or("");
        // Every `__` opens a candidate: `a__b __NAME__` still finds NAME.
        code.match_indices("__").find_map(|(start, _)| {
            let rest = &code[start + 2..];
            let len = rest.find("__")?;
            let is_name = len > 0
                && rest[..len]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            is_name.then(|| (i + 1, &code[start..start + len + 4]))
        })
    })
}

/// An error naming the file, the line and the placeholder still in it.
pub fn refuse_placeholder(path: &Path, text: &str) -> Result<(), ConfigError> {
    match placeholder(text) {
        Some((line, name)) => Err(invalid(
            format!("{}:{line}", path.display()),
            format!("{name} is a placeholder of the shipped file: set it"),
        )),
        None => Ok(()),
    }
}

impl Config {
    /// Reads, parses and validates a file; relative paths inside it are made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        refuse_placeholder(path, &text)?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without touching the file system.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.listen.certs);
        for pool in self.pools.values_mut() {
            if let Some(f) = pool.servers_file.as_mut() {
                fix(f);
            }
            if let Some(f) = pool.servers_seed.as_mut() {
                fix(f);
            }
            if let PoolTlsSetting::Settings(t) = &mut pool.tls
                && let Some(ca) = t.ca.as_mut()
            {
                fix(ca);
            }
        }
        if self.admin.socket.is_relative() {
            self.admin.socket = base.join(&self.admin.socket);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_found_outside_comments_with_their_line() {
        let text = "# set __INGRESS_DOMAIN__ below\n[listen]\ndefault_cert = \"__INGRESS_DOMAIN__\" # the domain\n";
        assert_eq!(super::placeholder(text), Some((3, "__INGRESS_DOMAIN__")));
        assert_eq!(super::placeholder("name = \"a__b\"\nx = \"__init__\"\n"), None);
        assert_eq!(super::placeholder("__FLEET1__ name=fleet1\n"), Some((1, "__FLEET1__")));
        assert_eq!(
            super::placeholder("x = \"a__b\", y = \"__HOST__\"\n"),
            Some((1, "__HOST__"))
        );
        assert_eq!(
            super::placeholder("10.0.0.5:443 name=fleet__a __FLEET2_HOST__\n"),
            Some((1, "__FLEET2_HOST__"))
        );
    }
}
