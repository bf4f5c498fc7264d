//! TLS for [`crate::serve`]: the server configuration read from PEM files, optional client
//! certificates (mTLS), and certificate reloads without a restart.
//!
//! The certificate and key live behind a resolver that rustls asks on every full handshake,
//! so [`ServerTls::reload`] can swap them while connections are being served: handshakes
//! that start after the swap get the new certificate, connections already open keep theirs.
//! Cryptography is rustls with the `ring` provider, named explicitly rather than taken from
//! a process-wide default, so whichever other providers the dependency graph enables cannot
//! change it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};

/// Where the server's TLS material is, all in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// The private key of the server's certificate: PKCS#8 (`PRIVATE KEY`), PKCS#1
    /// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`); the first key in the file is used.
    pub key: PathBuf,
    /// CA certificates for client certificates. When set, every client must present a
    /// certificate signed by one of them (mutual TLS); when unset, none is asked for.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material could not be loaded. Messages name the file and the fault, never
/// what the file holds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM: {reason}", path.display())]
    InvalidPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key in a supported PEM form.
    #[error(
        "{} holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a kind the server cannot sign with, or malformed.
    #[error("the private key in {} is not usable: {reason}", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What rustls said about it.
        reason: String,
    },
    /// The server's certificate cannot be parsed.
    #[error("the certificate in {} is not usable: {reason}", path.display())]
    InvalidCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is not the one the certificate was issued for.
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The client CA bundle is empty or holds a certificate that cannot be a trust anchor.
    #[error("invalid client CA bundle {}: {reason}", path.display())]
    InvalidCaBundle {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (not expected with the built-in provider).
    #[error("TLS configuration refused: {0}")]
    Config(rustls::Error),
}

/// A TLS server configuration for [`crate::serve::serve`], with a certificate that can be
/// replaced while serving.
///
/// Clones share the configuration: a [`reload`](Self::reload) through any clone is seen by
/// the server using another.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    certificate: Arc<SwappableCert>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads the certificate chain, the private key and, if set, the client CA bundle, and
    /// builds the server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, and,
    /// with a client CA, client certificates required and verified against it.
    ///
    /// # Errors
    /// When a file cannot be read or parsed, the key does not match the certificate, or the
    /// CA bundle holds no usable certificate.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_certified_key(files, &provider)?;
        let certificate = Arc::new(SwappableCert(ArcSwap::from_pointee(certified)));
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match &files.client_ca {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, &provider)?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            inner: Arc::new(Inner {
                files: files.clone(),
                provider,
                certificate,
                config: Arc::new(config),
            }),
        })
    }

    /// Reads the certificate and key files again and serves them on handshakes from now on;
    /// connections already open are not affected. On any error the current certificate stays
    /// in use.
    ///
    /// The client CA bundle is read only by [`load`](Self::load): changing it takes a
    /// restart.
    ///
    /// # Errors
    /// As [`load`](Self::load), for the certificate and key files.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = load_certified_key(&self.inner.files, &self.inner.provider)?;
        self.inner.certificate.0.store(Arc::new(certified));
        Ok(())
    }

    /// The acceptor for one connection's handshake.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.inner.config))
    }
}

impl fmt::Debug for ServerTls {
    // Paths and settings only: the configuration holds the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.inner.files)
            .field("alpn", &["h2", "http/1.1"])
            .finish_non_exhaustive()
    }
}

/// The server certificate rustls asks for on each full handshake, replaceable at any time.
struct SwappableCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl fmt::Debug for SwappableCert {
    // rustls requires `Debug`; the key must not show up in it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwappableCert")
            .field("chain_len", &self.0.load().cert.len())
            .finish_non_exhaustive()
    }
}

