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
pub mod metadata;
pub mod op;
pub mod policy;

use std::collections::HashMap;
use std::net::IpAddr;
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

use crate::config::{AuthMode, Config};

/// Largest `Authorization` header looked at; larger ones are refused unread.
pub const MAX_AUTHORIZATION_BYTES: usize = jwt::MAX_TOKEN_BYTES + 16;
/// Credentials remembered (API keys, and verified JWTs until they expire), so a client
/// reusing its credential pays for the SHA-256 or the signature check once. Past this the
/// memory starts afresh.
const ACCEPTED_MAX: usize = 4096;
/// Longest credential remembered (longer ones are checked every time), so the memory stays
/// within a few MiB.
const ACCEPTED_TOKEN_MAX: usize = 2048;
/// `valid_until` of a credential that does not expire (an API key: until the next reload).
const NEVER: u64 = u64::MAX;

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

/// The policy, JWT verifier and admin token in force, and the credentials accepted under
/// them: swapped whole by a reload, so a request that read the old ones can only ever
/// remember a credential in the old memory, never in the new one.
#[derive(Debug, Default)]
struct Current {
    policy: Option<Arc<Policy>>,
    verifier: Option<Arc<jwt::Verifier>>,
    /// SHA-256 of the admin token (`RUSTLE_ADMIN_TOKEN`), when one is set.
    admin_token: Option<[u8; 32]>,
    accepted: Accepted,
}

/// A policy read and checked, ready to be put in force.
#[derive(Debug)]
pub struct PreparedPolicy(Current);

/// An accepted credential's principal, until `valid_until` (seconds since the epoch;
/// [`NEVER`] for API keys).
#[derive(Debug)]
struct Cached {
    principal: Arc<Principal>,
    valid_until: u64,
}

/// Credentials that authenticated under one [`Current`]: the bearer token as presented →
/// its principal. Only credentials that passed are held (an unknown key or a refused token
/// is checked again every time), never the admin token.
///
/// Keyed by the token itself, with the standard library's `SipHash` under per-process
/// random keys. An attacker cannot compute where a token of their choosing lands, so the
/// lookup's timing says nothing about the tokens held: hashing takes the same time for any
/// token of a length, and the map compares the presented token in full (`memcmp`, whose
/// time depends on the common prefix) only with tokens that landed in the same bucket
/// with the same 7 tag bits, which for a guess is chance under keys the attacker does not
/// know, not closeness to a held token. The map's own comparison decides a hit; nothing
/// else is compared. (Keyed by each token's SHA-256 instead, a read would pay 3.5–7k
/// instructions, 5–10% of a mock-mode read.) The policy still holds API keys only as
/// SHA-256; this memory holds keys clients presented, as the request buffers do, and is
/// never written anywhere.
#[derive(Debug, Default)]
struct Accepted(Mutex<HashMap<Box<[u8]>, Cached>>);

