//! The policy file (`RUSTLE_AUTH_POLICY`, TOML): principals with API keys, roles made of
//! grants, and the optional `[jwt]` settings. Every problem is reported, one line each;
//! a policy with any problem is refused as a whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use ucxl::PrincipalName;

use super::grant::{Grant, Identity, Kind, Principal, Rate, grants_of};
use super::jwt::{JwkKeys, JwtSettings, Verified};
use super::op::{Op, Ops};

/// Largest policy file read.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// The claim holding roles unless `roles_claim` names another.
pub const DEFAULT_ROLES_CLAIM: &str = "roles";
/// `exp`/`nbf` leeway unless `leeway_seconds` says otherwise.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;
/// JWKS URL refresh period unless `jwks_refresh_seconds` says otherwise.
pub const DEFAULT_JWKS_REFRESH_SECONDS: u64 = 300;
/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key as long as the hash.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principals: Vec<PrincipalEntry>,
    #[serde(default)]
    roles: BTreeMap<String, RoleEntry>,
    jwt: Option<JwtEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: String,
    key_sha256: String,
    #[serde(default)]
    roles: Vec<String>,
    rate_per_sec: Option<u32>,
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    #[serde(default)]
    grants: Vec<GrantEntry>,
    rate_per_sec: Option<u32>,
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantEntry {
    ops: Vec<String>,
    pattern: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtEntry {
    hs256_secret_env: Option<String>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: Option<String>,
    leeway_seconds: Option<u64>,
    jwks_refresh_seconds: Option<u64>,
}

/// A role: its grants and, optionally, the request rate of principals holding it.
#[derive(Debug, Clone)]
pub struct Role {
    /// What it allows.
    pub grants: Vec<Grant>,
    /// Its rate (a principal's own rate wins; else the highest of its roles').
    pub rate: Option<Rate>,
}

/// A validated policy.
#[derive(Debug)]
pub struct Policy {
    /// SHA-256 of each API key → its principal.
    keys: HashMap<[u8; 32], Arc<Principal>>,
    roles: HashMap<String, Role>,
    jwt: Option<JwtSettings>,
    admins: bool,
}

/// The SHA-256 of an API key, as the policy stores it.
#[must_use]
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A rate from its two settings; `None` with a problem when they are out of range.
fn rate(
    per_sec: Option<u32>,
    burst: Option<u32>,
    what: &str,
    problems: &mut Vec<String>,
) -> Option<Rate> {
    let per_sec = per_sec?;
    let Some(per) = NonZeroU32::new(per_sec) else {
        problems.push(format!("{what}: rate_per_sec must be at least 1"));
        return None;
    };
    let burst = match burst {
        None => per,
        Some(b) => {
            if let Some(b) = NonZeroU32::new(b) {
                b
            } else {
                problems.push(format!("{what}: burst must be at least 1"));
                return None;
            }
        }
    };
    Some(Rate {
        per_sec: per,
        burst,
    })
}

impl Policy {
    /// Reads and validates the policy at `path`; `env` holds the variable the HS256 secret
    /// is named by. Relative `jwks_file` paths are relative to the policy file.
    ///
    /// # Errors
    /// Every problem, one line each, prefixed with the file's path.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Self, Vec<String>> {
        let prefix = |p: String| format!("{}: {p}", path.display());
        let text = read_bounded(path, MAX_POLICY_BYTES).map_err(|e| vec![prefix(e)])?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base, env).map_err(|problems| problems.into_iter().map(prefix).collect())
    }

    /// Validates policy text; `base` is where relative paths start.
    ///
    /// # Errors
    /// Every problem, one line each.
    pub fn parse(
        text: &str,
        base: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Self, Vec<String>> {
        let file: File = toml::from_str(text)
            .map_err(|e| vec![format!("not a valid policy: {}", e.message())])?;
        let mut problems = Vec::new();
        let roles = parse_roles(&file.roles, &mut problems);
        let keys = parse_principals(&file.principals, &roles, &mut problems);
        let jwt = file
            .jwt
            .as_ref()
            .and_then(|j| jwt_settings(j, base, env, &mut problems));
        let admins = keys.values().any(|p| p.may(Op::Admin))
            || roles
                .values()
                .any(|r| jwt.is_some() && r.grants.iter().any(|g| g.allows_op(Op::Admin)));
        if problems.is_empty() {
            Ok(Self {
                keys,
                roles,
                jwt,
                admins,
            })
        } else {
            Err(problems)
        }
    }

    /// The principal holding API key `key`.
    ///
    /// The lookup is by the key's SHA-256: the map compares digests, which tell an attacker
    /// nothing about any key, and the match is confirmed in constant time.
    #[must_use]
    pub fn by_key(&self, key: &str) -> Option<Arc<Principal>> {
        self.by_digest(&key_digest(key))
    }

    /// The principal holding the API key whose SHA-256 is `digest` (as [`Self::by_key`],
    /// for a caller that has the digest already).
    #[must_use]
    pub fn by_digest(&self, digest: &[u8; 32]) -> Option<Arc<Principal>> {
        let (held, principal) = self.keys.get_key_value(digest)?;
        bool::from(held.ct_eq(digest)).then(|| Arc::clone(principal))
    }

    /// The principal of a verified JWT: its roles from this policy, its rate the highest
    /// of theirs.
    #[must_use]
    pub fn jwt_principal(&self, verified: &Verified) -> Principal {
        Principal::new(
            Kind::Jwt,
            Identity {
                name: &verified.subject,
                claims: Some(&verified.claims),
            },
            grants_of(&self.roles, &verified.roles),
            best_rate(&self.roles, &verified.roles),
        )
    }

    /// The `[jwt]` settings, when JWTs are accepted.
    #[must_use]
    pub fn jwt(&self) -> Option<&JwtSettings> {
        self.jwt.as_ref()
    }

    /// True when some principal can hold the `admin` operation.
    #[must_use]
    pub fn has_admins(&self) -> bool {
        self.admins
    }

    /// Number of API-key principals.
    #[must_use]
    pub fn principals(&self) -> usize {
        self.keys.len()
    }
}