/// The certificate chain and its signing key, checked to belong together.
fn load_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(&files.cert)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = read_private_key(&files.key)?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                path: files.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key cannot tell its public half; rustls accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(e) => Err(TlsError::InvalidCertificate {
            path: files.cert.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Client certificates required, signed by a CA of the bundle at `path`.
fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let invalid = |reason: String| TlsError::InvalidCaBundle {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots.add(certificate).map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no PEM certificate in it".to_owned()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| invalid(e.to_string()))
}

/// Every certificate in the PEM file at `path`, in order; other sections are skipped.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid_pem(path, &e))
}

/// The first private key in the PEM file at `path`.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        e => invalid_pem(path, &e),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// PEM parse errors name a marker line or a base64 fault, not the decoded contents.
fn invalid_pem(path: &Path, e: &rustls::pki_types::pem::Error) -> TlsError {
    TlsError::InvalidPem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test material: PKCS#1 and SEC1 keys, which `rcgen` cannot write, with self-signed
    /// certificates for them.
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A self-signed certificate and its PKCS#8 key, written to `dir` as `<name>.crt` and
    /// `<name>.key`.
    fn self_signed(dir: &Path, name: &str) -> (TlsFiles, String) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("certificate generated");
        let key_pem = generated.key_pair.serialize_pem();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            client_ca: None,
        };
        std::fs::write(&files.cert, generated.cert.pem()).expect("cert written");
        std::fs::write(&files.key, &key_pem).expect("key written");
        (files, key_pem)
    }

    /// The base64 lines of a PEM file, which must appear in no message.
    fn secret_lines(pem: &str) -> Vec<&str> {
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    #[test]
    fn loads_a_pkcs8_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, _) = self_signed(dir.path(), "server");
        ServerTls::load(&files).expect("loaded");
    }

    #[test]
    fn loads_a_pkcs1_rsa_key() {
        let files = TlsFiles {
            cert: fixture("rsa.crt"),
            key: fixture("rsa-pkcs1.key"),
            client_ca: None,
        };
        ServerTls::load(&files).expect("loaded");
    }

    #[test]
    fn loads_a_sec1_ec_key() {
        let files = TlsFiles {
            cert: fixture("ec.crt"),
            key: fixture("ec-sec1.key"),
            client_ca: None,
        };
        ServerTls::load(&files).expect("loaded");
    }

    #[test]
    fn missing_file_is_unreadable_and_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut files, _) = self_signed(dir.path(), "server");
        files.key = dir.path().join("absent.key");
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::Unreadable { path, source }
                if *path == files.key && source.kind() == io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert!(e.to_string().contains("absent.key"), "{e}");
    }

    #[test]
    fn certificate_file_without_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut files, _) = self_signed(dir.path(), "server");
        // The key file holds PEM, but no certificate.
        files.cert = files.key.clone();
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::NoCertificate { path } if *path == files.key),
            "{e:?}"
        );
    }

    #[test]
    fn key_file_without_key_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut files, _) = self_signed(dir.path(), "server");
        files.key = files.cert.clone();
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::NoPrivateKey { path } if *path == files.cert),
            "{e:?}"
        );
    }

    #[test]
    fn truncated_pem_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, key_pem) = self_signed(dir.path(), "server");
        let cut = key_pem.find("-----END").expect("PEM has an end marker");
        std::fs::write(&files.key, &key_pem[..cut]).expect("key written");
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::InvalidPem { path, .. } if *path == files.key),
            "{e:?}"
        );
        for line in secret_lines(&key_pem) {
            assert!(!e.to_string().contains(line), "{e}");
        }
    }

    #[test]
    fn key_of_another_certificate_is_a_mismatch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut files, _) = self_signed(dir.path(), "server");
        let (other, other_key_pem) = self_signed(dir.path(), "other");
        files.key = other.key;
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::KeyMismatch { cert, key } if *cert == files.cert && *key == files.key),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(message.contains("does not match"), "{message}");
        for line in secret_lines(&other_key_pem) {
            assert!(!message.contains(line), "{message}");
        }
    }

    #[test]
    fn garbage_key_is_unsupported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, _) = self_signed(dir.path(), "server");
        // Well-formed PEM around bytes that are no key.
        std::fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
        )
        .expect("key written");
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::UnsupportedKey { path, .. } if *path == files.key),
            "{e:?}"
        );
    }

    #[test]
    fn empty_client_ca_bundle_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut files, _) = self_signed(dir.path(), "server");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").expect("bundle written");
        files.client_ca = Some(ca.clone());
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::InvalidCaBundle { path, .. } if *path == ca),
            "{e:?}"
        );
    }

    #[test]
    fn client_ca_bundle_with_a_broken_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut files, _) = self_signed(dir.path(), "server");
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        )
        .expect("bundle written");
        files.client_ca = Some(ca.clone());
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::InvalidCaBundle { path, .. } if *path == ca),
            "{e:?}"
        );
    }

    #[test]
    fn missing_client_ca_bundle_is_unreadable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut files, _) = self_signed(dir.path(), "server");
        let ca = dir.path().join("absent-ca.pem");
        files.client_ca = Some(ca.clone());
        let e = ServerTls::load(&files).expect_err("refused");
        assert!(
            matches!(&e, TlsError::Unreadable { path, .. } if *path == ca),
            "{e:?}"
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, key_pem) = self_signed(dir.path(), "server");
        let tls = ServerTls::load(&files).expect("loaded");
        let debug = format!("{tls:?} {:?}", tls.inner.certificate);
        assert!(debug.contains("server.key"), "{debug}");
        for line in secret_lines(&key_pem) {
            assert!(!debug.contains(line), "{debug}");
        }
    }

    /// Handshakes over an in-memory pipe, as a client trusting `trusted` and offering
    /// `alpn`; returns the certificate presented and the protocol agreed.
    async fn handshake(
        tls: &ServerTls,
        trusted: &str,
        alpn: &[&[u8]],
    ) -> (CertificateDer<'static>, Option<Vec<u8>>) {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
            roots.add(certificate.expect("PEM")).expect("root added");
        }
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let (client, server) = tokio::join!(
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, client_io),
            tls.acceptor().accept(server_io),
        );
        let (client, _server) = (client.expect("client side"), server.expect("server side"));
        let connection = client.get_ref().1;
        let leaf = connection
            .peer_certificates()
            .and_then(<[_]>::first)
            .expect("certificate presented");
        (
            leaf.clone().into_owned(),
            connection.alpn_protocol().map(<[u8]>::to_vec),
        )
    }

    #[tokio::test]
    async fn handshake_presents_the_certificate_and_prefers_h2() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, _) = self_signed(dir.path(), "server");
        let tls = ServerTls::load(&files).expect("loaded");
        let cert_pem = std::fs::read_to_string(&files.cert).expect("cert");
        let expected = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("PEM");
        let (leaf, alpn) = handshake(&tls, &cert_pem, &[b"http/1.1", b"h2"]).await;
        assert_eq!(leaf, expected);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        let (_, alpn) = handshake(&tls, &cert_pem, &[b"http/1.1"]).await;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn reload_swaps_the_certificate_presented() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, _) = self_signed(dir.path(), "server");
        let tls = ServerTls::load(&files).expect("loaded");
        let (replacement, _) = self_signed(dir.path(), "replacement");
        std::fs::copy(&replacement.cert, &files.cert).expect("cert replaced");
        std::fs::copy(&replacement.key, &files.key).expect("key replaced");
        tls.reload().expect("reloaded");
        let cert_pem = std::fs::read_to_string(&files.cert).expect("cert");
        let expected = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("PEM");
        // A clone sees the reload too.
        let (leaf, _) = handshake(&tls.clone(), &cert_pem, &[]).await;
        assert_eq!(leaf, expected);
    }

    #[test]
    fn reload_error_keeps_the_current_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, _) = self_signed(dir.path(), "server");
        let tls = ServerTls::load(&files).expect("loaded");
        let before = tls.inner.certificate.0.load_full();
        std::fs::write(&files.key, "not a key").expect("key written");
        let e = tls.reload().expect_err("refused");
        assert!(matches!(e, TlsError::NoPrivateKey { .. }), "{e:?}");
        assert!(Arc::ptr_eq(&before, &tls.inner.certificate.0.load_full()));
    }
}
