//! One policy engine: Cedar. The built-in RBAC is a small Cedar policy set
//! (`builtin.cedar`); each tenant adds its own validated documents beside it. No I/O here: the
//! guard loads documents from the store and hands them in.
//!
//! Decision rules, on top of Cedar's (forbid wins, no permit denies):
//! - a policy that errors during evaluation denies (Cedar skips erroring policies; we do not);
//! - a tenant whose stored documents no longer parse denies everything until they are fixed;
//! - tenant policies never apply to operators, and `tenants.manage` is an operator's alone,
//!   whatever a tenant document permits.
//!
//! A tenant without documents is decided by the built-in set alone, which depends only on the
//! caller's role and the action: those answers are computed by Cedar once, at start-up, and
//! looked up afterwards.
#![forbid(unsafe_code)]

mod context;
mod problems;

pub use context::ContextInput;
pub use problems::Problem;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use portcullis_core::{Principal, PrincipalKind, Role};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

pub use cedar_policy;

const SCHEMA: &str = include_str!("schema.cedarschema");
const BUILTIN: &str = include_str!("builtin.cedar");
const NAMESPACE: &str = "Portcullis";

/// The largest tenant policy document accepted (bytes of Cedar text).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// The most `permit`/`forbid` statements in one document.
pub const MAX_STATEMENTS: usize = 100;

/// The resource types a decision request may name, and the Cedar type each maps to. Any other
/// type becomes `Portcullis::Resource` with `kind` set to it.
pub const RESOURCE_TYPES: &[(&str, &str)] = &[
    ("tenant", "Tenant"),
    ("route", "Route"),
    ("tool", "Tool"),
    ("conversation", "Conversation"),
    ("memory", "Memory"),
    ("job", "Job"),
];

/// A decision and what made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policies that decided: the permits that applied when allowed; the forbids (or the
    /// erroring policies) when denied. Empty when denied because nothing permitted. Tenant
    /// statements are named by their document's id.
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (each one denies).
    pub errors: Vec<EvalError>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EvalError {
    pub policy: String,
    pub message: String,
}

impl Decision {
    /// The reasons a decision answer and its audit event carry: the deciding policy ids, or
    /// `default:no_permit` when nothing permitted.
    pub fn reasons(&self) -> Vec<String> {
        if self.policies.is_empty() && !self.allowed {
            vec![String::from("default:no_permit")]
        } else {
            self.policies.clone()
        }
    }
}

/// What is being decided.
pub struct DecisionRequest<'a> {
    pub principal: &'a Principal,
    pub action: &'a str,
    /// `(type, id)` as the caller named it; `None`: the caller's tenant.
    pub resource: Option<(&'a str, &'a str)>,
    pub context: &'a ContextInput,
}

/// A tenant policy document as stored.
pub struct Document<'a> {
    pub id: &'a str,
    pub cedar: &'a str,
}

/// The validated shape of a document: how many statements, and warnings worth showing.
#[derive(Clone, Debug, Default)]
pub struct Checked {
    pub statements: usize,
    pub warnings: Vec<Problem>,
}

/// A tenant's compiled policy set (built-in + its enabled documents), sliced so a decision only
/// evaluates the statements that can apply to it: per action, and within an action the
/// statements scoped to one resource (`resource == …`) apart from the rest. A statement goes into
/// every slice it could apply to (conservatively: when unsure, into all), so slicing never
/// changes an answer, only how much Cedar evaluates.
pub struct TenantPolicies {
    documents: usize,
    /// A stored document that no longer parses: every decision for the tenant denies naming it.
    broken: Option<EvalError>,
    /// Per declared action.
    actions: HashMap<String, Slice>,
    /// Actions the schema does not declare (data-plane actions of decision requests).
    undeclared: Slice,
}

#[derive(Clone, Default)]
struct Slice {
    /// The built-in set and every statement whose resource scope is not `resource == …`.
    general: PolicySet,
    /// Statements scoped `resource == uid`, by that uid (without the built-in set).
    by_resource: HashMap<EntityUid, PolicySet>,
}

