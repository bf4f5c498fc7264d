//! JWT bearer tokens (`jsonwebtoken`): HS256 with a shared secret, RS256 and ES256 with the
//! keys of a JWKS (a file, or a URL refreshed in the background).
//!
//! Algorithm confusion is impossible by construction: each key is bound to one algorithm
//! when it is loaded (the secret to HS256, an RSA key to RS256, a P-256 key to ES256), and
//! a token is checked only with a key bound to the algorithm its header names. `alg: none`
//! is no algorithm `jsonwebtoken` knows, so such tokens do not even parse.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use ucxl::PrincipalName;

/// Largest token accepted (checked before anything is decoded).
pub const MAX_TOKEN_BYTES: usize = 8 << 10;
/// Largest JWKS document read, from a file or a URL.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Least time between two refreshes a token with an unknown key id may cause.
const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(30);
/// Time allowed to fetch a JWKS URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a token was refused (logged; the client hears only that it is invalid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// An algorithm no configured key is bound to.
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    /// No key for the token's key id and algorithm.
    #[error("no key for key id {0:?}")]
    UnknownKey(Option<String>),
    /// Signature, expiry, not-before, issuer or audience check failed.
    #[error("{0}")]
    Rejected(String),
    /// `sub` missing or not a valid principal name.
    #[error("the token's sub is missing or not a valid principal name")]
    Subject,
}

/// A key bound to one algorithm.
#[derive(Clone)]
struct BoundKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for BoundKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The public keys of a JWKS, each bound to its algorithm.
#[derive(Debug, Clone, Default)]
pub struct JwkKeys(Vec<BoundKey>);

impl JwkKeys {
    /// Parses a JWKS document. Keys of other types or algorithms than RS256 and ES256 are
    /// skipped (logged); a document with no usable key is an error.
    ///
    /// # Errors
    /// One line saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let set: JwkSet =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => {
                    tracing::warn!(kid = ?kid, "JWKS key skipped: only RS256 and ES256 (P-256) keys are used");
                    continue;
                }
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => keys.push(BoundKey { kid, alg, key }),
                Err(e) => tracing::warn!(kid = ?kid, error = %e, "JWKS key skipped: unusable"),
            }
        }
        if keys.is_empty() {
            return Err("holds no RS256 or ES256 key".into());
        }
        Ok(Self(keys))
    }

    /// The key for a token's key id and algorithm: the one with that id, or, for a token
    /// without a key id, the only key of that algorithm.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&DecodingKey> {
        let mut of_alg = self.0.iter().filter(|k| k.alg == alg);
        if let Some(kid) = kid {
            of_alg
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| &k.key)
        } else {
            let first = of_alg.next()?;
            of_alg.next().is_none().then_some(&first.key)
        }
    }
}

/// The `[jwt]` settings of a policy, validated.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The HS256 secret, when one is configured.
    pub hs256_secret: Option<Arc<[u8]>>,
    /// Keys of the JWKS file.
    pub jwks: Option<JwkKeys>,
    /// A JWKS URL refreshed in the background.
    pub jwks_url: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// The claim holding the roles (an array of strings, or one space-separated string).
    pub roles_claim: String,
    /// Leeway for `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// JWKS URL refresh period.
    pub jwks_refresh: Duration,
}

/// A verified token's identity.
#[derive(Debug, Clone)]
pub struct Verified {
    /// `sub`.
    pub subject: PrincipalName,
    /// The roles claim.
    pub roles: Vec<String>,
    /// Every claim (for `${claim.NAME}`).
    pub claims: Map<String, Value>,
    /// `exp` (seconds since the epoch).
    pub expires: u64,
}

/// Checks JWTs against the configured keys.
pub struct Verifier {
    settings: JwtSettings,
    hs256: Option<DecodingKey>,
    /// The JWKS file's keys and, once fetched, the URL's.
    fetched: ArcSwap<JwkKeys>,
    refresh_now: Arc<Notify>,
    last_unknown_refresh: std::sync::Mutex<Option<tokio::time::Instant>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field("jwks_url", &self.settings.jwks_url)
            .finish_non_exhaustive()
    }
}