/// The `[roles]` table, with a problem for each bad operation or pattern.
fn parse_roles(
    entries: &BTreeMap<String, RoleEntry>,
    problems: &mut Vec<String>,
) -> HashMap<String, Role> {
    let mut roles = HashMap::new();
    for (name, entry) in entries {
        let mut grants = Vec::new();
        for (i, g) in entry.grants.iter().enumerate() {
            let what = format!("roles.{name}.grants[{i}]");
            let mut ops = Ops::default();
            for op in &g.ops {
                match op.parse::<Op>() {
                    Ok(op) => ops.insert(op),
                    Err(e) => problems.push(format!("{what}: {e}")),
                }
            }
            if g.ops.is_empty() {
                problems.push(format!("{what}: ops is empty"));
            }
            match Grant::parse(ops, &g.pattern) {
                Ok(grant) => grants.push(grant),
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }
        let rate = rate(
            entry.rate_per_sec,
            entry.burst,
            &format!("roles.{name}"),
            problems,
        );
        roles.insert(name.clone(), Role { grants, rate });
    }
    roles
}

/// The `[[principals]]`, keyed by the SHA-256 of their keys, with a problem for each bad
/// name, digest, role or rate.
fn parse_principals(
    entries: &[PrincipalEntry],
    roles: &HashMap<String, Role>,
    problems: &mut Vec<String>,
) -> HashMap<[u8; 32], Arc<Principal>> {
    let mut keys = HashMap::new();
    let mut names = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let what = format!("principals[{i}] ({:?})", entry.name);
        let name = match PrincipalName::parse(&entry.name) {
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(format!("{what}: {e}"));
                None
            }
        };
        if !names.insert(entry.name.clone()) {
            problems.push(format!("{what}: the name is used twice"));
        }
        for role in &entry.roles {
            if !roles.contains_key(role) {
                problems.push(format!(
                    "{what}: role {role:?} is not defined under [roles]"
                ));
            }
        }
        let digest = match hex::decode(entry.key_sha256.trim()) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut d = [0u8; 32];
                d.copy_from_slice(&bytes);
                Some(d)
            }
            _ => {
                problems.push(format!(
                        "{what}: key_sha256 is not 64 hex digits (the SHA-256 of the key; `rustle-gateway auth new-key` prints it)"
                    ));
                None
            }
        };
        let own = rate(entry.rate_per_sec, entry.burst, &what, problems);
        let (Some(name), Some(digest)) = (name, digest) else {
            continue;
        };
        if keys.contains_key(&digest) {
            problems.push(format!(
                "{what}: the same key is given to another principal"
            ));
            continue;
        }
        let rate = own.or_else(|| best_rate(roles, &entry.roles));
        let principal = Principal::new(
            Kind::ApiKey,
            Identity {
                name: &name,
                claims: None,
            },
            grants_of(roles, &entry.roles),
            rate,
        );
        keys.insert(digest, Arc::new(principal));
    }
    keys
}

