//! Cedar policies: whether a principal or agent may call a tool with given arguments, and
//! whether the call must first be approved by a person.
//!
//! Two actions answer the two questions. `call`: the platform's and the tenant's policies
//! together, default deny, any `forbid` wins. `needs_approval`: the platform's policies and the
//! tenant's are asked separately and either may require it, so a tenant's `forbid` cannot
//! lift an approval the platform demands.
//!
//! **Architecture Invariant:** a tenant's policies speak only about that tenant. Every entity
//! id carries its tenant (`Bulkhead::Agent::"acme/triage"`); a policy naming any entity of
//! another tenant is refused when written ([`check_tenant_policy`]), and a decision for a
//! tenant loads only that tenant's own policies ([`PolicyEngine::decide`] takes them from the
//! caller's `TenantStore`), so a stored policy of another tenant can never be consulted.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bulkhead_core::TenantId;
use bulkhead_store::{StoreError, TenantStore};
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicyId,
    PolicySet, PrincipalConstraint, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};

/// The Cedar schema tenants write policies against, published at `GET /v1/policies/schema`.
pub const SCHEMA: &str = r#"namespace Bulkhead {
  // The tenant everything below belongs to: Tenant::"<tenant id>".
  entity Tenant;
  // An agent of the tenant: Agent::"<tenant id>/<agent name>".
  entity Agent in [Tenant] {
    name: String,
  };
  // A principal calling through the MCP gateway: User::"<tenant id>/<principal>".
  entity User in [Tenant] {
    roles: Set<String>,
  };
  // A tool: Tool::"<tenant id>/<toolset>.<operation>".
  entity Tool in [Tenant] {
    toolset: String,
    operation: String,
    // http, slack, jira, github or mcp.
    kind: String,
    // Declared destructive by its toolset, or by its MCP server's annotations.
    destructive: Bool,
  };
  type CallContext = {
    // What the call acts on: a Slack channel, a Jira project, a GitHub repository, a path.
    target: String,
    // The exact arguments as canonical JSON (keys sorted), for `like` patterns.
    arguments: String,
    // "agent" for a run's tool call, "mcp" for a call through the MCP gateway.
    via: String,
  };
  action call, needs_approval appliesTo {
    principal: [Agent, User],
    resource: [Tool],
    context: CallContext,
  };
}
"#;

/// The platform policies used when the configuration sets none: every call allowed, and any
/// tool marked destructive held for approval.
pub const DEFAULT_PLATFORM_POLICIES: &str = r#"permit(principal, action == Bulkhead::Action::"call", resource);
permit(principal, action == Bulkhead::Action::"needs_approval", resource) when { resource.destructive };
"#;

/// Most bytes of one tenant policy document, and most documents per tenant.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
pub const MAX_POLICIES_PER_TENANT: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is not valid Cedar, or fails the schema, or names another tenant.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PolicyError {
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Invalid(_) => "invalid_policy",
            PolicyError::Store(_) => "internal",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A run of this agent.
    Agent(String),
    /// A principal of the tenant, through the MCP gateway, with its roles.
    User {
        principal: String,
        roles: Vec<String>,
    },
}

/// A tool call to decide on.
#[derive(Debug, Clone)]
pub struct CallFacts<'a> {
    pub caller: &'a Caller,
    pub toolset: &'a str,
    pub operation: &'a str,
    pub kind: &'a str,
    pub destructive: bool,
    pub target: &'a str,
    pub arguments: &'a serde_json::Value,
    pub via: &'a str,
}

/// What the policies decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    NeedsApproval,
    /// Refused; the ids of the policies that decided (forbids), or none for default deny.
    Deny {
        policies: Vec<String>,
    },
}

/// Policies split so a decision evaluates only those that can apply: by the action their
/// scope names (`call`, `needs_approval`, or both when unconstrained), then by the principal
/// their scope names with `==` (the rest apply to every principal). Cedar evaluates every
/// policy of a set, so with 1,000 policies this is the difference between reading all of
/// them and reading the few about this agent.
#[derive(Default)]
struct Partitioned {
    call: Buckets,
    needs_approval: Buckets,
}

#[derive(Default)]
struct Buckets {
    any_principal: PolicySet,
    by_principal: HashMap<EntityUid, PolicySet>,
}