impl Drop for Verifier {
    /// A replaced verifier (policy reload) stops refreshing its URL.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Verifier {
    /// A verifier for `settings`.
    ///
    /// # Errors
    /// When the secret cannot be used as a key.
    pub fn new(settings: JwtSettings) -> Result<Self, String> {
        let hs256 = match &settings.hs256_secret {
            Some(secret) => Some(
                DecodingKey::from_secret(secret)
                    .map_err(|e| format!("the HS256 secret is not usable: {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            fetched: ArcSwap::from_pointee(settings.jwks.clone().unwrap_or_default()),
            settings,
            hs256,
            refresh_now: Arc::new(Notify::new()),
            last_unknown_refresh: std::sync::Mutex::new(None),
            stop: CancellationToken::new(),
        })
    }

    /// The claim holding roles.
    #[must_use]
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Verifies `token` now.
    ///
    /// # Errors
    /// [`JwtError`] saying why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("too large".into()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        let kid = header.kid.as_deref();
        let keys = self.fetched.load();
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .as_ref()
                .ok_or_else(|| JwtError::Algorithm("HS256".into()))?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let Some(key) = keys.find(kid, header.alg) else {
                    self.unknown_key();
                    return Err(JwtError::UnknownKey(kid.map(str::to_owned)));
                };
                key
            }
            other => return Err(JwtError::Algorithm(format!("{other:?}"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.leeway_seconds;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required
            .into_iter()
            .map(str::to_owned)
            .collect::<HashSet<_>>();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| JwtError::Rejected(e.to_string()))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(|s| PrincipalName::parse(s).ok())
            .ok_or(JwtError::Subject)?;
        let roles = match claims.get(&self.settings.roles_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let expires = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok(Verified {
            subject,
            roles,
            claims,
            expires,
        })
    }

    /// A token named a key the URL's JWKS may have gained since: refresh soon, at most
    /// once per [`UNKNOWN_KID_REFRESH`], so a flood of made-up key ids costs nothing.
    fn unknown_key(&self) {
        if self.settings.jwks_url.is_none() {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut last = self
            .last_unknown_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| now.duration_since(t) >= UNKNOWN_KID_REFRESH) {
            *last = Some(now);
            self.refresh_now.notify_one();
        }
    }

    /// Refreshes the JWKS URL's keys every refresh period (and when a token names an
    /// unknown key) until the verifier is dropped or `stop` is cancelled. The file's keys
    /// stay usable beside them.
    pub async fn refresh_jwks(self: Arc<Self>, stop: CancellationToken) {
        let Some(url) = self.settings.jwks_url.clone() else {
            return;
        };
        let client = match jwks_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the JWKS HTTP client");
                return;
            }
        };
        let own_stop = self.stop.clone();
        let refresh_now = Arc::clone(&self.refresh_now);
        let weak = Arc::downgrade(&self);
        // Held weakly: a verifier replaced by a reload is dropped, which stops this task.
        drop(self);
        loop {
            let Some(this) = weak.upgrade() else { return };
            match fetch_jwks(&client, &url).await {
                Ok(mut keys) => {
                    if let Some(file) = &this.settings.jwks {
                        keys.0.extend(file.0.iter().cloned());
                    }
                    tracing::info!(url = %url, keys = keys.0.len(), "JWKS refreshed");
                    this.fetched.store(Arc::new(keys));
                }
                Err(e) => {
                    tracing::warn!(url = %url, error = %e, "JWKS refresh failed; keeping the keys held");
                }
            }
            let period = this.settings.jwks_refresh;
            drop(this);
            let notified = refresh_now.notified();
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = notified => {}
                () = stop.cancelled() => return,
                () = own_stop.cancelled() => return,
            }
        }
    }
}

type JwksClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<axum::body::Bytes>,
>;

