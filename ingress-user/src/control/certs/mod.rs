//! Front certificates. Loading a directory of PEM bundles is control path;
//! the SNI lookup ([`CertResolver`]) is data path and reads an immutable
//! index through `ArcSwap`. A bundle that fails to load never replaces the
//! one serving: the old entry for that file stays, the error is logged and
//! counted. What the directory holds is [`source`]'s; following it is
//! [`watch`]'s.

pub mod source;
pub mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64, atomic::Ordering::Relaxed},
};

use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Why one bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
    #[error("{dir}: no usable certificate bundle (*.pem with chain and key, or a certbot live/<domain> directory)")]
    Empty { dir: PathBuf },
}

/// One loaded bundle.
#[derive(Clone)]
pub struct Bundle {
    pub stem: String,
    pub names: Vec<String>,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
    /// File content the bundle was loaded from, to skip unchanged files.
    content: Arc<Vec<u8>>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("stem", &self.stem)
            .field("names", &self.names)
            .finish()
    }
}

/// Immutable SNI index.
#[derive(Debug, Default)]
struct Index {
    default_stem: Option<String>,
    /// By file stem, sorted.
    bundles: BTreeMap<String, Bundle>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Index {
    fn build(bundles: BTreeMap<String, Bundle>, default_stem: Option<String>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for b in bundles.values() {
            for name in &b.names {
                let name = name.to_ascii_lowercase();
                if let Some(suffix) = name.strip_prefix("*.") {
                    wildcard.entry(suffix.to_owned()).or_insert_with(|| Arc::clone(&b.key));
                } else {
                    exact.entry(name).or_insert_with(|| Arc::clone(&b.key));
                }
            }
        }
        let default = default_stem
            .as_deref()
            .and_then(|s| bundles.get(s))
            .or_else(|| bundles.values().next())
            .map(|b| Arc::clone(&b.key));
        Self {
            default_stem,
            bundles,
            exact,
            wildcard,
            default,
        }
    }

    fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(Arc::clone(k));
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(Arc::clone(k));
            }
        }
        self.default.clone()
    }
}

/// The certificate store: directory, default stem, current index.
pub struct CertStore {
    dir: std::sync::Mutex<PathBuf>,
    default_stem: std::sync::Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
    index: ArcSwap<Index>,
    /// Successful reloads that changed something.
    pub reloads: AtomicU64,
    /// Bundles refused (bad PEM, key mismatch, unreadable).
    pub errors: AtomicU64,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("dir", &self.dir()).finish()
    }
}