/// The highest rate among `names`' roles (unlimited when none sets one).
fn best_rate(roles: &HashMap<String, Role>, names: &[String]) -> Option<Rate> {
    names
        .iter()
        .filter_map(|n| roles.get(n)?.rate)
        .max_by_key(|r| (r.per_sec, r.burst))
}

fn read_bounded(path: &Path, limit: usize) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut text = String::new();
    let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
    file.take(limit64.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() > limit {
        return Err(format!("larger than {limit} bytes"));
    }
    Ok(text)
}

fn jwt_settings(
    entry: &JwtEntry,
    base: &Path,
    env: &HashMap<String, String>,
    problems: &mut Vec<String>,
) -> Option<JwtSettings> {
    let before = problems.len();
    let hs256_secret = entry.hs256_secret_env.as_ref().and_then(|var| {
        match env.get(var).filter(|v| !v.is_empty()) {
            None => {
                problems.push(format!("jwt.hs256_secret_env: the variable {var} is not set"));
                None
            }
            Some(v) if v.len() < MIN_HS256_SECRET_BYTES => {
                problems.push(format!(
                    "jwt.hs256_secret_env: the secret in {var} is shorter than {MIN_HS256_SECRET_BYTES} bytes"
                ));
                None
            }
            Some(v) => Some(Arc::from(v.as_bytes())),
        }
    });
    let jwks = entry.jwks_file.as_ref().and_then(|file| {
        let path = base.join(file);
        match read_bounded(&path, super::jwt::MAX_JWKS_BYTES).and_then(|t| JwkKeys::parse(&t)) {
            Ok(keys) => Some(keys),
            Err(e) => {
                problems.push(format!("jwt.jwks_file {}: {e}", path.display()));
                None
            }
        }
    });
    if let Some(url) = &entry.jwks_url {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => {
                if u.scheme() == "http" {
                    tracing::warn!(url = %url, "jwt.jwks_url is plain http: keys can be replaced in transit");
                }
            }
            _ => problems.push(format!("jwt.jwks_url {url:?} is not an http(s) URL")),
        }
    }
    if entry.hs256_secret_env.is_none() && entry.jwks_file.is_none() && entry.jwks_url.is_none() {
        problems.push("jwt: set hs256_secret_env, jwks_file or jwks_url".into());
    }
    let roles_claim = entry
        .roles_claim
        .clone()
        .unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_owned());
    if roles_claim.is_empty() {
        problems.push("jwt.roles_claim is empty".into());
    }
    let leeway_seconds = entry.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
    if leeway_seconds > 300 {
        problems.push("jwt.leeway_seconds: at most 300".into());
    }
    let refresh = entry
        .jwks_refresh_seconds
        .unwrap_or(DEFAULT_JWKS_REFRESH_SECONDS);
    if !(10..=86_400).contains(&refresh) {
        problems.push("jwt.jwks_refresh_seconds: between 10 and 86400".into());
    }
    (problems.len() == before).then(|| JwtSettings {
        hs256_secret,
        jwks,
        jwks_url: entry.jwks_url.clone(),
        issuer: entry.issuer.clone(),
        audience: entry.audience.clone(),
        roles_claim,
        leeway_seconds,
        jwks_refresh: Duration::from_secs(refresh),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ucxl::Address;

    fn digest_hex(key: &str) -> String {
        hex::encode(key_digest(key))
    }

    fn policy(text: &str) -> Result<Policy, Vec<String>> {
        let env: HashMap<String, String> = [(
            "SECRET".to_owned(),
            "0123456789abcdef0123456789abcdef".to_owned(),
        )]
        .into();
        Policy::parse(text, Path::new("."), &env)
    }

    fn example() -> String {
        format!(
            r#"
[[principals]]
name = "architect-bot"
key_sha256 = "{}"
roles = ["architect"]
rate_per_sec = 50

[[principals]]
name = "ops"
key_sha256 = "{}"
roles = ["admin"]

[roles.architect]
grants = [
  {{ ops = ["read", "search", "watch"], pattern = "ucxl://any:any@bzzz:any/**" }},
  {{ ops = ["write", "delete"], pattern = "ucxl://claude:architect@bzzz:any/**" }},
]

[roles.admin]
grants = [{{ ops = ["admin"], pattern = "ucxl://any:any@any:any/**" }}]
rate_per_sec = 5

[roles.agent]
grants = [{{ ops = ["write"], pattern = "ucxl://${{claim.agent}}:${{claim.role}}@any:any/**" }}]

[jwt]
hs256_secret_env = "SECRET"
audience = "rustle"
"#,
            digest_hex("key-one"),
            digest_hex("key-two")
        )
    }

    #[test]
    fn the_readme_policy_is_valid_and_keys_find_their_principals() {
        let p = policy(&example()).expect("valid");
        let bot = p.by_key("key-one").expect("known key");
        assert_eq!(bot.name().as_str(), "architect-bot");
        assert_eq!(bot.rate().map(|r| r.per_sec.get()), Some(50));
        let a = Address::parse("ucxl://claude:architect@bzzz:t/x").expect("address");
        assert!(bot.allows(Op::Write, &a));
        assert!(!bot.may(Op::Admin));
        let ops = p.by_key("key-two").expect("known key");
        assert!(ops.may(Op::Admin));
        assert_eq!(
            ops.rate().map(|r| r.per_sec.get()),
            Some(5),
            "the role's rate"
        );
        assert!(p.by_key("key-three").is_none());
        assert!(p.by_key("").is_none());
        assert!(p.has_admins());
        assert_eq!(p.jwt().map(|j| j.roles_claim.as_str()), Some("roles"));
    }

    #[test]
    fn jwt_principals_take_the_roles_the_policy_defines() {
        let p = policy(&example()).expect("valid");
        let verified = Verified {
            subject: PrincipalName::parse("u-1").expect("name"),
            roles: vec!["agent".into(), "no-such-role".into()],
            claims: json!({"agent": "claude", "role": "dev"})
                .as_object()
                .cloned()
                .expect("object"),
            expires: 0,
        };
        let principal = p.jwt_principal(&verified);
        let own = Address::parse("ucxl://claude:dev@p:t/x").expect("address");
        let other = Address::parse("ucxl://gpt:dev@p:t/x").expect("address");
        assert!(principal.allows(Op::Write, &own));
        assert!(!principal.allows(Op::Write, &other));
        assert!(!principal.may(Op::Read));
    }

    #[test]
    fn every_problem_is_reported_one_line_each() {
        let text = format!(
            r#"
[[principals]]
name = "a"
key_sha256 = "nothex"
roles = ["missing"]

[[principals]]
name = "a"
key_sha256 = "{k}"
rate_per_sec = 0

[[principals]]
name = " bad name"
key_sha256 = "{k}"

[roles.r]
grants = [
  {{ ops = ["read", "fly"], pattern = "ucxl://any:any@any:any/**" }},
  {{ ops = [], pattern = "ucxl://${{nope}}:any@any:any/**" }},
]

[jwt]
hs256_secret_env = "UNSET"
jwks_url = "ftp://x"
"#,
            k = digest_hex("k")
        );
        let problems = policy(&text).expect_err("invalid");
        let expect = [
            "key_sha256 is not 64 hex digits",
            "role \"missing\" is not defined",
            "the name is used twice",
            "rate_per_sec must be at least 1",
            "principal name must be",
            "unknown operation \"fly\"",
            "ops is empty",
            "unknown variable ${nope}",
            "the variable UNSET is not set",
            "is not an http(s) URL",
        ];
        for e in expect {
            assert!(problems.iter().any(|p| p.contains(e)), "{e}: {problems:#?}");
        }
        assert!(
            problems.iter().all(|p| !p.contains('\n')),
            "one line each: {problems:#?}"
        );
    }

    #[test]
    fn structural_and_secret_problems() {
        assert!(policy("this is not toml").is_err());
        assert!(policy("[[principals]]\nname = \"x\"\n").is_err(), "no key");
        assert!(policy("unknown = 1\n").is_err());
        let short = r#"
[jwt]
hs256_secret_env = "SHORT"
"#;
        let env: HashMap<String, String> = [("SHORT".to_owned(), "tiny".to_owned())].into();
        let e = Policy::parse(short, Path::new("."), &env).expect_err("short secret");
        assert!(e[0].contains("shorter than 32 bytes"), "{e:?}");
        assert!(
            policy("[jwt]\n").is_err(),
            "a [jwt] table needs a key source"
        );
        let e =
            policy("[jwt]\njwks_file = \"/nonexistent/jwks.json\"\n").expect_err("missing file");
        assert!(e[0].contains("jwks_file"), "{e:?}");
        assert!(policy("").expect("an empty policy is valid").principals() == 0);
    }

    #[test]
    fn the_same_key_cannot_name_two_principals() {
        let text = format!(
            "[[principals]]\nname = \"a\"\nkey_sha256 = \"{k}\"\n[[principals]]\nname = \"b\"\nkey_sha256 = \"{k}\"\n",
            k = digest_hex("k")
        );
        let e = policy(&text).expect_err("duplicate key");
        assert!(e[0].contains("another principal"), "{e:?}");
    }
}