impl Slice {
    fn add(&mut self, p: &Policy) -> Result<(), String> {
        match p.resource_constraint() {
            cedar_policy::ResourceConstraint::Eq(uid) => {
                self.by_resource.entry(uid).or_default().add(p.clone()).map_err(|e| e.to_string())
            }
            _ => self.general.add(p.clone()).map_err(|e| e.to_string()),
        }
    }
}

impl TenantPolicies {
    pub fn documents(&self) -> usize {
        self.documents
    }
    pub fn is_empty(&self) -> bool {
        self.documents == 0 && self.broken.is_none()
    }
}

/// Callers the built-in answers are memoised for.
const CLASSES: usize = 5;

fn class_of(p: &Principal) -> Option<usize> {
    if p.kind == PrincipalKind::Operator {
        return Some(4);
    }
    p.role.map(|r| match r {
        Role::Admin => 0,
        Role::Editor => 1,
        Role::Viewer => 2,
        Role::Service => 3,
    })
}

#[derive(Clone)]
struct Memo {
    allowed: bool,
    policies: Arc<[String]>,
}

pub struct Engine {
    schema: Schema,
    validator: Validator,
    builtin: PolicySet,
    authorizer: Authorizer,
    /// Every declared action's entity (with its group as parent), by action name.
    actions: HashMap<String, Entity>,
    /// Each group's declared member actions.
    members: HashMap<String, Vec<String>>,
    /// The built-in answer per declared action name, per caller class.
    memo: HashMap<String, [Memo; CLASSES]>,
    /// The built-in answer for undeclared (data-plane) actions, per caller class.
    memo_undeclared: Option<[Memo; CLASSES]>,
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(&format!("{NAMESPACE}::{name}")).map_err(|e| format!("entity type {name}: {e}"))
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(type_name(ty)?, EntityId::new(id)))
}

/// Groups an action belongs to when it is not declared: data-plane actions are `execute`.
const UNDECLARED_GROUP: &str = "execute";
const GROUPS: &[&str] = &["read", "write", "execute", "manage"];

