//! Who is calling and what they may do: API keys and JWTs (the credentials), the policy
//! file (principals, roles and grants written as UCXL patterns) and request rates per
//! principal. [`http`] puts it in front of the routes.
//!
//! Every request is authenticated before anything else of it is read; the principal then
//! travels with the request, and each route checks its operation on its address.

pub mod grant;
pub mod http;
pub mod jwt;
pub mod limit;
pub mod op;
pub mod policy;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use grant::{Kind, Principal, Rate};
pub use op::{Op, Ops};
pub use policy::Policy;

use crate::config::{AuthMode, Config, Secret};

/// Largest `Authorization` header looked at; larger ones are refused unread.
pub const MAX_AUTHORIZATION_BYTES: usize = jwt::MAX_TOKEN_BYTES + 16;
/// Verified JWTs remembered until they expire, so a client reusing its token pays for the
/// signature check once. Past this the memory starts afresh.
const JWT_CACHE_MAX: usize = 4096;
/// Longest token remembered (longer ones are verified every time), so the cache stays
/// within a few MiB.
const JWT_CACHE_TOKEN_MAX: usize = 2048;

/// Why a request was not authenticated (401). The client hears which of these, never why
/// a token was invalid: the log has that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No `Authorization` header on a route that needs one.
    Missing,
    /// Not `Bearer <token>`, not ASCII, or too large.
    Malformed,
    /// An unknown key, or a JWT that failed a check.
    Invalid,
}

impl Unauthenticated {
    /// The RFC 6750 `error` parameter of `WWW-Authenticate`, where it defines one.
    #[must_use]
    pub fn rfc6750_error(self) -> Option<&'static str> {
        match self {
            Self::Missing => None,
            Self::Malformed => Some("invalid_request"),
            Self::Invalid => Some("invalid_token"),
        }
    }

    /// The message of the 401.
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "this route needs credentials: Authorization: Bearer <API key or JWT>",
            Self::Malformed => "the Authorization header is not `Bearer <token>`",
            Self::Invalid => "the bearer token is not valid",
        }
    }
}

/// The policy and JWT verifier in force (swapped whole by a reload).
#[derive(Debug, Default)]
struct Current {
    policy: Option<Arc<Policy>>,
    verifier: Option<Arc<jwt::Verifier>>,
}

/// A policy read and checked, ready to be put in force.
#[derive(Debug)]
pub struct PreparedPolicy(Current);

/// A verified JWT's principal, until the token expires.
#[derive(Debug)]
struct Cached {
    principal: Arc<Principal>,
    valid_until: u64,
}

/// What `/v1/status` shows of authentication.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuthStatus {
    /// `required` or `none`.
    pub mode: AuthMode,
    /// API-key principals in the policy.
    pub principals: usize,
    /// Whether JWTs are accepted.
    pub jwt: bool,
}

/// Authentication and rates, shared by every request.
#[derive(Debug)]
pub struct Auth {
    current: ArcSwap<Current>,
    anonymous: ArcSwap<Principal>,
    admin_token: Arc<Principal>,
    /// Keyed by the token itself with the standard library's `SipHash` and its per-process
    /// random keys: a client cannot aim at buckets, and the full comparison that confirms
    /// a hit is constant-time (`Cached::token`), so the lookup reveals nothing of other
    /// callers' tokens. (A SHA-256 of each token cost a read a tenth of its instructions.)
    jwt_cache: Mutex<HashMap<Box<str>, Cached>>,
    limiter: limit::Limiter,
}

impl Auth {
    /// Authentication for `config`, with the policy it names loaded (blocking: file reads).
    ///
    /// # Errors
    /// The policy's problems, one line each.
    pub fn new(config: &Config, env: &HashMap<String, String>) -> Result<Self, Vec<String>> {
        let auth = Self {
            current: ArcSwap::from_pointee(Current::default()),
            anonymous: ArcSwap::from_pointee(Principal::anonymous(anonymous_rate(config))),
            admin_token: Arc::new(Principal::admin_token()),
            jwt_cache: Mutex::new(HashMap::new()),
            limiter: limit::Limiter::default(),
        };
        auth.install(Self::prepare(config, env)?, config);
        Ok(auth)
    }

    /// Reads and checks the policy `config` names (blocking: file reads), without
    /// changing anything.
    ///
    /// # Errors
    /// The policy's problems, one line each.
    pub fn prepare(
        config: &Config,
        env: &HashMap<String, String>,
    ) -> Result<PreparedPolicy, Vec<String>> {
        Ok(PreparedPolicy(match &config.auth_policy {
            None => Current::default(),
            Some(path) => load(path, env)?,
        }))
    }