fn jwks_client() -> Result<JwksClient, String> {
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(FETCH_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| e.to_string())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

async fn fetch_jwks(client: &JwksClient, url: &str) -> Result<JwkKeys, String> {
    use http_body_util::BodyExt as _;
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let exchange = async {
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "not UTF-8".to_owned())?;
        JwkKeys::parse(text)
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

    fn settings() -> JwtSettings {
        JwtSettings {
            hs256_secret: Some(Arc::from(SECRET)),
            jwks: None,
            jwks_url: None,
            issuer: Some("https://auth.example".into()),
            audience: Some("rustle".into()),
            roles_claim: "roles".into(),
            leeway_seconds: 5,
            jwks_refresh: Duration::from_secs(300),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> Value {
        json!({"sub": "agent-7", "iss": "https://auth.example", "aud": "rustle",
               "exp": now() + 600, "roles": ["architect", "reader"], "agent": "claude"})
    }

    fn hs(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET).expect("key"),
        )
        .expect("encode")
    }

    fn verifier() -> Verifier {
        Verifier::new(settings()).expect("verifier")
    }

    #[test]
    fn a_valid_hs256_token_gives_subject_roles_and_claims() {
        let v = verifier().verify(&hs(&claims())).expect("valid");
        assert_eq!(v.subject.as_str(), "agent-7");
        assert_eq!(v.roles, ["architect", "reader"]);
        assert_eq!(v.claims["agent"], "claude");
        let mut c = claims();
        c["roles"] = json!("a b");
        assert_eq!(verifier().verify(&hs(&c)).expect("valid").roles, ["a", "b"]);
    }

    #[test]
    fn expired_not_yet_valid_and_wrong_issuer_or_audience_are_refused() {
        let v = verifier();
        let mut expired = claims();
        expired["exp"] = json!(now() - 60);
        assert!(matches!(
            v.verify(&hs(&expired)),
            Err(JwtError::Rejected(_))
        ));
        let mut within_leeway = claims();
        within_leeway["exp"] = json!(now() - 2);
        assert!(v.verify(&hs(&within_leeway)).is_ok(), "leeway applies");
        let mut early = claims();
        early["nbf"] = json!(now() + 60);
        assert!(matches!(v.verify(&hs(&early)), Err(JwtError::Rejected(_))));
        let mut iss = claims();
        iss["iss"] = json!("https://evil.example");
        assert!(v.verify(&hs(&iss)).is_err());
        let mut aud = claims();
        aud["aud"] = json!("other");
        assert!(v.verify(&hs(&aud)).is_err());
        for missing in ["aud", "iss", "exp", "sub"] {
            let mut c = claims();
            c.as_object_mut().expect("object").remove(missing);
            assert!(v.verify(&hs(&c)).is_err(), "without {missing}");
        }
        let mut bad_sub = claims();
        bad_sub["sub"] = json!(" padded ");
        assert_eq!(v.verify(&hs(&bad_sub)).err(), Some(JwtError::Subject));
    }

    #[test]
    fn tampered_unsigned_and_oversized_tokens_are_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let v = verifier();
        let token = hs(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut changed = claims();
        changed["sub"] = json!("admin");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(changed.to_string()),
            parts[2]
        );
        assert!(matches!(v.verify(&forged), Err(JwtError::Rejected(_))));
        let none_header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert!(matches!(v.verify(&unsigned), Err(JwtError::Malformed(_))));
        let wrong_key = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!!").expect("key"),
        )
        .expect("encode");
        assert!(v.verify(&wrong_key).is_err());
        assert!(matches!(
            v.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(JwtError::Malformed(_))
        ));
        for garbage in ["", "a.b", "a.b.c", "...", "e30.e30.", "\u{e9}.x.y"] {
            assert!(v.verify(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn other_hmac_algorithms_are_refused() {
        let token = encode(
            &Header::new(Algorithm::HS512),
            &claims(),
            &EncodingKey::from_secret(SECRET).expect("key"),
        )
        .expect("encode");
        assert!(matches!(
            verifier().verify(&token),
            Err(JwtError::Algorithm(_))
        ));
    }

    #[test]
    fn rs256_needs_a_jwks_key_and_hs256_needs_the_secret() {
        // No JWKS: an RS256 header finds no key.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
        let body = b64.encode(claims().to_string());
        let token = format!("{header}.{body}.c2ln");
        assert!(matches!(
            verifier().verify(&token),
            Err(JwtError::UnknownKey(None))
        ));
        let mut no_secret = settings();
        no_secret.hs256_secret = None;
        let v = Verifier::new(no_secret).expect("verifier");
        assert!(matches!(
            v.verify(&hs(&claims())),
            Err(JwtError::Algorithm(_))
        ));
    }

    #[test]
    fn jwks_documents_are_checked() {
        assert!(JwkKeys::parse("not json").is_err());
        assert!(JwkKeys::parse(r#"{"keys": []}"#).is_err());
        let oct = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}"#;
        assert!(
            JwkKeys::parse(oct).is_err(),
            "symmetric keys are never JWKS keys here"
        );
        assert!(JwkKeys::parse(&" ".repeat(MAX_JWKS_BYTES + 1)).is_err());
    }

    const RS_KEY: &str = include_str!("../../tests/fixtures/jwt/rs256.pem");
    const ES_KEY: &str = include_str!("../../tests/fixtures/jwt/es256.pem");
    const JWKS: &str = include_str!("../../tests/fixtures/jwt/jwks.json");
    const OTHER_RS_KEY: &str = include_str!("../../tests/fixtures/jwt/other-rs256.pem");

    fn jwks_verifier(secret: bool) -> Verifier {
        let mut s = settings();
        s.jwks = Some(JwkKeys::parse(JWKS).expect("jwks"));
        if !secret {
            s.hs256_secret = None;
        }
        Verifier::new(s).expect("verifier")
    }

    fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, &claims(), key).expect("encode")
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_the_jwks_keys() {
        let v = jwks_verifier(false);
        let rs = EncodingKey::from_rsa_pem(RS_KEY.as_bytes()).expect("rsa key");
        let es = EncodingKey::from_ec_pem(ES_KEY.as_bytes()).expect("ec key");
        assert!(
            v.verify(&signed(Algorithm::RS256, Some("rsa-1"), &rs))
                .is_ok()
        );
        assert!(
            v.verify(&signed(Algorithm::ES256, Some("ec-1"), &es))
                .is_ok()
        );
        // Without a kid, the only key of the algorithm is used.
        assert!(v.verify(&signed(Algorithm::RS256, None, &rs)).is_ok());
        // A kid bound to another algorithm is not used.
        assert!(matches!(
            v.verify(&signed(Algorithm::RS256, Some("ec-1"), &rs)),
            Err(JwtError::UnknownKey(_))
        ));
        // A key the JWKS lacks.
        let other = EncodingKey::from_rsa_pem(OTHER_RS_KEY.as_bytes()).expect("rsa key");
        assert!(
            v.verify(&signed(Algorithm::RS256, Some("rsa-1"), &other))
                .is_err()
        );
        assert!(matches!(
            v.verify(&signed(Algorithm::RS256, Some("rsa-2"), &other)),
            Err(JwtError::UnknownKey(_))
        ));
    }

    #[test]
    fn an_hs256_token_keyed_with_the_public_key_is_refused() {
        // The classic confusion: sign HS256 with the RSA public key's bytes as the secret.
        let public = JWKS.as_bytes();
        let forged = signed(
            Algorithm::HS256,
            Some("rsa-1"),
            &EncodingKey::from_secret(public).expect("key"),
        );
        assert!(matches!(
            jwks_verifier(false).verify(&forged),
            Err(JwtError::Algorithm(_))
        ));
        assert!(matches!(
            jwks_verifier(true).verify(&forged),
            Err(JwtError::Rejected(_))
        ));
        // And an RS256 header cannot make the HS secret verify anything.
        let hs_as_rs = format!(
            "{}.{}",
            {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(r#"{"alg":"RS256","kid":"rsa-1"}"#)
            },
            hs(&claims())
                .split_once('.')
                .map(|(_, rest)| rest)
                .unwrap_or_default()
        );
        assert!(jwks_verifier(true).verify(&hs_as_rs).is_err());
    }
}