impl Partitioned {
    fn new(set: &PolicySet) -> Result<Self, PolicyError> {
        let mut parts = Partitioned::default();
        let call = action_uid("call")?;
        let needs = action_uid("needs_approval")?;
        for policy in set.policies() {
            let (for_call, for_needs) = match policy.action_constraint() {
                ActionConstraint::Eq(action) => (action == call, action == needs),
                ActionConstraint::In(actions) => {
                    (actions.contains(&call), actions.contains(&needs))
                }
                ActionConstraint::Any => (true, true),
            };
            for (applies, buckets) in [
                (for_call, &mut parts.call),
                (for_needs, &mut parts.needs_approval),
            ] {
                if !applies {
                    continue;
                }
                let target = match policy.principal_constraint() {
                    PrincipalConstraint::Eq(uid) => buckets.by_principal.entry(uid).or_default(),
                    _ => &mut buckets.any_principal,
                };
                target
                    .add(policy.clone())
                    .map_err(|e| PolicyError::Invalid(e.to_string()))?;
            }
        }
        Ok(parts)
    }

    fn buckets(&self, action: &str) -> &Buckets {
        if action == "call" {
            &self.call
        } else {
            &self.needs_approval
        }
    }
}

fn action_uid(action: &str) -> Result<EntityUid, PolicyError> {
    EntityUid::from_str(&format!("Bulkhead::Action::{action:?}"))
        .map_err(|e| PolicyError::Invalid(e.to_string()))
}

/// What the policies of some partitions said about one request: whether a permit matched,
/// and which forbids did. Equal to evaluating their union: Cedar allows when some permit and
/// no forbid is satisfied.
#[derive(Default)]
struct Tally {
    permitted: bool,
    forbidden_by: Vec<String>,
}

impl Tally {
    fn allowed(&self) -> bool {
        self.permitted && self.forbidden_by.is_empty()
    }
}

/// One tenant's policies, parsed and partitioned.
pub struct TenantSets {
    generation: i64,
    own: Partitioned,
}

/// The platform's policies and a cache of each tenant's, kept current by the tenant's policy
/// generation (one single-row read per decision).
pub struct PolicyEngine {
    schema: Schema,
    platform: Partitioned,
    authorizer: Authorizer,
    cache: Mutex<HashMap<TenantId, Arc<TenantSets>>>,
}

const CACHE_LIMIT: usize = 10_000;

