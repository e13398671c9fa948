//! The shape of an audit event and the hash chain that links a tenant's events.
//!
//! Each tenant has its own chain: event `n` stores `hash = SHA-256(hash(n-1) ‖ canonical(n))`,
//! with [`GENESIS_HASH`] before the first. Editing, deleting, reordering or inserting an event
//! breaks a link that [`verify_chain`] finds. The store appends events in the same database
//! transaction as the change they describe.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{RequestId, TenantId};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            _ => None,
        }
    }
}

/// Who caused a change and under which request: stamped on every audit event.
#[derive(Debug, Clone)]
pub struct Origin {
    pub actor: String,
    /// The request and the trace it belongs to.
    pub request_id: Option<RequestId>,
}

impl Origin {
    /// The platform operator, authenticated by the admin token over HTTP.
    pub fn admin(request_id: RequestId) -> Self {
        Self {
            actor: "admin".to_owned(),
            request_id: Some(request_id),
        }
    }

    /// The platform operator at the command line, working on the data directory or database.
    pub fn cli() -> Self {
        Self {
            actor: "cli".to_owned(),
            request_id: None,
        }
    }
}

/// What a change contributes to the log; the store adds tenant, sequence, time and hashes.
/// `details` must never hold a secret.
#[derive(Debug, Clone)]
pub struct AuditDraft {
    pub action: &'static str,
    pub resource: String,
    pub outcome: Outcome,
    pub details: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub tenant_id: TenantId,
    pub seq: i64,
    /// Unix milliseconds.
    pub occurred_at: i64,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub outcome: Outcome,
    pub request_id: Option<String>,
    /// The W3C trace the event was recorded under. Absent on events older than trace ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEvent {
    /// The bytes that are hashed: the event without its hashes, as JSON with a fixed field
    /// order and object keys sorted at every depth, so the hash does not depend on how a map
    /// happened to be built or on serde_json's feature flags.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.canonical_bytes_with(Canonical::Json(&self.details))
    }

    /// The chain hash of this event given its details already rendered by
    /// [`canonical_json`]: the store renders them once, for the stored row and for the hash.
    pub fn hash_with_canonical_details(&self, details: &str) -> String {
        chain_hash(
            &self.prev_hash,
            &self.canonical_bytes_with(Canonical::Raw(details)),
        )
    }

    fn canonical_bytes_with(&self, details: Canonical<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        let mut field = |name: &str, value: Canonical<'_>| {
            // Past the opening brace, every field follows another.
            if out.len() > 1 {
                out.push(b',');
            }
            write_json(name, &mut out);
            out.push(b':');
            match value {
                Canonical::Str(text) => write_json(text, &mut out),
                Canonical::Int(number) => write_json(&number, &mut out),
                Canonical::Null => out.extend_from_slice(b"null"),
                Canonical::Json(value) => write_canonical(value, &mut out),
                Canonical::Raw(text) => out.extend_from_slice(text.as_bytes()),
            }
        };
        field("tenant_id", Canonical::Str(self.tenant_id.as_str()));
        field("seq", Canonical::Int(self.seq));
        field("occurred_at", Canonical::Int(self.occurred_at));
        field("actor", Canonical::Str(&self.actor));
        field("action", Canonical::Str(&self.action));
        field("resource", Canonical::Str(&self.resource));
        field("outcome", Canonical::Str(self.outcome.as_str()));
        field(
            "request_id",
            self.request_id
                .as_deref()
                .map_or(Canonical::Null, Canonical::Str),
        );
        field("details", details);
        // Appended only when present, so events from before trace ids keep their hashes.
        if let Some(trace_id) = &self.trace_id {
            field("trace_id", Canonical::Str(trace_id));
        }
        out.push(b'}');
        out
    }

    pub fn compute_hash(&self) -> String {
        chain_hash(&self.prev_hash, &self.canonical_bytes())
    }
}

pub fn chain_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical);
    crate::ids::lower_hex(&hasher.finalize())
}