impl CertStore {
    /// Loads the directory. With no usable bundle it fails, unless
    /// `awaiting_acme` (an ACME listener can fetch the first one): then the
    /// store starts empty, TLS handshakes fail until a bundle is written,
    /// and the watcher picks it up.
    pub fn load(
        dir: &Path,
        default_stem: Option<String>,
        provider: Arc<CryptoProvider>,
        awaiting_acme: bool,
    ) -> Result<Arc<Self>, CertError> {
        let store = Arc::new(Self {
            dir: std::sync::Mutex::new(dir.to_owned()),
            default_stem: std::sync::Mutex::new(default_stem),
            provider,
            index: ArcSwap::from_pointee(Index::default()),
            reloads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let errors = store.reload();
        if store.index.load().bundles.is_empty() {
            // Nothing there yet (no directory, no bundle): ACME can fetch one.
            // A bundle refused is an error, as without ACME.
            let refused = errors.iter().any(|e| matches!(e, CertError::Bundle { .. }));
            if awaiting_acme && !refused {
                tracing::error!(dir = %dir.display(), "no certificate yet: TLS handshakes fail until one is written there (ACME on the http listener)");
                return Ok(store);
            }
            for e in &errors {
                tracing::error!(error = %e, "certificate bundle refused");
            }
            return Err(CertError::Empty { dir: dir.to_owned() });
        }
        Ok(store)
    }

    /// How many bundles serve now.
    pub fn len(&self) -> usize {
        self.index.load().bundles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the directory. Unchanged files are kept as they are; a file
    /// that fails keeps its previous bundle; a vanished file is dropped
    /// unless that would leave no bundle at all. Returns the refusals.
    pub fn reload(&self) -> Vec<CertError> {
        let dir = self.dir();
        let old = self.index.load();
        let mut errors = Vec::new();
        let mut bundles = BTreeMap::new();
        let mut changed = false;
        match source::list(&dir) {
            Err(e) => errors.push(e),
            Ok((sources, refused)) => {
                errors.extend(refused);
                for src in sources {
                    let previous = old.bundles.get(&src.stem);
                    let keep = |bundles: &mut BTreeMap<String, Bundle>| {
                        if let Some(p) = previous {
                            bundles.insert(src.stem.clone(), p.clone());
                        }
                    };
                    match src.read() {
                        Ok(content) if previous.is_some_and(|p| *p.content == content) => keep(&mut bundles),
                        Ok(content) => match load_bundle(&src.path, &src.stem, content, &self.provider) {
                            Ok(b) => {
                                changed = true;
                                bundles.insert(src.stem.clone(), b);
                            }
                            Err(e) => {
                                errors.push(e);
                                keep(&mut bundles);
                            }
                        },
                        Err(e) => {
                            errors.push(e);
                            keep(&mut bundles);
                        }
                    }
                }
            }
        }
        if bundles.is_empty() && !old.bundles.is_empty() {
            errors.push(CertError::Empty { dir });
            bundles = old.bundles.clone();
        }
        let default_stem = self.default_stem.lock().unwrap_or_else(|e| e.into_inner()).clone();
        changed |= bundles.len() != old.bundles.len() || default_stem != old.default_stem;
        for e in &errors {
            if old.bundles.is_empty() {
                tracing::error!(error = %e, "certificate bundle refused");
            } else {
                tracing::error!(error = %e, "certificate bundle refused; the previous one keeps serving");
            }
        }
        self.errors.fetch_add(errors.len() as u64, Relaxed);
        if changed {
            let names: Vec<_> = bundles.keys().cloned().collect();
            self.index.store(Arc::new(Index::build(bundles, default_stem)));
            self.reloads.fetch_add(1, Relaxed);
            if !names.is_empty() {
                tracing::info!(bundles = ?names, "certificates loaded");
            }
        }
        errors
    }

    /// `(stem, notAfter)` of the bundles serving now.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        self.index
            .load()
            .bundles
            .values()
            .map(|b| (b.stem.clone(), b.not_after))
            .collect()
    }

    /// Stems and names of the bundles serving now.
    pub fn summary(&self) -> Vec<(String, Vec<String>)> {
        self.index
            .load()
            .bundles
            .values()
            .map(|b| (b.stem.clone(), b.names.clone()))
            .collect()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What a retarget to `dir` would serve, without serving it: the stems
    /// of its usable bundles; an error when there is none, or when
    /// `default_stem` names none of them.
    pub fn check_dir(&self, dir: &Path, default_stem: Option<&str>) -> Result<Vec<String>, CertError> {
        check_dir(dir, default_stem, &self.provider)
    }

    /// Points the store at another directory or default (a reload); bundles
    /// that fail to load there leave the current ones serving.
    pub fn retarget(&self, dir: &Path, default_stem: Option<String>) -> Vec<CertError> {
        *self.dir.lock().unwrap_or_else(|e| e.into_inner()) = dir.to_owned();
        *self.default_stem.lock().unwrap_or_else(|e| e.into_inner()) = default_stem;
        self.reload()
    }
}

/// The stems of the usable bundles in `dir`, without serving them; an error
/// when there is none, or when `default_stem` names none of them.
pub fn check_dir(dir: &Path, default_stem: Option<&str>, provider: &CryptoProvider) -> Result<Vec<String>, CertError> {
    let (sources, mut refused) = source::list(dir)?;
    let mut stems = Vec::new();
    for src in sources {
        match src
            .read()
            .and_then(|content| load_bundle(&src.path, &src.stem, content, provider))
        {
            Ok(_) => stems.push(src.stem),
            Err(e) => refused.push(e),
        }
    }
    if stems.is_empty() {
        // Why a candidate was refused says more than "none"; a refused
        // bundle first, as it alone keeps the daemon from starting.
        let first = refused
            .iter()
            .position(|e| matches!(e, CertError::Bundle { .. }))
            .unwrap_or(0);
        return Err(if refused.is_empty() {
            CertError::Empty { dir: dir.to_owned() }
        } else {
            refused.swap_remove(first)
        });
    }
    if let Some(d) = default_stem
        && !stems.iter().any(|s| s == d)
    {
        return Err(CertError::Bundle {
            path: dir.join(format!("{d}.pem")),
            reason: "default_cert names no usable bundle in the directory".to_owned(),
        });
    }
    Ok(stems)
}

/// Resolves the certificate for a ClientHello from the current index.
#[derive(Debug)]
pub struct CertResolver(pub Arc<CertStore>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.index.load().lookup(hello.server_name())
    }
}

fn load_bundle(path: &Path, stem: &str, content: Vec<u8>, provider: &CryptoProvider) -> Result<Bundle, CertError> {
    let bad = |reason: String| CertError::Bundle {
        path: path.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&content)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("bad certificate PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(bad("no certificate in the bundle".to_owned()));
    };
    let key = PrivateKeyDer::from_pem_slice(&content).map_err(|e| bad(format!("no usable private key: {e}")))?;
    let (names, not_after) = leaf_names(leaf).map_err(bad)?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| bad(format!("key does not fit the certificate: {e}")))?;
    Ok(Bundle {
        stem: stem.to_owned(),
        names,
        not_after,
        key: Arc::new(certified),
        content: Arc::new(content),
    })
}

/// DNS names (and IP addresses) from the SAN, else the subject CN; and notAfter.
fn leaf_names(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| format!("certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default()).to_string()),
                    16 => {
                        names.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default()).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_owned());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}