impl PolicyEngine {
    /// Parses and validates the platform's policies (`None`: [`DEFAULT_PLATFORM_POLICIES`]).
    pub fn new(platform: Option<&str>) -> Result<Self, PolicyError> {
        let schema = schema()?;
        let text = platform.unwrap_or(DEFAULT_PLATFORM_POLICIES);
        let platform = parse_with_prefix(text, "platform")?;
        validate(&schema, &platform)?;
        Ok(Self {
            schema,
            platform: Partitioned::new(&platform)?,
            authorizer: Authorizer::new(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Checks a policy document a tenant wants to store: valid Cedar, static policies only,
    /// passing the schema, and naming no entity outside `tenant`.
    pub fn check_tenant_policy(
        &self,
        tenant: &TenantId,
        name: &str,
        text: &str,
    ) -> Result<(), PolicyError> {
        check_tenant_policy(&self.schema, tenant, name, text).map(|_| ())
    }

    /// Decides on a call for the tenant of `store`, with that tenant's own policies.
    pub async fn decide(
        &self,
        store: &TenantStore<'_>,
        facts: &CallFacts<'_>,
    ) -> Result<Verdict, PolicyError> {
        let tenant = store.context().tenant_id();
        let sets = self.tenant_sets(store).await?;
        Ok(self.decide_with(tenant, &sets, facts))
    }

    /// Parses the tenant's policies unless the cached parse is of the current generation.
    async fn tenant_sets(&self, store: &TenantStore<'_>) -> Result<Arc<TenantSets>, PolicyError> {
        let tenant = store.context().tenant_id();
        let generation = store.policy_generation().await?;
        if let Some(sets) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(tenant).cloned())
            .filter(|s| s.generation == generation)
        {
            return Ok(sets);
        }
        let (generation, records) = store.policies().await?;
        let sets = Arc::new(self.build_sets(
            generation,
            tenant,
            records.iter().map(|r| (r.name.as_str(), r.text.as_str())),
        )?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(tenant.clone(), sets.clone());
        }
        Ok(sets)
    }

    /// Parses and checks one tenant's policy documents, `(name, text)`, into what
    /// [`PolicyEngine::decide_with`] evaluates.
    pub fn build_sets<'t>(
        &self,
        generation: i64,
        tenant: &TenantId,
        documents: impl Iterator<Item = (&'t str, &'t str)>,
    ) -> Result<TenantSets, PolicyError> {
        let mut own = PolicySet::new();
        for (name, text) in documents {
            // Checked again on load: a stored row is trusted no more than a request.
            let parsed = check_tenant_policy(&self.schema, tenant, name, text)?;
            for policy in parsed.policies() {
                own.add(policy.clone())
                    .map_err(|e| PolicyError::Invalid(e.to_string()))?;
            }
        }
        Ok(TenantSets {
            generation,
            own: Partitioned::new(&own)?,
        })
    }

    /// Decides on a call with already parsed policies: the pure evaluation, no database.
    pub fn decide_with(
        &self,
        tenant: &TenantId,
        sets: &TenantSets,
        facts: &CallFacts<'_>,
    ) -> Verdict {
        let Ok((entities, principal, resource, context)) = self.request_parts(tenant, facts) else {
            return Verdict::Deny {
                policies: vec!["invalid-request".into()],
            };
        };
        let ask = |action: &str, partitions: &[&Partitioned]| -> Option<Tally> {
            let request = Request::new(
                principal.clone(),
                action_uid(action).ok()?,
                resource.clone(),
                context.clone(),
                Some(&self.schema),
            )
            .ok()?;
            let mut tally = Tally::default();
            for partition in partitions {
                let buckets = partition.buckets(action);
                for set in [
                    Some(&buckets.any_principal),
                    buckets.by_principal.get(&principal),
                ]
                .into_iter()
                .flatten()
                {
                    let response = self.authorizer.is_authorized(&request, set, &entities);
                    let reasons = response.diagnostics().reason().map(|id| id.to_string());
                    match response.decision() {
                        Decision::Allow => tally.permitted = true,
                        // A deny that names policies was decided by forbids; one that names
                        // none only found no permit.
                        Decision::Deny => tally.forbidden_by.extend(reasons),
                    }
                }
            }
            Some(tally)
        };
        let Some(call) = ask("call", &[&self.platform, &sets.own]) else {
            return Verdict::Deny {
                policies: vec!["invalid-request".into()],
            };
        };
        if !call.allowed() {
            return Verdict::Deny {
                policies: call.forbidden_by,
            };
        }
        // Asked separately, so a tenant's forbid cannot cancel the platform's requirement.
        let needs = |partition: &Partitioned| {
            ask("needs_approval", &[partition]).is_some_and(|t| t.allowed())
        };
        if needs(&self.platform) || needs(&sets.own) {
            Verdict::NeedsApproval
        } else {
            Verdict::Allow
        }
    }

    fn request_parts(
        &self,
        tenant: &TenantId,
        facts: &CallFacts<'_>,
    ) -> Result<(Entities, EntityUid, EntityUid, Context), String> {
        let uid = |kind: &str, id: &str| {
            EntityUid::from_str(&format!("Bulkhead::{kind}::{}", cedar_string(id)))
                .map_err(|e| e.to_string())
        };
        let tenant_uid = uid("Tenant", tenant.as_str())?;
        let parents = HashSet::from([tenant_uid.clone()]);
        let string = RestrictedExpression::new_string;
        let (principal_uid, principal) = match facts.caller {
            Caller::Agent(name) => {
                let id = uid("Agent", &format!("{tenant}/{name}"))?;
                let attrs = HashMap::from([("name".to_owned(), string(name.clone()))]);
                (id.clone(), Entity::new(id, attrs, parents.clone()))
            }
            Caller::User { principal, roles } => {
                let id = uid("User", &format!("{tenant}/{principal}"))?;
                let attrs = HashMap::from([(
                    "roles".to_owned(),
                    RestrictedExpression::new_set(roles.iter().cloned().map(string)),
                )]);
                (id.clone(), Entity::new(id, attrs, parents.clone()))
            }
        };
        let tool_uid = uid(
            "Tool",
            &format!("{tenant}/{}.{}", facts.toolset, facts.operation),
        )?;
        let tool = Entity::new(
            tool_uid.clone(),
            HashMap::from([
                ("toolset".to_owned(), string(facts.toolset.to_owned())),
                ("operation".to_owned(), string(facts.operation.to_owned())),
                ("kind".to_owned(), string(facts.kind.to_owned())),
                (
                    "destructive".to_owned(),
                    RestrictedExpression::new_bool(facts.destructive),
                ),
            ]),
            parents,
        )
        .map_err(|e| e.to_string())?;
        let principal = principal.map_err(|e| e.to_string())?;
        let entities = Entities::from_entities(
            [
                Entity::new_no_attrs(tenant_uid, HashSet::new()),
                principal,
                tool,
            ],
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        let context = Context::from_pairs([
            ("target".to_owned(), string(facts.target.to_owned())),
            (
                "arguments".to_owned(),
                string(canonical_json(facts.arguments)),
            ),
            ("via".to_owned(), string(facts.via.to_owned())),
        ])
        .map_err(|e| e.to_string())?;
        Ok((entities, principal_uid, tool_uid, context))
    }
}

/// A Cedar string literal (quoted and escaped) for an entity id.
fn cedar_string(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

/// JSON with object keys sorted, so `like` patterns over arguments do not depend on the order
/// a model wrote them in.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn sort(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let sorted: std::collections::BTreeMap<_, _> =
                    map.iter().map(|(k, v)| (k.clone(), sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sort).collect())
            }
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| PolicyError::Invalid(format!("the built-in schema: {e}")))
}

/// Parses `text` into a policy set whose policy ids are `<prefix>:<n>`, refusing templates.
fn parse_with_prefix(text: &str, prefix: &str) -> Result<PolicySet, PolicyError> {
    let parsed = PolicySet::from_str(text).map_err(|e| PolicyError::Invalid(pretty(&e)))?;
    if parsed.templates().next().is_some() {
        return Err(PolicyError::Invalid(
            "templates (?principal, ?resource) are not supported; write static policies".into(),
        ));
    }
    let mut set = PolicySet::new();
    for (n, policy) in parsed.policies().enumerate() {
        let id = PolicyId::new(format!("{prefix}:{n}"));
        set.add(policy.new_id(id))
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
    }
    Ok(set)
}

fn validate(schema: &Schema, set: &PolicySet) -> Result<(), PolicyError> {
    let result = Validator::new(schema.clone()).validate(set, ValidationMode::Strict);
    if result.validation_passed() {
        Ok(())
    } else {
        let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
        Err(PolicyError::Invalid(format!(
            "fails the policy schema (GET /v1/policies/schema): {}",
            errors.join("; ")
        )))
    }
}

fn pretty(error: &impl std::fmt::Display) -> String {
    format!("not valid Cedar: {error}")
}

/// The checks of [`PolicyEngine::check_tenant_policy`]; answers the parsed set.
fn check_tenant_policy(
    schema: &Schema,
    tenant: &TenantId,
    name: &str,
    text: &str,
) -> Result<PolicySet, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::Invalid(format!(
            "a policy document may hold at most {MAX_POLICY_BYTES} bytes"
        )));
    }
    let set = parse_with_prefix(text, &format!("tenant:{name}"))?;
    if set.policies().next().is_none() {
        return Err(PolicyError::Invalid("the document holds no policy".into()));
    }
    validate(schema, &set)?;
    for policy in set.policies() {
        let json = policy
            .to_json()
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        if let Some((kind, id)) = foreign_entity(&json, tenant) {
            return Err(PolicyError::Invalid(format!(
                "{kind}::{id:?} is not an entity of this tenant; a tenant's policies may only name \
                 Bulkhead::Tenant::\"{tenant}\" and entities whose id starts with \"{tenant}/\""
            )));
        }
    }
    Ok(set)
}