/// A field of [`AuditEvent::canonical_bytes`], written without building a `Value` for it:
/// the chain is hashed on every append, so this is on the audit importer's hot path.
enum Canonical<'a> {
    Str(&'a str),
    Int(i64),
    Null,
    Json(&'a Value),
    /// JSON already written by [`canonical_json`].
    Raw(&'a str),
}

/// `value` as JSON with object keys sorted at every depth: the form its bytes take inside
/// [`AuditEvent::canonical_bytes`], and valid JSON for storing the same value.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(64);
    write_canonical(value, &mut out);
    // serde_json writes UTF-8 and the separators are ASCII, so this never falls back.
    String::from_utf8(out)
        .unwrap_or_else(|bytes| String::from_utf8_lossy(bytes.as_bytes()).into_owned())
}

/// serde_json's own rendering of a string or scalar, the same bytes as the `Value` holding it
/// would display.
fn write_json<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and strings and scalars always serialize.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(key, out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // Scalars have one serde_json rendering.
        scalar => write_json(scalar, out),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event {seq} follows {expected_seq}: an event is missing, inserted or reordered")]
    Sequence { seq: i64, expected_seq: i64 },
    #[error("event {seq} does not link to the previous event's hash")]
    BrokenLink { seq: i64 },
    #[error("event {seq} does not match its hash: it was edited")]
    Tampered { seq: i64 },
    #[error("event {seq} belongs to tenant {found}, not {expected}")]
    ForeignEvent {
        seq: i64,
        expected: String,
        found: String,
    },
}

/// The result of a successful verification: how many events, and the head hash to compare
/// with a copy kept elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    pub events: u64,
    pub last_seq: i64,
    pub head_hash: String,
}

/// Checks that `events`, ordered by sequence and starting at 1, form one unbroken chain for
/// `tenant`.
pub fn verify_chain<'a>(
    tenant: &TenantId,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<ChainHead, ChainError> {
    let mut verifier = ChainVerifier::new(tenant.clone());
    for event in events {
        verifier.push(event)?;
    }
    Ok(verifier.head())
}

/// Verifies a chain one event at a time, so a long trail is checked page by page (or line by
/// line from an export) without holding it all.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    tenant: TenantId,
    head: ChainHead,
}