impl Engine {
    /// Builds the schema (with the configured route actions as members of `execute`), the
    /// built-in set, and its memoised answers. Fails on an action name that is not
    /// `[a-z0-9._-]+` or on an internal inconsistency (a bug, caught by the tests).
    pub fn new<'a>(route_actions: impl IntoIterator<Item = &'a str>) -> Result<Engine, String> {
        let mut extra = String::new();
        let declared: HashSet<&str> = [
            "tenant.read",
            "users.read",
            "keys.read",
            "audit.read",
            "config.read",
            "policies.read",
            "users.write",
            "keys.write",
            "config.write",
            "policies.write",
            "session",
            "tenants.manage",
            "conversation.send",
            "memory.write",
            "tool.request",
            "job.submit",
            "http.request",
        ]
        .into_iter()
        .collect();
        let mut seen = HashSet::new();
        for a in route_actions {
            if !valid_action(a) {
                return Err(format!("action `{a}` must be lowercase letters, digits, `.`, `_`, `-`"));
            }
            if declared.contains(a) || GROUPS.contains(&a) || !seen.insert(a) {
                continue;
            }
            extra.push_str(&format!(", \"{a}\""));
        }
        let text = SCHEMA.replace("@ROUTE_ACTIONS@", &extra);
        let (schema, _) = Schema::from_cedarschema_str(&text).map_err(|e| format!("policy schema: {e}"))?;
        let validator = Validator::new(schema.clone());

        let parsed = PolicySet::from_str(BUILTIN).map_err(|e| format!("built-in policies: {e}"))?;
        let mut builtin = PolicySet::new();
        for p in parsed.policies() {
            let id = p.annotation("id").ok_or("built-in policy without @id")?;
            builtin.add(p.new_id(PolicyId::new(id))).map_err(|e| format!("built-in policies: {e}"))?;
        }
        // The role policies validate like tenant ones; `builtin.operator` names a principal type
        // no action applies to in the schema (so tenant policies cannot mention operators).
        let mut roles = builtin.clone();
        roles.remove_static(PolicyId::new("builtin.operator")).map_err(|e| format!("built-in policies: {e}"))?;
        let result = validator.validate(&roles, ValidationMode::Strict);
        if !result.validation_passed() {
            let errs: Vec<String> = result.validation_errors().map(ToString::to_string).collect();
            return Err(format!("built-in policies do not validate: {}", errs.join("; ")));
        }

        let mut actions = HashMap::new();
        let action_entities = schema.action_entities().map_err(|e| format!("policy schema actions: {e}"))?;
        for e in action_entities.iter() {
            let uid = e.uid();
            let name = uid.id().unescaped().to_owned();
            if !GROUPS.contains(&name.as_str()) {
                actions.insert(name, e.clone());
            }
        }
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        for g in GROUPS {
            let group = uid("Action", g)?;
            let m =
                actions.keys().filter(|a| uid("Action", a).is_ok_and(|u| action_entities.is_ancestor_of(&group, &u)));
            members.insert((*g).to_owned(), m.cloned().collect());
        }

        let mut engine = Engine {
            schema,
            validator,
            builtin,
            authorizer: Authorizer::new(),
            actions,
            members,
            memo: HashMap::new(),
            memo_undeclared: None,
        };
        let mut memo = engine.compute_memo()?;
        engine.memo_undeclared = memo.remove(&None);
        engine.memo = memo.into_iter().filter_map(|(k, v)| Some((k?, v))).collect();
        Ok(engine)
    }

    /// Cedar, run once per caller class and action on the built-in set.
    fn compute_memo(&self) -> Result<HashMap<Option<String>, [Memo; CLASSES]>, String> {
        let reps = representatives();
        let ctx = ContextInput::at(0);
        let mut memo = HashMap::new();
        let names: Vec<Option<String>> = self.actions.keys().cloned().map(Some).chain(std::iter::once(None)).collect();
        for name in names {
            let action = name.as_deref().unwrap_or("undeclared.action");
            let mut row = Vec::with_capacity(CLASSES);
            for p in &reps {
                let req = DecisionRequest { principal: p, action, resource: None, context: &ctx };
                let d = self.run_builtin(&req);
                row.push(Memo { allowed: d.allowed, policies: d.policies.into() });
            }
            let row: [Memo; CLASSES] = row.try_into().map_err(|_| String::from("memo row"))?;
            memo.insert(name, row);
        }
        Ok(memo)
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The Cedar schema as text, for users writing policies.
    pub fn schema_text(&self) -> String {
        let extra: Vec<String> = self
            .actions
            .keys()
            .filter(|a| !SCHEMA.contains(&format!("\"{a}\"")))
            .map(|a| format!(", \"{a}\""))
            .collect();
        let mut extra = extra;
        extra.sort();
        SCHEMA.replace("@ROUTE_ACTIONS@", &extra.concat())
    }

    /// The built-in policies as text.
    pub fn builtin_text(&self) -> &'static str {
        BUILTIN
    }

    /// Parses and validates one tenant document (strict mode against the schema). Errors carry
    /// positions in `text`.
    pub fn check(&self, doc_id: &str, text: &str) -> Result<Checked, Vec<Problem>> {
        let set = parse_document(doc_id, text)?;
        let result = self.validator.validate(&set, ValidationMode::Strict);
        // Cedar prefixes each message with the statement's id, which the author never wrote.
        let unprefix = |mut p: Problem| {
            if let Some(rest) = p.message.strip_prefix("for policy `")
                && let Some((_, msg)) = rest.split_once("`, ")
            {
                p.message = msg.to_owned();
            }
            p
        };
        let mut errors: Vec<Problem> = Vec::new();
        for e in result.validation_errors() {
            // The same mistake is reported once per principal type it fails on: keep the first.
            let p = unprefix(Problem::from_diagnostic(e, text));
            if p.offset.is_none() || !errors.iter().any(|q| (q.offset, q.length) == (p.offset, p.length)) {
                errors.push(p);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let warnings = result.validation_warnings().map(|w| unprefix(Problem::from_diagnostic(w, text))).collect();
        Ok(Checked { statements: set.policies().count(), warnings })
    }

    /// Compiles a tenant's enabled documents beside the built-in set. A document that does not
    /// parse (it was valid when saved, so the store or the schema changed) makes the whole set
    /// deny, naming it.
    pub fn compile<'a>(&self, documents: impl IntoIterator<Item = Document<'a>>) -> TenantPolicies {
        let base = Slice { general: self.builtin.clone(), by_resource: HashMap::new() };
        let mut t = TenantPolicies {
            documents: 0,
            broken: None,
            actions: self.actions.keys().map(|a| (a.clone(), base.clone())).collect(),
            undeclared: base,
        };
        for d in documents {
            t.documents += 1;
            let added = parse_document(d.id, d.cedar)
                .map_err(|p| p.into_iter().map(|p| p.message).collect::<Vec<_>>().join("; "))
                .and_then(|doc| doc.policies().try_for_each(|p| self.place(&mut t, p)));
            if let Err(message) = added {
                t.broken = Some(EvalError { policy: d.id.to_owned(), message });
                return t;
            }
        }
        t
    }

    /// Adds a statement to every slice whose action it could apply to.
    fn place(&self, t: &mut TenantPolicies, p: &Policy) -> Result<(), String> {
        let all = |t: &mut TenantPolicies| -> Result<(), String> {
            t.actions.values_mut().try_for_each(|s| s.add(p))?;
            t.undeclared.add(p)
        };
        let named: Vec<EntityUid> = match p.action_constraint() {
            cedar_policy::ActionConstraint::Any => return all(t),
            cedar_policy::ActionConstraint::Eq(u) => vec![u],
            cedar_policy::ActionConstraint::In(us) => us,
        };
        let action_type = type_name("Action")?;
        let mut undeclared = false;
        let mut targets: HashSet<&str> = HashSet::new();
        for u in &named {
            if u.type_name() != &action_type {
                return all(t);
            }
            let name = u.id().unescaped();
            if self.actions.contains_key(name) {
                targets.insert(self.actions.get_key_value(name).map(|(k, _)| k.as_str()).unwrap_or(name));
            } else if let Some(m) = self.members.get(name) {
                targets.extend(m.iter().map(String::as_str));
                if name == UNDECLARED_GROUP {
                    undeclared = true;
                }
            } else {
                // An action the schema does not declare: requests for it use the undeclared slice.
                undeclared = true;
            }
        }
        for a in targets {
            if let Some(s) = t.actions.get_mut(a) {
                s.add(p)?;
            }
        }
        if undeclared {
            t.undeclared.add(p)?;
        }
        Ok(())
    }

    /// Decides `req` with the tenant's set (or the built-in set alone when `tenant` is `None`
    /// or empty, or the caller is an operator).
    pub fn decide(&self, tenant: Option<&TenantPolicies>, req: &DecisionRequest<'_>) -> Decision {
        let operator = req.principal.kind == PrincipalKind::Operator;
        if req.action == "tenants.manage" && !operator {
            return Decision { allowed: false, policies: Vec::new(), errors: Vec::new() };
        }
        match tenant.filter(|t| !t.is_empty() && !operator) {
            None => self.decide_builtin(req),
            Some(t) => {
                if let Some(b) = &t.broken {
                    return Decision { allowed: false, policies: vec![b.policy.clone()], errors: vec![b.clone()] };
                }
                let slice = t.actions.get(req.action).unwrap_or(&t.undeclared);
                self.run(slice, req)
            }
        }
    }

    fn decide_builtin(&self, req: &DecisionRequest<'_>) -> Decision {
        let Some(class) = class_of(req.principal) else {
            return Decision { allowed: false, policies: Vec::new(), errors: Vec::new() };
        };
        let row = self.memo.get(req.action).or(self.memo_undeclared.as_ref());
        match row {
            Some(row) => {
                let m = &row[class];
                Decision { allowed: m.allowed, policies: m.policies.to_vec(), errors: Vec::new() }
            }
            None => self.run_builtin(req),
        }
    }

    fn run_builtin(&self, req: &DecisionRequest<'_>) -> Decision {
        let slice = Slice { general: self.builtin.clone(), by_resource: HashMap::new() };
        self.run(&slice, req)
    }

    /// Builds the request and its entities once and asks Cedar for the slice's general set and,
    /// when the resource has statements of its own, for those; then combines the answers as one
    /// set would: any error denies, any satisfied forbid denies, else any satisfied permit
    /// allows, else nothing permitted. Anything that cannot be built denies with the failure.
    fn run(&self, slice: &Slice, req: &DecisionRequest<'_>) -> Decision {
        let (request, entities) = match self.request(req) {
            Ok(r) => r,
            Err(message) => {
                return Decision {
                    allowed: false,
                    policies: Vec::new(),
                    errors: vec![EvalError { policy: String::from("request"), message }],
                };
            }
        };
        let specific = request.resource().and_then(|r| slice.by_resource.get(r));
        let mut errors: Vec<EvalError> = Vec::new();
        let mut forbids: Vec<String> = Vec::new();
        let mut permits: Vec<String> = Vec::new();
        for set in std::iter::once(&slice.general).chain(specific) {
            let response = self.authorizer.is_authorized(&request, set, &entities);
            let diag = response.diagnostics();
            for e in diag.errors() {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                let err = EvalError { policy: document_of(e.policy_id()), message: e.inner().to_string() };
                if !errors.contains(&err) {
                    errors.push(err);
                }
            }
            let into = if response.decision() == CedarDecision::Allow { &mut permits } else { &mut forbids };
            for id in diag.reason() {
                let d = document_of(id);
                if !into.contains(&d) {
                    into.push(d);
                }
            }
        }
        if !errors.is_empty() {
            // An erroring policy denies: had it evaluated, it might have forbidden.
            let mut policies: Vec<String> = errors.iter().map(|e| e.policy.clone()).collect();
            policies.dedup();
            return Decision { allowed: false, policies, errors };
        }
        if !forbids.is_empty() {
            forbids.sort();
            return Decision { allowed: false, policies: forbids, errors };
        }
        permits.sort();
        Decision { allowed: !permits.is_empty(), policies: permits, errors }
    }

    fn request(&self, req: &DecisionRequest<'_>) -> Result<(Request, Entities), String> {
        let p = req.principal;
        let (principal, principal_entity) = principal_entity(p)?;
        let action_entity = match self.actions.get(req.action) {
            Some(e) => e.clone(),
            None => {
                if !valid_action(req.action) {
                    return Err(format!("action `{}` is not a valid action name", req.action));
                }
                Entity::new_no_attrs(uid("Action", req.action)?, HashSet::from([uid("Action", UNDECLARED_GROUP)?]))
            }
        };
        let action = action_entity.uid();
        let (resource, resource_entity) = match req.resource {
            Some((ty, id)) => match RESOURCE_TYPES.iter().find(|(t, _)| *t == ty) {
                Some((_, cedar_ty)) => (uid(cedar_ty, id)?, None),
                None => {
                    let u = uid("Resource", id)?;
                    let attrs =
                        HashMap::from([(String::from("kind"), RestrictedExpression::new_string(ty.to_owned()))]);
                    let e = Entity::new(u.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
                    (u, Some(e))
                }
            },
            None => match &p.tenant_id {
                Some(t) => (uid("Tenant", t.as_str())?, None),
                None => (uid("Tenant", "platform")?, None),
            },
        };
        let context = Context::from_pairs(req.context.pairs()).map_err(|e| e.to_string())?;
        let mut entities = vec![action_entity];
        entities.extend(principal_entity);
        entities.extend(resource_entity);
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let request = Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
}

fn principal_entity(p: &Principal) -> Result<(EntityUid, Option<Entity>), String> {
    let ty = match p.kind {
        PrincipalKind::Operator => return Ok((uid("Operator", &p.id)?, None)),
        PrincipalKind::User => "User",
        PrincipalKind::ApiKey => "ApiKey",
        PrincipalKind::Jwt => "ServiceAccount",
    };
    let u = uid(ty, &p.id)?;
    let mut attrs = HashMap::with_capacity(3);
    let mut parents = HashSet::with_capacity(1);
    if let Some(t) = &p.tenant_id {
        attrs.insert(String::from("tenant"), RestrictedExpression::new_entity_uid(uid("Tenant", t.as_str())?));
    }
    if let Some(r) = p.role {
        attrs.insert(String::from("role"), RestrictedExpression::new_string(r.as_str().to_owned()));
        parents.insert(uid("Role", r.as_str())?);
    }
    if p.kind == PrincipalKind::ApiKey {
        attrs.insert(
            String::from("scopes"),
            RestrictedExpression::new_set(p.scopes.iter().map(|s| RestrictedExpression::new_string(s.clone()))),
        );
    }
    let e = Entity::new(u.clone(), attrs, parents).map_err(|e| e.to_string())?;
    Ok((u, Some(e)))
}

/// One principal per memoised caller class.
fn representatives() -> Vec<Principal> {
    let tenant = portcullis_core::TenantId::parse("00000000-0000-0000-0000-000000000000").ok();
    let mut v: Vec<Principal> = [Role::Admin, Role::Editor, Role::Viewer, Role::Service]
        .into_iter()
        .map(|r| Principal {
            kind: PrincipalKind::User,
            id: format!("memo:{r}"),
            tenant_id: tenant.clone(),
            role: Some(r),
            key_id: None,
            user_id: None,
            session_id: None,
            scopes: Vec::new(),
        })
        .collect();
    v.push(Principal::system_operator("memo:operator"));
    v
}

impl Engine {
    /// Whether `a` is a well-formed action name: 1–128 of `[a-z0-9._-]`.
    pub fn valid_action(a: &str) -> bool {
        valid_action(a)
    }
}

pub fn valid_action(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 128
        && a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// Statement ids inside a document: the document id for the first, `id#n` for the n-th.
fn statement_id(doc: &str, n: usize) -> PolicyId {
    if n == 1 { PolicyId::new(doc) } else { PolicyId::new(format!("{doc}#{n}")) }
}

fn document_of(id: &PolicyId) -> String {
    let s: &str = id.as_ref();
    s.split('#').next().unwrap_or(s).to_owned()
}

fn parse_document(doc_id: &str, text: &str) -> Result<PolicySet, Vec<Problem>> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(vec![Problem::plain(format!(
            "the policy is {} bytes; at most {MAX_DOCUMENT_BYTES} are accepted",
            text.len()
        ))]);
    }
    let parsed = PolicySet::from_str(text).map_err(|e| Problem::from_parse(&e, text))?;
    if parsed.templates().next().is_some() {
        return Err(vec![Problem::plain(String::from(
            "templates (policies with `?principal` or `?resource` slots) are not supported; write static policies",
        ))]);
    }
    let mut statements: Vec<&Policy> = parsed.policies().collect();
    if statements.is_empty() {
        return Err(vec![Problem::plain(String::from("the policy holds no `permit` or `forbid` statement"))]);
    }
    if statements.len() > MAX_STATEMENTS {
        return Err(vec![Problem::plain(format!(
            "the policy holds {} statements; at most {MAX_STATEMENTS} are accepted",
            statements.len()
        ))]);
    }
    // Cedar numbers statements policy0, policy1… in text order; keep that order.
    statements.sort_by_key(|p| {
        let id: &str = p.id().as_ref();
        id.trim_start_matches("policy").parse::<usize>().unwrap_or(usize::MAX)
    });
    let mut set = PolicySet::new();
    for (i, p) in statements.into_iter().enumerate() {
        set.add(p.new_id(statement_id(doc_id, i + 1))).map_err(|e| vec![Problem::plain(e.to_string())])?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests;