/// The first entity literal in a policy's JSON form that is not the tenant's own.
fn foreign_entity(json: &serde_json::Value, tenant: &TenantId) -> Option<(String, String)> {
    match json {
        serde_json::Value::Object(map) => {
            if let (Some(serde_json::Value::String(kind)), Some(serde_json::Value::String(id))) =
                (map.get("type"), map.get("id"))
            {
                let own = match kind.rsplit("::").next() {
                    Some("Action") => true,
                    Some("Tenant") => id == tenant.as_str(),
                    _ => id
                        .strip_prefix(tenant.as_str())
                        .is_some_and(|rest| rest.starts_with('/')),
                };
                if !own {
                    return Some((kind.clone(), id.clone()));
                }
            }
            map.values().find_map(|v| foreign_entity(v, tenant))
        }
        serde_json::Value::Array(items) => items.iter().find_map(|v| foreign_entity(v, tenant)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::try_from(id).unwrap()
    }

    fn facts<'a>(
        caller: &'a Caller,
        toolset: &'a str,
        operation: &'a str,
        target: &'a str,
        arguments: &'a serde_json::Value,
    ) -> CallFacts<'a> {
        CallFacts {
            caller,
            toolset,
            operation,
            kind: toolset,
            destructive: false,
            target,
            arguments,
            via: "agent",
        }
    }

    fn decide(
        engine: &PolicyEngine,
        tenant_id: &str,
        docs: &[(&str, &str)],
        f: &CallFacts<'_>,
    ) -> Verdict {
        let t = tenant(tenant_id);
        let sets = engine
            .build_sets(1, &t, docs.iter().map(|(n, d)| (*n, *d)))
            .unwrap();
        engine.decide_with(&t, &sets, f)
    }

    #[test]
    fn the_schema_and_default_policies_load() {
        let engine = PolicyEngine::new(None).unwrap();
        let agent = Caller::Agent("triage".into());
        let args = serde_json::json!({"channel": "#general", "text": "hi"});
        let plain = facts(&agent, "slack", "post_message", "#general", &args);
        assert_eq!(decide(&engine, "acme", &[], &plain), Verdict::Allow);
        let destructive = CallFacts {
            destructive: true,
            ..plain.clone()
        };
        assert_eq!(
            decide(&engine, "acme", &[], &destructive),
            Verdict::NeedsApproval
        );
    }

    #[test]
    fn tenant_policies_require_approval_and_forbid() {
        let engine = PolicyEngine::new(None).unwrap();
        let agent = Caller::Agent("triage".into());
        let incidents = serde_json::json!({"channel": "#incidents", "text": "down"});
        let general = serde_json::json!({"channel": "#general", "text": "hi"});
        let docs = [
            (
                "approve-incidents",
                r##"permit(principal, action == Bulkhead::Action::"needs_approval", resource)
                   when { resource.kind == "slack" && context.target like "#incidents*" };"##,
            ),
            (
                "no-github",
                r##"forbid(principal == Bulkhead::Agent::"acme/triage", action == Bulkhead::Action::"call", resource)
                   when { resource.kind == "github" };"##,
            ),
        ];
        let to_incidents = facts(&agent, "slack", "post_message", "#incidents", &incidents);
        assert_eq!(
            decide(&engine, "acme", &docs, &to_incidents),
            Verdict::NeedsApproval
        );
        let to_general = facts(&agent, "slack", "post_message", "#general", &general);
        assert_eq!(decide(&engine, "acme", &docs, &to_general), Verdict::Allow);
        let github = facts(&agent, "github", "create_issue", "acme/app", &general);
        assert!(
            matches!(decide(&engine, "acme", &docs, &github), Verdict::Deny { policies } if policies == ["tenant:no-github:0"])
        );
    }

    #[test]
    fn a_tenant_cannot_lift_an_approval_the_platform_requires() {
        let engine = PolicyEngine::new(None).unwrap();
        let agent = Caller::Agent("triage".into());
        let args = serde_json::json!({});
        let destructive = CallFacts {
            destructive: true,
            ..facts(&agent, "ops", "drop_table", "db", &args)
        };
        let docs = [(
            "no-approvals",
            r##"forbid(principal, action == Bulkhead::Action::"needs_approval", resource);"##,
        )];
        assert_eq!(
            decide(&engine, "acme", &docs, &destructive),
            Verdict::NeedsApproval
        );
    }

    #[test]
    fn a_tenant_policy_naming_another_tenant_is_refused() {
        let engine = PolicyEngine::new(None).unwrap();
        let acme = tenant("acme");
        let refused = [
            r##"permit(principal == Bulkhead::Agent::"globex/bot", action, resource);"##,
            r##"permit(principal, action, resource in Bulkhead::Tenant::"globex");"##,
            r##"permit(principal, action, resource) when { resource == Bulkhead::Tool::"globex/slack.post_message" };"##,
            r##"permit(principal, action, resource) when { principal in Bulkhead::Tenant::"acmex" };"##,
            r##"permit(principal == Bulkhead::Agent::"acmebot", action, resource);"##,
        ];
        for text in refused {
            let error = engine.check_tenant_policy(&acme, "p", text).unwrap_err();
            assert!(
                error.to_string().contains("not an entity of this tenant"),
                "{text}: {error}"
            );
        }
        for text in [
            r##"permit(principal == Bulkhead::Agent::"acme/bot", action, resource in Bulkhead::Tenant::"acme");"##,
            r##"permit(principal, action == Bulkhead::Action::"call", resource);"##,
        ] {
            engine.check_tenant_policy(&acme, "p", text).unwrap();
        }
    }

    #[test]
    fn invalid_policies_are_refused_with_the_reason() {
        let engine = PolicyEngine::new(None).unwrap();
        let acme = tenant("acme");
        for (text, expect) in [
            ("permit(principal, action, resource", "not valid Cedar"),
            (
                r##"permit(principal, action, resource) when { resource.colour == "red" };"##,
                "schema",
            ),
            (
                "permit(principal == ?principal, action, resource);",
                "templates",
            ),
            ("// nothing", "no policy"),
        ] {
            let error = engine.check_tenant_policy(&acme, "p", text).unwrap_err();
            assert!(error.to_string().contains(expect), "{text}: {error}");
        }
    }

    /// The partitioned evaluation decides exactly as evaluating the union of the policies
    /// would, over a mix of scopes and effects.
    #[test]
    fn partitioning_decides_as_the_whole_set_would() {
        let engine = PolicyEngine::new(None).unwrap();
        let acme = tenant("acme");
        let mut docs = Vec::new();
        for i in 0..40 {
            let principal = match i % 4 {
                0 => "principal".to_owned(),
                1 => format!(r#"principal == Bulkhead::Agent::"acme/a{}""#, i % 3),
                2 => r#"principal in Bulkhead::Tenant::"acme""#.to_owned(),
                _ => "principal is Bulkhead::Agent".to_owned(),
            };
            let action = match i % 3 {
                0 => r#"action == Bulkhead::Action::"call""#,
                1 => r#"action == Bulkhead::Action::"needs_approval""#,
                _ => "action",
            };
            let effect = if i % 5 == 0 { "forbid" } else { "permit" };
            let condition = format!(r#"context.target like "*{}*""#, i % 7);
            docs.push((
                format!("p{i}"),
                format!("{effect}({principal}, {action}, resource) when {{ {condition} }};"),
            ));
        }
        let sets = engine
            .build_sets(1, &acme, docs.iter().map(|(n, t)| (n.as_str(), t.as_str())))
            .unwrap();
        let whole = |texts: &[&str]| {
            let mut set = PolicySet::new();
            for (n, text) in texts.iter().enumerate() {
                for policy in parse_with_prefix(text, &format!("w{n}"))
                    .unwrap()
                    .policies()
                {
                    set.add(policy.clone()).unwrap();
                }
            }
            set
        };
        let own: Vec<&str> = docs.iter().map(|(_, t)| t.as_str()).collect();
        let mut everything = own.clone();
        everything.push(DEFAULT_PLATFORM_POLICIES);
        let (union, own_only, platform_only) = (
            whole(&everything),
            whole(&own),
            whole(&[DEFAULT_PLATFORM_POLICIES]),
        );
        let args = serde_json::json!({});
        let mut seen = std::collections::BTreeSet::new();
        for agent in ["a0", "a1", "a2", "a9"] {
            for target in ["#0", "#1", "#2", "#3", "#4", "#5", "#6", "none"] {
                for destructive in [false, true] {
                    let caller = Caller::Agent(agent.into());
                    let facts = CallFacts {
                        destructive,
                        ..facts(&caller, "slack", "post", target, &args)
                    };
                    let (entities, principal, resource, context) =
                        engine.request_parts(&acme, &facts).unwrap();
                    let ask = |action: &str, set: &PolicySet| {
                        let request = Request::new(
                            principal.clone(),
                            action_uid(action).unwrap(),
                            resource.clone(),
                            context.clone(),
                            Some(&engine.schema),
                        )
                        .unwrap();
                        engine
                            .authorizer
                            .is_authorized(&request, set, &entities)
                            .decision()
                            == Decision::Allow
                    };
                    let expected = if !ask("call", &union) {
                        "deny"
                    } else if ask("needs_approval", &platform_only)
                        || ask("needs_approval", &own_only)
                    {
                        "approve"
                    } else {
                        "allow"
                    };
                    let got = match engine.decide_with(&acme, &sets, &facts) {
                        Verdict::Deny { .. } => "deny",
                        Verdict::NeedsApproval => "approve",
                        Verdict::Allow => "allow",
                    };
                    assert_eq!(got, expected, "{agent} {target} {destructive}");
                    seen.insert(got);
                }
            }
        }
        assert_eq!(
            seen.len(),
            3,
            "the cases should cover every verdict: {seen:?}"
        );
    }

    #[test]
    fn arguments_are_canonical() {
        let a = serde_json::json!({"b": 1, "a": {"d": 2, "c": [3]}});
        assert_eq!(canonical_json(&a), r##"{"a":{"c":[3],"d":2},"b":1}"##);
    }
}
