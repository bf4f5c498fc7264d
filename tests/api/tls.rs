//! TLS on both legs, over real sockets: clients to the gateway (HTTPS, certificate reload,
//! plain HTTP refused) and the gateway to a node process that serves HTTPS with a private
//! CA and requires client certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use reqwest::Method;
use rustle_gateway::config::BackendMode;
use rustle_gateway::startup::Options;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::helpers::{spawn_app_with, test_config};
use super::nodes::NodeProc;

/// A private certificate authority for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, key }
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.cert.pem()).expect("CA written");
        path
    }

    fn issue(&self, dir: &Path, name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("names");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        let issued = Issued {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("cert written");
        std::fs::write(&issued.key, key.serialize_pem()).expect("key written");
        issued
    }
}

fn https_client(ca: &Ca) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).expect("CA"))
        .tls_info(true)
        .build()
        .expect("client")
}

/// The certificate the server presented on this response's connection.
fn presented(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS answer")
        .to_vec()
}

#[tokio::test]
async fn the_gateway_serves_https_reloads_its_certificate_and_refuses_plain_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let first = ca.issue(dir.path(), "server", ExtendedKeyUsagePurpose::ServerAuth);
    let mut config = test_config();
    config.tls_cert = Some(first.cert.clone());
    config.tls_key = Some(first.key.clone());
    config.admin_token = Some(crate::admin::secret("tls-admin-token-0123456789"));
    let app = spawn_app_with(config, Options::default()).await;
    // Reloads re-read the environment: it names the same token and files.
    app.env.lock().expect("env").extend([
        (
            "RUSTLE_ADMIN_TOKEN".to_owned(),
            "tls-admin-token-0123456789".to_owned(),
        ),
        (
            "RUSTLE_TLS_CERT".to_owned(),
            first.cert.display().to_string(),
        ),
        ("RUSTLE_TLS_KEY".to_owned(), first.key.display().to_string()),
    ]);
    let base = format!("https://{}", app.addr);
    let client = https_client(&ca);
    let a = "ucxl://agent:tls@bzzz:t/x";
    let written = client
        .put(format!(
            "{base}/v1/envelopes?address={}",
            super::helpers::enc(a)
        ))
        .json(&json!({"content": 1}))
        .send()
        .await
        .expect("HTTPS answers");
    assert_eq!(written.status(), 201);
    assert_eq!(presented(&written), first.der);
    // HTTP/2 by ALPN, where the client offers it.
    let h2 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).expect("CA"))
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = h2.get(format!("{base}/health")).send().await.expect("h2");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(app.addr).await.expect("tcp");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("sent");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // A renewed certificate in the same files is served after a reload.
    let renewed = ca.issue(dir.path(), "renewed", ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::copy(&renewed.cert, &first.cert).expect("cert replaced");
    std::fs::copy(&renewed.key, &first.key).expect("key replaced");
    let reloaded = client
        .request(Method::POST, format!("{base}/v1/admin/reload"))
        .bearer_auth("tls-admin-token-0123456789")
        .send()
        .await
        .expect("reload");
    let (status, body) = super::helpers::json(reloaded).await;
    assert_eq!(status, 200, "{body}");
    let fresh = https_client(&ca)
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("HTTPS answers");
    assert_eq!(
        presented(&fresh),
        renewed.der,
        "new connections get the new certificate"
    );
    // A broken key is reported and the renewed certificate stays.
    std::fs::write(&first.key, "not a key").expect("key broken");
    let (status, body) = super::helpers::json(
        client
            .request(Method::POST, format!("{base}/v1/admin/reload"))
            .bearer_auth("tls-admin-token-0123456789")
            .send()
            .await
            .expect("reload"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["response"]["data"]["not_applied"][0]["key"], "tls_cert",
        "{body}"
    );
    let still = https_client(&ca)
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("HTTPS answers");
    assert_eq!(presented(&still), renewed.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_a_node_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("cluster CA");
    let server = ca.issue(dir.path(), "node", ExtendedKeyUsagePurpose::ServerAuth);
    let client = ca.issue(dir.path(), "gateway", ExtendedKeyUsagePurpose::ClientAuth);
    let ca_file = ca.write(dir.path(), "ca");
    let node = NodeProc::start(
        "tls",
        &[],
        None,
        &[
            ("BZZZ_TLS_CERT", &server.cert.display().to_string()),
            ("BZZZ_TLS_KEY", &server.key.display().to_string()),
            ("BZZZ_TLS_CLIENT_CA", &ca_file.display().to_string()),
        ],
    )
    .await;
    assert!(node.url("").starts_with("https://"));
    let endpoints = [node.url("")];
    let a = "ucxl://agent:tls@bzzz:t/via-node";
    // Trusting the cluster CA and presenting a certificate it signed: served by the node.
    let mut config = crate::resilience::cluster_config(&endpoints, BackendMode::Real);
    config.bzzz_ca = Some(ca_file.clone());
    config.bzzz_client_cert = Some(client.cert.clone());
    config.bzzz_client_key = Some(client.key.clone());
    let app = spawn_app_with(config, Options::default()).await;
    let response = app.put(a, json!({"content": "over mTLS"})).await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["x-rustle-endpoint"]
            .to_str()
            .expect("ascii"),
        node.url("")
    );
    // Without the client certificate the node refuses the handshake: the endpoint fails.
    let mut config = crate::resilience::cluster_config(&endpoints, BackendMode::Real);
    config.bzzz_ca = Some(ca_file);
    let app = spawn_app_with(config, Options::default()).await;
    assert_eq!(app.get(a).await.status(), 503);
    // Without the CA the node's certificate is not trusted.
    let mut config = crate::resilience::cluster_config(&endpoints, BackendMode::Real);
    config.bzzz_client_cert = Some(client.cert);
    config.bzzz_client_key = Some(client.key);
    let app = spawn_app_with(config, Options::default()).await;
    assert_eq!(app.get(a).await.status(), 503);
}
