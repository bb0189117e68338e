//! A test's scratch directory (removed on drop) and its certificates: a CA,
//! the ingress's bundle and the fleets' bundle.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicU32},
};

use fleet_sim::{client, pki::TestCa};

/// A scratch directory removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("ingress-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        Self(path)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Certificates for one test: a CA, the ingress's bundle, the fleets' bundle.
pub struct Pki {
    pub ca: TestCa,
    pub ca_path: PathBuf,
    pub certs_dir: PathBuf,
    pub fleet_bundle: PathBuf,
}

impl Pki {
    /// Writes `ca.pem`, `certs/localhost.pem` and `fleet.pem` into `dir`.
    pub fn new(dir: &TestDir) -> Self {
        let ca = TestCa::new("ingress test CA").expect("CA");
        let ca_path = dir.write("ca.pem", &ca.cert_pem);
        dir.write(
            "certs/localhost.pem",
            &ca.issue(&["localhost", "127.0.0.1"]).expect("leaf").bundle(),
        );
        let fleet_bundle = dir.write(
            "fleet.pem",
            &ca.issue(&["127.0.0.1", "localhost"]).expect("leaf").bundle(),
        );
        Self {
            ca,
            ca_path,
            certs_dir: dir.path("certs"),
            fleet_bundle,
        }
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        client::tls_config(&self.ca.cert_pem).expect("client TLS config")
    }

    /// A TLS acceptor with the fleets' certificate, for fleets a test plays itself.
    pub fn fleet_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let pem = std::fs::read(&self.fleet_bundle).expect("fleet bundle");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem).map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_slice(&pem).expect("key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }
}