impl Accepted {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Cached>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The principal of `token` if it was accepted and, at `now()` (read only for tokens
    /// that expire), has not expired. An expired token is forgotten.
    fn get(&self, token: &[u8], now: impl FnOnce() -> u64) -> Option<Arc<Principal>> {
        let mut cache = self.lock();
        let hit = cache.get(token)?;
        if hit.valid_until == NEVER || now() <= hit.valid_until {
            return Some(Arc::clone(&hit.principal));
        }
        cache.remove(token);
        None
    }

    /// Remembers that `token` authenticated as `principal` until `valid_until`.
    fn insert(&self, token: &[u8], principal: &Arc<Principal>, valid_until: u64) {
        if token.len() > ACCEPTED_TOKEN_MAX {
            return;
        }
        let mut cache = self.lock();
        if cache.len() >= ACCEPTED_MAX {
            cache.clear();
        }
        cache.insert(
            token.into(),
            Cached {
                principal: Arc::clone(principal),
                valid_until,
            },
        );
    }
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

    /// Puts a prepared policy in force, with `config`'s admin token and anonymous rate.
    /// The credentials accepted so far are forgotten. Returns its JWT verifier, whose JWKS
    /// refresh the caller starts.
    pub fn install(&self, prepared: PreparedPolicy, config: &Config) -> Option<Arc<jwt::Verifier>> {
        let mut current = prepared.0;
        current.admin_token = config
            .admin_token
            .as_ref()
            .map(|t| policy::key_digest(t.expose()));
        let verifier = current.verifier.clone();
        self.current.store(Arc::new(current));
        self.anonymous
            .store(Arc::new(Principal::anonymous(anonymous_rate(config))));
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
    /// anonymous; with `required`, a valid API key, JWT or the admin token is needed. The
    /// admin token is the one of the configuration last installed.
    ///
    /// # Errors
    /// [`Unauthenticated`] saying what was wrong.
    pub fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
        mode: AuthMode,
    ) -> Result<Arc<Principal>, Unauthenticated> {
        let Some(header) = authorization else {
            return match mode {
                AuthMode::None => Ok(self.anonymous.load_full()),
                AuthMode::Required => Err(Unauthenticated::Missing),
            };
        };
        let current = self.current.load();
        if mode == AuthMode::None {
            // Without authentication, credentials other than the admin token are ignored
            // (proxies and clients add their own headers).
            if let Some(admin) = &current.admin_token
                && let Ok(token) = bearer(header)
                && same_digest(admin, &policy::key_digest(token))
            {
                return Ok(Arc::clone(&self.admin_token));
            }
            return Ok(self.anonymous.load_full());
        }
        let presented = presented(header)?;
        // A credential accepted before was a well-formed token, and not the admin token of
        // this `current` (that is checked before anything is remembered in it).
        if let Some(principal) = current
            .accepted
            .get(presented, jsonwebtoken::get_current_timestamp)
        {
            return Ok(principal);
        }
        let token = token68(presented)?;
        self.first_sight(&current, token)
    }

    /// A credential not accepted before (or expired since): the admin token, an API key of
    /// the policy or a JWT; the last two are remembered.
    fn first_sight(
        &self,
        current: &Current,
        token: &str,
    ) -> Result<Arc<Principal>, Unauthenticated> {
        let is_jwt = token.bytes().filter(|b| *b == b'.').count() == 2;
        // Both the admin token's check and the policy's key lookup compare SHA-256 digests.
        let digest = (current.admin_token.is_some() || !is_jwt).then(|| policy::key_digest(token));
        if let (Some(admin), Some(digest)) = (&current.admin_token, &digest)
            && same_digest(admin, digest)
        {
            return Ok(Arc::clone(&self.admin_token));
        }
        let Some(policy) = &current.policy else {
            return Err(Unauthenticated::Invalid);
        };
        if is_jwt {
            let Some(verifier) = &current.verifier else {
                tracing::info!("a JWT was presented but the policy has no [jwt] settings");
                return Err(Unauthenticated::Invalid);
            };
            return jwt(current, policy, verifier, token);
        }
        let principal = digest.and_then(|d| policy.by_digest(&d)).ok_or_else(|| {
            tracing::info!("an unknown API key was presented");
            Unauthenticated::Invalid
        })?;
        current.accepted.insert(token.as_bytes(), &principal, NEVER);
        Ok(principal)
    }

    /// Takes one request from `principal`'s rate (anonymous callers: per `peer`, their
    /// address); `Err` with the seconds to wait.
    ///
    /// # Errors
    /// The `Retry-After` seconds when the rate is spent.
    pub fn admit(&self, principal: &Principal, peer: Option<IpAddr>) -> Result<(), u32> {
        let Some(rate) = principal.rate() else {
            return Ok(());
        };
        let check = |key: &str| {
            self.limiter
                .check(key, rate)
                .map_err(limit::retry_after_secs)
        };
        match (principal.kind(), peer) {
            (Kind::Anonymous, Some(ip)) => check(&ip.to_string()),
            (Kind::Anonymous, None) => check(grant::ANONYMOUS),
            _ => check(principal.name().as_str()),
        }
    }
}

/// Verifies a JWT not accepted before, and remembers it until it expires.
fn jwt(
    current: &Current,
    policy: &Policy,
    verifier: &jwt::Verifier,
    token: &str,
) -> Result<Arc<Principal>, Unauthenticated> {
    let claims = verifier.verify(token).map_err(|e| {
        tracing::info!(error = %e, "a JWT was refused");
        Unauthenticated::Invalid
    })?;
    let principal = Arc::new(policy.jwt_principal(&claims));
    let valid_until = claims
        .expires
        .saturating_add(verifier.settings().leeway_seconds);
    current
        .accepted
        .insert(token.as_bytes(), &principal, valid_until.min(NEVER - 1));
    Ok(principal)
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
        ..Current::default()
    })
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1: the scheme in any case,
/// a `token68`).
fn bearer(header: &HeaderValue) -> Result<&str, Unauthenticated> {
    token68(presented(header)?)
}