    /// Puts a prepared policy in force. Returns its JWT verifier, whose JWKS refresh the
    /// caller starts.
    pub fn install(&self, prepared: PreparedPolicy, config: &Config) -> Option<Arc<jwt::Verifier>> {
        let current = prepared.0;
        let verifier = current.verifier.clone();
        self.current.store(Arc::new(current));
        self.anonymous
            .store(Arc::new(Principal::anonymous(anonymous_rate(config))));
        self.jwt_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        verifier
    }

    /// The JWT verifier in force, if any (its JWKS refresh is started at start-up).
    #[must_use]
    pub fn verifier(&self) -> Option<Arc<jwt::Verifier>> {
        self.current.load().verifier.clone()
    }

    /// What `/v1/status` shows.
    #[must_use]
    pub fn status(&self, mode: AuthMode) -> AuthStatus {
        let current = self.current.load();
        AuthStatus {
            mode,
            principals: current.policy.as_ref().map_or(0, |p| p.principals()),
            jwt: current.verifier.is_some(),
        }
    }

    /// True when the policy gives some principal the `admin` operation.
    #[must_use]
    pub fn policy_has_admins(&self) -> bool {
        self.current
            .load()
            .policy
            .as_ref()
            .is_some_and(|p| p.has_admins())
    }

    /// Who sent `authorization`. With `mode` `none`, callers without the admin token are
    /// anonymous; with `required`, a valid API key, JWT or the admin token is needed.
    ///
    /// # Errors
    /// [`Unauthenticated`] saying what was wrong.
    pub fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
        mode: AuthMode,
        admin_token: Option<&Secret>,
    ) -> Result<Arc<Principal>, Unauthenticated> {
        let Some(header) = authorization else {
            return match mode {
                AuthMode::None => Ok(self.anonymous.load_full()),
                AuthMode::Required => Err(Unauthenticated::Missing),
            };
        };
        let token = match (bearer(header), mode) {
            (Ok(token), _) => token,
            // Without authentication, credentials other than the admin token are ignored
            // (proxies and clients add their own headers).
            (Err(_), AuthMode::None) => return Ok(self.anonymous.load_full()),
            (Err(e), AuthMode::Required) => return Err(e),
        };
        if admin_token.is_some_and(|t| same_secret(token, t.expose())) {
            return Ok(Arc::clone(&self.admin_token));
        }
        if mode == AuthMode::None {
            return Ok(self.anonymous.load_full());
        }
        let current = self.current.load();
        let Some(policy) = &current.policy else {
            return Err(Unauthenticated::Invalid);
        };
        if token.bytes().filter(|b| *b == b'.').count() == 2 {
            let Some(verifier) = &current.verifier else {
                tracing::info!("a JWT was presented but the policy has no [jwt] settings");
                return Err(Unauthenticated::Invalid);
            };
            return self.jwt(policy, verifier, token);
        }
        policy.by_key(token).ok_or_else(|| {
            tracing::info!("an unknown API key was presented");
            Unauthenticated::Invalid
        })
    }

    fn jwt(
        &self,
        policy: &Policy,
        verifier: &jwt::Verifier,
        token: &str,
    ) -> Result<Arc<Principal>, Unauthenticated> {
        let now = jsonwebtoken::get_current_timestamp();
        {
            let cache = self
                .jwt_cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((held, hit)) = cache.get_key_value(token)
                && bool::from(held.as_bytes().ct_eq(token.as_bytes()))
                && now <= hit.valid_until
            {
                return Ok(Arc::clone(&hit.principal));
            }
        }
        let claims = verifier.verify(token).map_err(|e| {
            tracing::info!(error = %e, "a JWT was refused");
            Unauthenticated::Invalid
        })?;
        let principal = Arc::new(policy.jwt_principal(&claims));
        let valid_until = claims
            .expires
            .saturating_add(verifier.settings().leeway_seconds);
        if token.len() > JWT_CACHE_TOKEN_MAX {
            return Ok(principal);
        }
        let mut cache = self
            .jwt_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= JWT_CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            token.into(),
            Cached {
                principal: Arc::clone(&principal),
                valid_until,
            },
        );
        Ok(principal)
    }

    /// Takes one request from `principal`'s rate (anonymous callers: per `caller`, their
    /// address); `Err` with the seconds to wait.
    ///
    /// # Errors
    /// The `Retry-After` seconds when the rate is spent.
    pub fn admit(&self, principal: &Principal, caller: &str) -> Result<(), u32> {
        let Some(rate) = principal.rate() else {
            return Ok(());
        };
        let key = if principal.kind() == Kind::Anonymous {
            caller
        } else {
            principal.name().as_str()
        };
        self.limiter
            .check(key, rate)
            .map_err(limit::retry_after_secs)
    }
}