impl ChainVerifier {
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            head: ChainHead {
                events: 0,
                last_seq: 0,
                head_hash: GENESIS_HASH.to_owned(),
            },
        }
    }

    /// Checks the next event: it must belong to the tenant, come next in sequence, link to
    /// the previous hash and match its own.
    pub fn push(&mut self, event: &AuditEvent) -> Result<(), ChainError> {
        let head = &mut self.head;
        if event.tenant_id != self.tenant {
            return Err(ChainError::ForeignEvent {
                seq: event.seq,
                expected: self.tenant.to_string(),
                found: event.tenant_id.to_string(),
            });
        }
        if event.seq != head.last_seq + 1 {
            return Err(ChainError::Sequence {
                seq: event.seq,
                expected_seq: head.last_seq + 1,
            });
        }
        if event.prev_hash != head.head_hash {
            return Err(ChainError::BrokenLink { seq: event.seq });
        }
        if event.compute_hash() != event.hash {
            return Err(ChainError::Tampered { seq: event.seq });
        }
        head.events += 1;
        head.last_seq = event.seq;
        head.head_hash.clone_from(&event.hash);
        Ok(())
    }

    /// What has been verified so far.
    pub fn head(&self) -> ChainHead {
        self.head.clone()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let tenant = TenantId::try_from("acme").unwrap();
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut event = AuditEvent {
                    tenant_id: tenant.clone(),
                    seq,
                    occurred_at: 1_700_000_000_000 + seq,
                    actor: "admin".into(),
                    action: "tenant.updated".into(),
                    resource: "tenant/acme".into(),
                    outcome: Outcome::Success,
                    request_id: Some(format!("req-{seq}")),
                    // Older events have no trace id; a chain may hold both kinds.
                    trace_id: (seq % 2 == 0).then(|| format!("{seq:032x}")),
                    details: json!({"b": seq, "a": [1, {"z": 1, "y": 2}]}),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                event.hash = event.compute_hash();
                prev.clone_from(&event.hash);
                event
            })
            .collect()
    }

    fn acme() -> TenantId {
        TenantId::try_from("acme").unwrap()
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let events = chain(5);
        let head = verify_chain(&acme(), &events).unwrap();
        assert_eq!(head.events, 5);
        assert_eq!(head.last_seq, 5);
        assert_eq!(head.head_hash, events[4].hash);
    }

    #[test]
    fn canonical_form_sorts_keys_at_every_depth() {
        let event = &chain(1)[0];
        let text = String::from_utf8(event.canonical_bytes()).unwrap();
        assert!(
            text.contains(r#""details":{"a":[1,{"y":2,"z":1}],"b":1}"#),
            "{text}"
        );
        assert!(
            text.starts_with(r#"{"tenant_id":"acme","seq":1,"#),
            "{text}"
        );
    }

    /// Hashes already stored must verify forever: the canonical bytes of an event with every
    /// kind of value (escapes, non-ASCII, floats, nesting, null) are pinned, as they were
    /// written before the canonical form stopped going through `Value`.
    #[test]
    fn canonical_bytes_and_hash_are_pinned() {
        let event = AuditEvent {
            tenant_id: acme(),
            seq: 42,
            occurred_at: -1,
            actor: "key:ab\"c".into(),
            action: "egress.request".into(),
            resource: "endpoint/open\u{e9}ai\n".into(),
            outcome: Outcome::Failure,
            request_id: None,
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            details: json!({
                "z": [true, false, null, 1.5, -7, 18446744073709551615u64, "\u{1f600}\t\u{1}"],
                "a": {"c": {}, "b": [], "a": {"y": "</script>", "x": 0.1}},
                "M": "upper sorts first",
            }),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let text = String::from_utf8(event.canonical_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"tenant_id":"acme","seq":42,"occurred_at":-1,"actor":"key:ab\"c","action":"egress.request","resource":"endpoint/openéai\n","outcome":"failure","request_id":null,"details":{"M":"upper sorts first","a":{"a":{"x":0.1,"y":"</script>"},"b":[],"c":{}},"z":[true,false,null,1.5,-7,18446744073709551615,"😀\t\u0001"]},"trace_id":"0af7651916cd43dd8448eb211c80319c"}"#
        );
        assert_eq!(
            event.compute_hash(),
            "f90cc09c221e8e4493651b340ac6f6251f8b79a3f4194a7890627c616dc4a828"
        );
        // The store renders the details once, for the row and for the hash: same hash, and
        // the stored text reads back as the same value.
        let details = canonical_json(&event.details);
        assert_eq!(
            event.hash_with_canonical_details(&details),
            event.compute_hash()
        );
        assert_eq!(
            serde_json::from_str::<Value>(&details).unwrap(),
            event.details
        );
    }

    #[test]
    fn edits_deletions_reorders_and_insertions_are_detected() {
        let mut edited = chain(4);
        edited[1].details = json!({"b": 99});
        assert_eq!(
            verify_chain(&acme(), &edited),
            Err(ChainError::Tampered { seq: 2 })
        );

        let mut deleted = chain(4);
        deleted.remove(2);
        assert_eq!(
            verify_chain(&acme(), &deleted),
            Err(ChainError::Sequence {
                seq: 4,
                expected_seq: 3
            })
        );

        let mut reordered = chain(4);
        reordered.swap(1, 2);
        assert!(verify_chain(&acme(), &reordered).is_err());

        // An inserted event that renumbers the rest and recomputes its own hash still breaks
        // the link of the event after it.
        let mut inserted = chain(4);
        let mut forged = inserted[1].clone();
        forged.action = "tenant.deleted".into();
        forged.hash = forged.compute_hash();
        inserted.insert(2, forged);
        for (i, event) in inserted.iter_mut().enumerate().skip(2) {
            event.seq = i64::try_from(i).unwrap() + 1;
        }
        assert!(verify_chain(&acme(), &inserted).is_err());
    }

    #[test]
    fn a_trace_id_is_hashed_when_present_and_changes_nothing_when_absent() {
        let events = chain(2);
        let (untraced, traced) = (&events[0], &events[1]);
        assert!(!String::from_utf8_lossy(&untraced.canonical_bytes()).contains("trace_id"));
        assert!(
            String::from_utf8_lossy(&traced.canonical_bytes())
                .ends_with(&format!(r#","trace_id":"{:032x}"}}"#, 2))
        );
        let mut edited = events.clone();
        edited[1].trace_id = Some(format!("{:032x}", 3));
        assert_eq!(
            verify_chain(&acme(), &edited),
            Err(ChainError::Tampered { seq: 2 })
        );
        let mut stripped = events.clone();
        stripped[1].trace_id = None;
        assert_eq!(
            verify_chain(&acme(), &stripped),
            Err(ChainError::Tampered { seq: 2 })
        );
    }

    #[test]
    fn another_tenants_event_is_rejected() {
        let events = chain(2);
        let other = TenantId::try_from("globex").unwrap();
        assert!(matches!(
            verify_chain(&other, &events),
            Err(ChainError::ForeignEvent { .. })
        ));
    }
}
