//! Grants: operations over a UCXL search pattern, and the principals that hold them.
//!
//! A grant's pattern may name the caller: `${principal}` and `${claim.NAME}` expand to the
//! principal's name and its token's claims. An expanded value must be a valid UCXL
//! component (`[A-Za-z0-9_-]{1,64}`) and not the wildcard `any` (or `*`): a token whose
//! `agent` claim said `any` would otherwise widen `ucxl://${claim.agent}:...` to every
//! agent. A grant whose variables do not expand to such values grants nothing.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use ucxl::{Address, Pattern, PrincipalName};

use super::op::{Op, Ops};

/// A variable of a grant pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    /// `${principal}`.
    Principal,
    /// `${claim.NAME}`.
    Claim(String),
}

/// One piece of a pattern template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A grant's pattern: fixed, or with variables expanded per principal.
#[derive(Debug, Clone)]
enum Template {
    Fixed(Arc<Pattern>),
    Vars(Vec<Piece>),
}

/// Longest claim name a variable may use.
const MAX_CLAIM_NAME: usize = 64;

impl Template {
    /// Parses `text`; the problem (one line) when a variable is unknown or the pattern is
    /// invalid with every variable standing for a valid component.
    fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("pattern {text:?}: unclosed ${{ variable"))?;
            let name = &after[..end];
            let var = match name {
                "principal" => Var::Principal,
                _ => match name.strip_prefix("claim.") {
                    Some(claim)
                        if !claim.is_empty()
                            && claim.len() <= MAX_CLAIM_NAME
                            && claim
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                    {
                        Var::Claim(claim.to_owned())
                    }
                    _ => {
                        return Err(format!(
                            "pattern {text:?}: unknown variable ${{{name}}} (expected ${{principal}} or ${{claim.NAME}})"
                        ));
                    }
                },
            };
            pieces.push(Piece::Var(var));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if pieces.iter().all(|p| matches!(p, Piece::Text(_))) {
            return Pattern::parse(text)
                .map(|p| Self::Fixed(Arc::new(p)))
                .map_err(|e| format!("pattern {text:?}: {e}"));
        }
        let template = Self::Vars(pieces);
        // Every variable standing for a valid component must give a valid pattern.
        template
            .expand(&|_| Some("x"))
            .map_err(|e| format!("pattern {text:?}: {e}"))?;
        Ok(template)
    }

    /// The pattern for one principal; `Err` when a variable has no valid value.
    fn expand<'a>(&self, value: &dyn Fn(&Var) -> Option<&'a str>) -> Result<Arc<Pattern>, String> {
        let pieces = match self {
            Self::Fixed(p) => return Ok(Arc::clone(p)),
            Self::Vars(pieces) => pieces,
        };
        let mut text = String::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => text.push_str(t),
                Piece::Var(var) => {
                    let v = value(var)
                        .filter(|v| is_component_value(v))
                        .ok_or_else(|| format!("{var:?} has no valid component value"))?;
                    text.push_str(v);
                }
            }
        }
        Pattern::parse(&text)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }
}

/// A value a variable may take: a UCXL component that is not a wildcard.
fn is_component_value(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !value.eq_ignore_ascii_case(ucxl::address::ANY)
}

/// Operations over a pattern, as a policy file writes it.
#[derive(Debug, Clone)]
pub struct Grant {
    ops: Ops,
    template: Template,
}

impl Grant {
    /// A grant of `ops` over `pattern`.
    ///
    /// # Errors
    /// One line when the pattern or a variable is invalid.
    pub fn parse(ops: Ops, pattern: &str) -> Result<Self, String> {
        Ok(Self {
            ops,
            template: Template::parse(pattern)?,
        })
    }

    /// True when the grant includes `op`, whatever its pattern.
    #[must_use]
    pub fn allows_op(&self, op: Op) -> bool {
        self.ops.contains(op)
    }

    /// The grant for one principal, `None` when its variables have no valid values.
    fn resolve(&self, identity: &Identity<'_>) -> Option<Resolved> {
        let value = |var: &Var| -> Option<&str> {
            match var {
                Var::Principal => Some(identity.name.as_str()),
                Var::Claim(name) => identity.claims.and_then(|c| c.get(name)?.as_str()),
            }
        };
        match self.template.expand(&value) {
            Ok(pattern) => Some(Resolved {
                ops: self.ops,
                pattern,
            }),
            Err(why) => {
                tracing::debug!(principal = %identity.name, reason = %why, "a grant does not apply");
                None
            }
        }
    }
}