/// The bytes after `Bearer ` (the scheme in any case), not yet checked to be a `token68`:
/// a credential accepted before needs no other check.
fn presented(header: &HeaderValue) -> Result<&[u8], Unauthenticated> {
    if header.len() > MAX_AUTHORIZATION_BYTES {
        return Err(Unauthenticated::Malformed);
    }
    let text = header.as_bytes().trim_ascii();
    let space = text
        .iter()
        .position(|b| *b == b' ')
        .ok_or(Unauthenticated::Malformed)?;
    let (scheme, token) = (&text[..space], text[space + 1..].trim_ascii_start());
    if scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty() {
        Ok(token)
    } else {
        Err(Unauthenticated::Malformed)
    }
}

/// `token` if it is a `token68` (RFC 7235 §2.1: which is ASCII, so also text).
fn token68(token: &[u8]) -> Result<&str, Unauthenticated> {
    let body = token
        .iter()
        .rposition(|b| *b != b'=')
        .map_or(&[][..], |last| &token[..=last]);
    let valid = !token.is_empty()
        && body.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !valid {
        return Err(Unauthenticated::Malformed);
    }
    std::str::from_utf8(token).map_err(|_| Unauthenticated::Malformed)
}

fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
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
    fn presented_credentials_are_the_bearer_tokens_bytes() {
        assert_eq!(presented(&value("Bearer abc")), Ok(&b"abc"[..]));
        assert_eq!(presented(&value(" bEaReR \t a.b.c ")), Ok(&b"a.b.c"[..]));
        for bad in ["Bearer", "Bearer ", "Basic abc", "Bearer\tabc", "abc"] {
            assert_eq!(
                presented(&value(bad)),
                Err(Unauthenticated::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(token68(b"x=="), Ok("x=="));
        assert_eq!(token68(b"=="), Ok("=="));
        assert_eq!(token68(b"a b"), Err(Unauthenticated::Malformed));
        assert_eq!(token68(b"caf\xe9"), Err(Unauthenticated::Malformed));
    }

    fn named(name: &str) -> Arc<Principal> {
        let name = ucxl::PrincipalName::parse(name).expect("name");
        let identity = grant::Identity {
            name: &name,
            claims: None,
        };
        Arc::new(Principal::new(Kind::ApiKey, identity, [], None))
    }

    #[test]
    fn accepted_credentials_expire_and_are_then_forgotten() {
        let accepted = Accepted::default();
        accepted.insert(b"token", &named("jwt-user"), 100);
        accepted.insert(b"key", &named("key-user"), NEVER);
        let name = |p: Option<Arc<Principal>>| p.map(|p| p.name().as_str().to_owned());
        assert_eq!(
            name(accepted.get(b"token", || 100)).as_deref(),
            Some("jwt-user")
        );
        assert_eq!(name(accepted.get(b"token", || 101)), None, "expired");
        assert_eq!(
            name(accepted.get(b"token", || 50)),
            None,
            "an expired token is forgotten, whatever the clock says next"
        );
        assert_eq!(
            name(accepted.get(b"key", || unreachable!("keys do not expire"))).as_deref(),
            Some("key-user")
        );
        assert_eq!(name(accepted.get(b"ke", || 0)), None);
        let long = vec![b'a'; ACCEPTED_TOKEN_MAX + 1];
        accepted.insert(&long, &named("long"), NEVER);
        assert_eq!(
            name(accepted.get(&long, || 0)),
            None,
            "too long to remember"
        );
    }

    /// An auth with the policy at `dir/policy.toml` and `admin_token`.
    fn auth_config(dir: &Path, admin_token: &str) -> (Config, HashMap<String, String>) {
        let env: HashMap<String, String> = [
            ("RUSTLE_AUTH", "required"),
            ("RUSTLE_BACKEND_MODE", "mock"),
            ("RUSTLE_ADMIN_TOKEN", admin_token),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([(
            "RUSTLE_AUTH_POLICY".to_owned(),
            dir.join("policy.toml").display().to_string(),
        )])
        .collect();
        let config = crate::config::Sources {
            env: env.clone(),
            ..crate::config::Sources::default()
        }
        .resolve()
        .expect("a valid configuration");
        (config, env)
    }

    fn write_policy(dir: &Path, name: &str, key: &str) {
        let text = format!(
            "[[principals]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n",
            hex::encode(policy::key_digest(key))
        );
        std::fs::write(dir.join("policy.toml"), text).expect("write policy");
    }

    fn who(auth: &Auth, token: &str) -> Result<String, Unauthenticated> {
        auth.authenticate(Some(&value(&format!("Bearer {token}"))), AuthMode::Required)
            .map(|p| p.name().as_str().to_owned())
    }

    #[test]
    fn a_reload_forgets_remembered_keys_even_those_remembered_late() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_policy(dir.path(), "first", "rk_one");
        let (config, env) = auth_config(dir.path(), "admin-secret");
        let auth = Auth::new(&config, &env).expect("auth");
        assert_eq!(who(&auth, "rk_one").as_deref(), Ok("first"));
        assert_eq!(who(&auth, "rk_one").as_deref(), Ok("first"), "remembered");
        let old = auth.current.load_full();

        write_policy(dir.path(), "second", "rk_one");
        auth.install(Auth::prepare(&config, &env).expect("policy"), &config);
        assert_eq!(who(&auth, "rk_one").as_deref(), Ok("second"));
        // A request that read the old policy before the reload remembers its answer after
        // it: that lands in the old policy's memory, not in the one in force.
        let stale = old
            .policy
            .as_ref()
            .and_then(|p| p.by_key("rk_one"))
            .expect("old key");
        old.accepted.insert(b"rk_one", &stale, NEVER);
        assert_eq!(who(&auth, "rk_one").as_deref(), Ok("second"));

        write_policy(dir.path(), "third", "rk_two");
        auth.install(Auth::prepare(&config, &env).expect("policy"), &config);
        assert_eq!(who(&auth, "rk_one"), Err(Unauthenticated::Invalid));
        assert_eq!(who(&auth, "rk_two").as_deref(), Ok("third"));
    }

    #[test]
    fn the_admin_token_is_the_installed_configurations_and_never_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A policy key that is also the admin token: the admin token wins, every time.
        write_policy(dir.path(), "shadow", "admin-one");
        let (config, env) = auth_config(dir.path(), "admin-one");
        let auth = Auth::new(&config, &env).expect("auth");
        for _ in 0..2 {
            assert_eq!(who(&auth, "admin-one").as_deref(), Ok(grant::ADMIN_TOKEN));
        }
        let (config, env) = auth_config(dir.path(), "admin-two");
        auth.install(Auth::prepare(&config, &env).expect("policy"), &config);
        assert_eq!(who(&auth, "admin-two").as_deref(), Ok(grant::ADMIN_TOKEN));
        assert_eq!(who(&auth, "admin-one").as_deref(), Ok("shadow"));
        // With authentication off, only the admin token is looked at.
        let none = |token: &str| {
            auth.authenticate(Some(&value(&format!("Bearer {token}"))), AuthMode::None)
                .map(|p| p.kind())
        };
        assert_eq!(none("admin-two"), Ok(Kind::AdminToken));
        assert_eq!(none("admin-one"), Ok(Kind::Anonymous));
        assert_eq!(none("not a token"), Ok(Kind::Anonymous));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