fn anonymous_rate(config: &Config) -> Option<Rate> {
    config.anonymous_rate_per_sec.map(|per_sec| Rate {
        per_sec,
        burst: per_sec,
    })
}

fn load(path: &Path, env: &HashMap<String, String>) -> Result<Current, Vec<String>> {
    let policy = Policy::load(path, env)?;
    let verifier = match policy.jwt() {
        Some(settings) => Some(Arc::new(
            jwt::Verifier::new(settings.clone()).map_err(|e| vec![e])?,
        )),
        None => None,
    };
    Ok(Current {
        policy: Some(Arc::new(policy)),
        verifier,
    })
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1: the scheme in any case,
/// a `token68`).
fn bearer(header: &HeaderValue) -> Result<&str, Unauthenticated> {
    if header.len() > MAX_AUTHORIZATION_BYTES {
        return Err(Unauthenticated::Malformed);
    }
    let text = header.to_str().map_err(|_| Unauthenticated::Malformed)?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or(Unauthenticated::Malformed)?;
    let token = token.trim_start();
    let token68 = !token.is_empty()
        && token.trim_end_matches('=').bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if scheme.eq_ignore_ascii_case("bearer") && token68 {
        Ok(token)
    } else {
        Err(Unauthenticated::Malformed)
    }
}

/// Compares secrets in constant time (over their digests, so length does not leak).
#[must_use]
pub fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes())
        .ct_eq(&Sha256::digest(b.as_bytes()))
        .into()
}

/// A fresh API key: `rk_` and 32 random bytes (256 bits), base64url.
///
/// # Errors
/// When the operating system has no randomness to give.
pub fn new_key() -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "rk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// What `rustle-gateway auth new-key NAME` prints: the key once, and the policy lines that
/// hold only its SHA-256.
#[must_use]
pub fn new_key_text(name: &ucxl::PrincipalName, key: &str) -> String {
    let name_toml = toml::Value::String(name.as_str().to_owned());
    format!(
        "API key for {name} (shown once; the policy stores only its SHA-256):\n\n    {key}\n\n\
         Add to the policy file (RUSTLE_AUTH_POLICY), name the roles it holds, then reload\n\
         (POST /v1/admin/reload or SIGHUP):\n\n\
         [[principals]]\nname = {name_toml}\nkey_sha256 = \"{}\"\nroles = []\n",
        hex::encode(policy::key_digest(key))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header value")
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer(&value("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(&value("bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(bearer(&value("BEARER   x=")), Ok("x="));
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic abc",
            "Bearer a b",
            "Bearer a,b",
            "abc",
            "Bearer =abc",
        ] {
            assert_eq!(
                bearer(&value(bad)),
                Err(Unauthenticated::Malformed),
                "{bad:?}"
            );
        }
        let huge = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES));
        assert_eq!(bearer(&value(&huge)), Err(Unauthenticated::Malformed));
        let latin1 = HeaderValue::from_bytes(b"Bearer caf\xe9").expect("opaque bytes");
        assert_eq!(bearer(&latin1), Err(Unauthenticated::Malformed));
    }

    #[test]
    fn new_keys_are_random_and_long_and_print_only_their_digest() {
        let a = new_key().expect("key");
        let b = new_key().expect("key");
        assert_ne!(a, b);
        assert!(a.starts_with("rk_") && a.len() == 3 + 43, "{a}");
        let name = ucxl::PrincipalName::parse("bot \"one\"").expect("name");
        let text = new_key_text(&name, &a);
        let policy_part = text.split("[[principals]]").nth(1).expect("policy lines");
        assert!(
            !policy_part.contains(&a),
            "the policy lines never hold the key"
        );
        assert!(policy_part.contains(&hex::encode(policy::key_digest(&a))));
        let parsed: toml::Table = format!("[[principals]]{policy_part}")
            .parse()
            .expect("the printed lines are TOML");
        assert!(parsed.contains_key("principals"));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