/// What grant variables expand to.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// `${principal}`.
    pub name: &'a PrincipalName,
    /// `${claim.NAME}`: string claims of the token (none for API keys).
    pub claims: Option<&'a Map<String, Value>>,
}

/// A grant with its pattern expanded for one principal.
#[derive(Debug, Clone)]
struct Resolved {
    ops: Ops,
    pattern: Arc<Pattern>,
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An API key of the policy file.
    ApiKey,
    /// A JWT.
    Jwt,
    /// The admin token (`RUSTLE_ADMIN_TOKEN`): the admin API only.
    AdminToken,
    /// Nobody: authentication is off.
    Anonymous,
}

/// A request rate: tokens per second and the burst a full bucket allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second.
    pub per_sec: std::num::NonZeroU32,
    /// Requests at once from a full bucket.
    pub burst: std::num::NonZeroU32,
}

/// Who is calling and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    name: PrincipalName,
    kind: Kind,
    grants: Vec<Resolved>,
    rate: Option<Rate>,
}

/// The anonymous principal's name (in the audit log).
pub const ANONYMOUS: &str = "anonymous";
/// The admin token's principal name.
pub const ADMIN_TOKEN: &str = "admin-token";

fn fixed_name(name: &str) -> PrincipalName {
    // Both constants are valid principal names; `names_of_built_in_principals_are_valid`
    // tests it.
    PrincipalName::parse(name).unwrap_or_else(|_| unreachable!("{name} is a valid name"))
}

/// Its name, as the access log shows it.
impl AsRef<str> for Principal {
    fn as_ref(&self) -> &str {
        self.name.as_str()
    }
}

impl Principal {
    /// A principal of `kind` holding `grants` (expanded for its identity).
    #[must_use]
    pub fn new<'g>(
        kind: Kind,
        identity: Identity<'_>,
        grants: impl IntoIterator<Item = &'g Grant>,
        rate: Option<Rate>,
    ) -> Self {
        Self {
            name: identity.name.clone(),
            kind,
            grants: grants
                .into_iter()
                .filter_map(|g| g.resolve(&identity))
                .collect(),
            rate,
        }
    }

    /// The caller when authentication is off: every data operation on every address, no
    /// admin, at the anonymous rate.
    #[must_use]
    pub fn anonymous(rate: Option<Rate>) -> Self {
        Self {
            name: fixed_name(ANONYMOUS),
            kind: Kind::Anonymous,
            grants: vec![Resolved {
                ops: Ops::data(),
                pattern: Arc::new(Pattern::everything()),
            }],
            rate,
        }
    }

    /// The holder of the admin token: the admin API only.
    #[must_use]
    pub fn admin_token() -> Self {
        Self {
            name: fixed_name(ADMIN_TOKEN),
            kind: Kind::AdminToken,
            grants: vec![Resolved {
                ops: [Op::Admin].into_iter().collect(),
                pattern: Arc::new(Pattern::everything()),
            }],
            rate: None,
        }
    }

    /// Its name (`anonymous` when authentication is off).
    #[must_use]
    pub fn name(&self) -> &PrincipalName {
        &self.name
    }

    /// How it authenticated.
    #[must_use]
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its request rate, when limited.
    #[must_use]
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// What stored envelopes record as their writer: the name of an authenticated
    /// principal, nothing for anonymous callers.
    #[must_use]
    pub fn written_by(&self) -> Option<PrincipalName> {
        (self.kind != Kind::Anonymous).then(|| self.name.clone())
    }

    /// True when some grant allows `op` on `address`.
    #[must_use]
    pub fn allows(&self, op: Op, address: &Address) -> bool {
        self.grants
            .iter()
            .any(|g| g.ops.contains(op) && g.pattern.matches(address))
    }

    /// True when some grant allows `op` at all (the admin API is not about an address).
    #[must_use]
    pub fn may(&self, op: Op) -> bool {
        self.grants.iter().any(|g| g.ops.contains(op))
    }

    /// True when some grant allows `op` on every address (`ucxl://any:any@any:any/**`).
    #[must_use]
    pub fn may_everywhere(&self, op: Op) -> bool {
        let everything = Pattern::everything();
        self.grants
            .iter()
            .any(|g| g.ops.contains(op) && *g.pattern == everything)
    }
}

/// The roles a principal names, looked up in the policy's roles (a role the policy lacks
/// grants nothing).
pub fn grants_of<'a, H: std::hash::BuildHasher>(
    roles: &'a HashMap<String, super::policy::Role, H>,
    names: &'a [String],
) -> impl Iterator<Item = &'a Grant> + 'a {
    names
        .iter()
        .filter_map(|n| roles.get(n))
        .flat_map(|role| role.grants.iter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name(n: &str) -> PrincipalName {
        PrincipalName::parse(n).expect("name")
    }

    fn address(a: &str) -> Address {
        Address::parse(a).expect("address")
    }

    fn ops(list: &[Op]) -> Ops {
        list.iter().copied().collect()
    }

    #[test]
    fn names_of_built_in_principals_are_valid() {
        assert!(PrincipalName::parse(ANONYMOUS).is_ok());
        assert!(PrincipalName::parse(ADMIN_TOKEN).is_ok());
    }

    #[test]
    fn fixed_grants_allow_their_operations_on_matching_addresses_only() {
        let grants = [
            Grant::parse(ops(&[Op::Read, Op::Search]), "ucxl://any:any@bzzz:any/**")
                .expect("grant"),
            Grant::parse(ops(&[Op::Write]), "ucxl://claude:architect@bzzz:any/**").expect("grant"),
        ];
        let n = name("architect-bot");
        let p = Principal::new(
            Kind::ApiKey,
            Identity {
                name: &n,
                claims: None,
            },
            &grants,
            None,
        );
        assert!(p.allows(Op::Read, &address("ucxl://gpt:dev@bzzz:t/x")));
        assert!(!p.allows(Op::Read, &address("ucxl://gpt:dev@other:t/x")));
        assert!(p.allows(Op::Write, &address("ucxl://claude:architect@bzzz:t/a/b")));
        assert!(!p.allows(Op::Write, &address("ucxl://claude:dev@bzzz:t/a")));
        assert!(!p.allows(Op::Delete, &address("ucxl://claude:architect@bzzz:t/a")));
        assert!(p.may(Op::Search));
        assert!(!p.may(Op::Admin));
        assert!(!p.may_everywhere(Op::Read), "bzzz only");
        assert_eq!(p.written_by(), Some(n));
    }

    #[test]
    fn a_literal_component_does_not_cover_a_stored_any() {
        let grants = [
            Grant::parse(ops(&[Op::Write]), "ucxl://claude:any@bzzz:any/**").expect("grant"),
            Grant::parse(ops(&[Op::Read]), "ucxl://any:any@bzzz:shared/**").expect("grant"),
        ];
        let n = name("claude-bot");
        let p = Principal::new(
            Kind::ApiKey,
            Identity {
                name: &n,
                claims: None,
            },
            &grants,
            None,
        );
        assert!(p.allows(Op::Write, &address("ucxl://claude:any@bzzz:t/x")));
        assert!(!p.allows(Op::Write, &address("ucxl://any:any@bzzz:t/x")));
        assert!(!p.allows(Op::Write, &address("ucxl://ANY:any@bzzz:t/x")));
        assert!(p.allows(Op::Read, &address("ucxl://any:any@bzzz:shared/ctx")));
        assert!(p.allows(Op::Read, &address("ucxl://gpt:dev@bzzz:shared/ctx")));
    }

    #[test]
    fn variables_expand_to_the_callers_identity() {
        let grant = Grant::parse(
            ops(&[Op::Write]),
            "ucxl://${claim.agent}:${claim.role}@any:any/**",
        )
        .expect("grant");
        let n = name("user-1");
        let claims = json!({"agent": "claude", "role": "architect"});
        let p = Principal::new(
            Kind::Jwt,
            Identity {
                name: &n,
                claims: claims.as_object(),
            },
            [&grant],
            None,
        );
        assert!(p.allows(Op::Write, &address("ucxl://claude:architect@p:t/x")));
        assert!(!p.allows(Op::Write, &address("ucxl://gpt:architect@p:t/x")));
        let own =
            Grant::parse(ops(&[Op::Read]), "ucxl://${principal}:any@any:any/**").expect("grant");
        let p = Principal::new(
            Kind::ApiKey,
            Identity {
                name: &n,
                claims: None,
            },
            [&own],
            None,
        );
        assert!(p.allows(Op::Read, &address("ucxl://user-1:r@p:t")));
        assert!(!p.allows(Op::Read, &address("ucxl://user-2:r@p:t")));
    }

    #[test]
    fn wildcard_or_invalid_claim_values_grant_nothing() {
        let grant =
            Grant::parse(ops(&[Op::Write]), "ucxl://${claim.agent}:any@any:any/**").expect("grant");
        let n = name("u");
        for bad in [
            json!({"agent": "any"}),
            json!({"agent": "ANY"}),
            json!({"agent": "*"}),
            json!({"agent": "a b"}),
            json!({"agent": "a/b"}),
            json!({"agent": ""}),
            json!({"agent": 7}),
            json!({"agent": "x".repeat(65)}),
            json!({}),
        ] {
            let p = Principal::new(
                Kind::Jwt,
                Identity {
                    name: &n,
                    claims: bad.as_object(),
                },
                [&grant],
                None,
            );
            assert!(
                !p.allows(Op::Write, &address("ucxl://claude:r@p:t")),
                "{bad}"
            );
            assert!(!p.may(Op::Write), "{bad}");
        }
        // A principal name that is no component cannot use ${principal} grants.
        let spaced = name("has space");
        let own =
            Grant::parse(ops(&[Op::Read]), "ucxl://${principal}:any@any:any/**").expect("grant");
        let p = Principal::new(
            Kind::ApiKey,
            Identity {
                name: &spaced,
                claims: None,
            },
            [&own],
            None,
        );
        assert!(!p.may(Op::Read));
    }

    #[test]
    fn templates_are_checked_when_the_policy_is_read() {
        for (pattern, expect) in [
            ("ucxl://${agent}:any@any:any/**", "unknown variable"),
            ("ucxl://${claim.}:any@any:any/**", "unknown variable"),
            ("ucxl://${claim.a b}:any@any:any/**", "unknown variable"),
            ("ucxl://${principal:any@any:any/**", "unclosed"),
            ("ucxl://${principal}:any@any:any/./x", "pattern"),
            ("ucxl://a b:any@any:any/**", "pattern"),
            ("not a pattern", "pattern"),
        ] {
            let e = Grant::parse(ops(&[Op::Read]), pattern).expect_err(pattern);
            assert!(e.contains(expect), "{pattern}: {e}");
        }
        assert!(Grant::parse(ops(&[Op::Read]), "ucxl://team-${claim.team}:any@any:any/**").is_ok());
    }

    #[test]
    fn anonymous_and_admin_token_principals() {
        let a = Principal::anonymous(None);
        assert!(a.allows(Op::Write, &address("ucxl://x:y@z:w/p")));
        assert!(a.may_everywhere(Op::Search));
        assert!(!a.may(Op::Admin));
        assert_eq!(a.written_by(), None);
        let wide = Grant::parse(ops(&[Op::Search]), "ucxl://*:any@any:*/**").expect("grant");
        let n = name("wide");
        let w = Principal::new(
            Kind::ApiKey,
            Identity {
                name: &n,
                claims: None,
            },
            [&wide],
            None,
        );
        assert!(w.may_everywhere(Op::Search));
        assert!(!w.may_everywhere(Op::Read));
        let t = Principal::admin_token();
        assert!(t.may(Op::Admin));
        assert!(!t.allows(Op::Read, &address("ucxl://x:y@z:w/p")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Components of addresses, some looking like the wildcard.
        const COMPONENTS: &[&str] = &["a", "claude", "ANY", "anyx"];
        const SEGMENTS: &[&str] = &["x", "y"];
        /// Principal names and claim values, valid components or not.
        const VALUES: &[&str] = &["claude", "a", "any", "ANY", "*", "has space", "a/b", ""];

        fn address() -> impl Strategy<Value = Address> {
            (
                prop::array::uniform4(prop::sample::select(COMPONENTS)),
                prop::collection::vec(prop::sample::select(SEGMENTS), 0..3),
            )
                .prop_filter_map("an address", |([a, r, p, t], path)| {
                    let text = format!("ucxl://{a}:{r}@{p}:{t}/{}", path.join("/"));
                    Address::parse(&text).ok()
                })
        }

        /// A component of a grant pattern: a wildcard, a literal or a variable.
        fn template() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                3 => Just("any"),
                1 => Just("*"),
                3 => prop::sample::select(COMPONENTS),
                2 => Just("${principal}"),
                1 => Just("${claim.agent}"),
            ]
        }

        fn glob() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                3 => Just("**"),
                1 => Just("*"),
                1 => Just("?"),
                1 => Just("x*"),
                2 => prop::sample::select(SEGMENTS),
            ]
        }

        fn grant_text() -> impl Strategy<Value = String> {
            (
                prop::array::uniform4(template()),
                prop::collection::vec(glob(), 0..3),
            )
                .prop_map(|([a, r, p, t], path)| {
                    let mut text = format!("ucxl://{a}:{r}@{p}:{t}");
                    for glob in path {
                        text.push('/');
                        text.push_str(glob);
                    }
                    text
                })
        }

        fn op_set() -> impl Strategy<Value = Vec<Op>> {
            prop::sample::subsequence(Op::ALL.to_vec(), 1..=Op::ALL.len())
        }

        /// What a variable may stand for, as the module documentation states it.
        fn usable(value: &str) -> bool {
            (1..=64).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && !value.eq_ignore_ascii_case("any")
        }

        /// The pattern a grant means for one caller, or `None` when a variable has no
        /// usable value: written out by hand, then parsed alone.
        fn meant(text: &str, name: &str, agent: Option<&str>) -> Option<Pattern> {
            let mut text = text.to_owned();
            if text.contains("${principal}") {
                if !usable(name) {
                    return None;
                }
                text = text.replace("${principal}", name);
            }
            if text.contains("${claim.agent}") {
                let agent = agent.filter(|a| usable(a))?;
                text = text.replace("${claim.agent}", agent);
            }
            Some(Pattern::parse(&text).expect("a pattern with usable values parses"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn a_principal_is_allowed_exactly_what_one_of_its_grants_covers(
                grants in prop::collection::vec((op_set(), grant_text()), 0..4),
                name in prop::sample::select(VALUES),
                agent in prop::option::of(prop::sample::select(VALUES)),
                jwt in any::<bool>(),
                addresses in prop::collection::vec(address(), 1..6),
            ) {
                let parsed: Vec<(Vec<Op>, &str, Grant)> = grants
                    .iter()
                    .map(|(ops, text)| {
                        let grant = Grant::parse(ops.iter().copied().collect(), text)
                            .expect("generated grants are valid");
                        (ops.clone(), text.as_str(), grant)
                    })
                    .collect();
                let name = PrincipalName::parse(name).unwrap_or_else(|_| PrincipalName::parse("p").expect("name"));
                let claims = agent.map(|a| serde_json::json!({"agent": a}));
                // API keys carry no claims; tokens may lack the claim.
                let (kind, claims) = if jwt {
                    (Kind::Jwt, claims.as_ref().and_then(Value::as_object))
                } else {
                    (Kind::ApiKey, None)
                };
                let agent = claims.and_then(|c| c.get("agent")).and_then(Value::as_str);
                let principal = Principal::new(
                    kind,
                    Identity { name: &name, claims },
                    parsed.iter().map(|(_, _, g)| g),
                    None,
                );
                for address in &addresses {
                    for op in Op::ALL {
                        let covered = parsed.iter().any(|(ops, text, _)| {
                            ops.contains(&op)
                                && meant(text, name.as_str(), agent)
                                    .is_some_and(|p| p.matches(address))
                        });
                        prop_assert_eq!(
                            principal.allows(op, address),
                            covered,
                            "{} {} by {} with {:?}",
                            op,
                            address,
                            name,
                            grants
                        );
                    }
                }
            }
        }
    }
}
