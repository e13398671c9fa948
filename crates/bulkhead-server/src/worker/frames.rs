//! The worker channel: length-prefixed (u32, big-endian) JSON frames.
//!
//! The control plane speaks first with [`ToWorker::Start`]; the worker answers
//! [`FromWorker::Ready`]. After that each request carries an id, and the worker's answers
//! (a run's events, then its end) carry the same id, so many requests share one socket.

use std::collections::BTreeSet;

use bulkhead_core::{
    ApiKeyId, Isolation, Principal, RegionName, RequestId, Role, Tenant, TenantContext, TenantId,
    TenantStatus,
};
use bulkhead_vault::HandedKeyWire;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Larger frames are refused: a run's events are small, and a worker that sends more is
/// broken or hostile.
pub const MAX_FRAME: u32 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the channel closed")]
    Closed,
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u32),
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Control plane to worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToWorker {
    /// The first frame: the tenant the worker serves and its data keys. Nothing else.
    Start {
        tenant: String,
        keys: Vec<HandedKeyWire>,
    },
    Run {
        id: u64,
        call: Box<RunCall>,
    },
    /// Any other agent work (the gateway, `/mcp`, knowledge, prompt previews): the request
    /// itself, answered by the worker's own router.
    Http {
        id: u64,
        call: Box<HttpCall>,
    },
    /// Continue a paused run whose approval was decided; answered `Done` or `Refused`.
    /// `caller` is the runtime the control plane resumes it as.
    Resume {
        id: u64,
        run_id: String,
        caller: Caller,
    },
    /// The answer to the worker's store call `call` (`FromWorker::Store`).
    StoreAnswer {
        call: u64,
        answer: Result<serde_json::Value, bulkhead_store::remote::RemoteFailure>,
    },
    Health {
        id: u64,
    },
    /// Finish what is in flight, answer, and exit.
    Drain {
        id: u64,
    },
}

/// Who the control plane authenticated, and the request they made: what the worker builds
/// the request's context from (with its own tenant; a frame never names one).
#[derive(Debug, Serialize, Deserialize)]
pub struct Caller {
    pub principal: PrincipalWire,
    pub roles: BTreeSet<Role>,
    pub request_id: String,
    pub trace_id: String,
    pub tenant: ForwardedTenant,
}

/// The worker's tenant as the control plane found it when it authenticated the request (a
/// worker has no database to read it from). No id: the tenant is the one the worker was
/// started for, and only an active tenant's request is ever forwarded.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedTenant {
    pub name: String,
    pub region: RegionName,
    pub allowed_regions: Vec<RegionName>,
    pub isolation: Isolation,
}

impl Caller {
    pub fn of(ctx: &TenantContext) -> Self {
        Self {
            principal: ctx.principal().into(),
            roles: ctx.roles().clone(),
            request_id: ctx.request_id().as_str().to_owned(),
            trace_id: ctx.request_id().trace_id().to_owned(),
            tenant: ForwardedTenant {
                name: ctx.tenant_name().to_owned(),
                region: ctx.region().clone(),
                allowed_regions: ctx.allowed_regions().to_vec(),
                isolation: ctx.isolation(),
            },
        }
    }

    pub fn request_id(&self) -> RequestId {
        RequestId::from_header_or_generate(Some(&self.request_id)).with_trace_id(&self.trace_id)
    }

    /// The record of `bound`, the worker's own tenant, as the control plane forwarded it.
    pub fn tenant_record(&self, bound: &TenantId) -> Tenant {
        Tenant {
            id: bound.clone(),
            name: self.tenant.name.clone(),
            region: self.tenant.region.clone(),
            allowed_regions: self.tenant.allowed_regions.clone(),
            isolation: self.tenant.isolation,
            status: TenantStatus::Active,
            created_at: 0,
            updated_at: 0,
        }
    }
}

/// A request the control plane authenticated and admitted, as it arrived, minus the
/// credential.
#[derive(Debug, Serialize, Deserialize)]
pub struct HttpCall {
    pub caller: Caller,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    /// Base64 (standard).
    pub body: String,
}

/// A header as frames carry it; `None` for a value that is not visible ASCII (HTTP allows
/// such bytes, and nothing Bulkhead serves needs them).
pub fn header_pair(
    (name, value): (&axum::http::HeaderName, &axum::http::HeaderValue),
) -> Option<(String, String)> {
    Some((name.to_string(), value.to_str().ok()?.to_owned()))
}

/// A run the control plane authenticated and admitted.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunCall {
    pub caller: Caller,
    pub agent: String,
    pub input: String,
    pub end_user: Option<String>,
    pub thread_id: Option<String>,
    /// Whether the caller streams (model answers are then streamed too).
    pub stream: bool,
}

/// Who the control plane authenticated.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PrincipalWire {
    ApiKey { id: String },
    User { issuer: String, subject: String },
    Operator,
    Runtime,
}

impl From<&Principal> for PrincipalWire {
    fn from(principal: &Principal) -> Self {
        match principal {
            Principal::ApiKey(id) => PrincipalWire::ApiKey {
                id: id.as_str().to_owned(),
            },
            Principal::User { issuer, subject } => PrincipalWire::User {
                issuer: issuer.clone(),
                subject: subject.clone(),
            },
            Principal::Operator => PrincipalWire::Operator,
            Principal::Runtime => PrincipalWire::Runtime,
        }
    }
}

impl PrincipalWire {
    pub fn principal(self) -> Option<Principal> {
        Some(match self {
            PrincipalWire::ApiKey { id } => Principal::ApiKey(ApiKeyId::try_from(id).ok()?),
            PrincipalWire::User { issuer, subject } => Principal::User { issuer, subject },
            PrincipalWire::Operator => Principal::Operator,
            PrincipalWire::Runtime => Principal::Runtime,
        })
    }
}

/// What the worker reports about its own confinement, checked from inside after applying it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxReport {
    pub no_new_privs: bool,
    /// `enforced`, `partial` or `unsupported` (the kernel has no landlock).
    pub landlock: String,
    /// Whether the worker could still read the key-encryption key file after confining
    /// itself (it must not); `None` when the KEK does not come from a file.
    pub kek_file_readable: Option<bool>,
    /// Whether the worker could still read the SQLite database file after confining itself
    /// (it must not: it holds every tenant's rows, and a worker has no database of its own);
    /// `None` on PostgreSQL.
    #[serde(default)]
    pub database_readable: Option<bool>,
    /// `enforced` (the deny-list of `bulkhead worker`'s seccomp filter is on every thread) or
    /// `unsupported`.
    pub seccomp: String,
    /// Whether the worker could still read process memory with `process_vm_readv` after
    /// confining itself (it must not: the control plane holds the key-encryption key).
    pub process_memory_readable: bool,
    pub memory_limit_bytes: Option<u64>,
    pub open_files_limit: Option<u64>,
}

/// Worker to control plane.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FromWorker {
    Ready {
        pid: u32,
        tenant: String,
        /// The data-key versions it holds (never the keys).
        key_versions: Vec<i64>,
        sandbox: SandboxReport,
    },
    /// The run exists (stored `running`); sent before anything else of a run.
    RunStarted {
        id: u64,
        run_id: String,
    },
    /// A streamed run's event, already in its server-sent form.
    Event {
        id: u64,
        name: String,
        data: String,
    },
    /// The run ended (completed, failed or paused); the control plane reads it from the store.
    Done {
        id: u64,
        run_id: String,
    },
    /// Refused before a run existed, with the problem code to answer.
    Refused {
        id: u64,
        code: String,
        detail: String,
    },
    /// The status and headers of an `Http` request's answer; its body follows.
    Head {
        id: u64,
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// A piece of an `Http` answer's body, base64 (standard).
    Body {
        id: u64,
        data: String,
    },
    /// The end of an `Http` answer's body.
    End {
        id: u64,
    },
    Healthy {
        id: u64,
        in_flight: usize,
    },
    Drained {
        id: u64,
    },
    /// A store call made while serving the forwarded request whose request id is `request`
    /// (`bulkhead_store::remote`); answered `ToWorker::StoreAnswer` with the same `call`.
    Store {
        call: u64,
        request: String,
        method: String,
        args: serde_json::Value,
    },
}

impl FromWorker {
    pub fn refused(id: u64, code: &str, detail: impl Into<String>) -> Self {
        FromWorker::Refused {
            id,
            code: code.to_owned(),
            detail: detail.into(),
        }
    }

    /// The request a frame answers, if any.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            FromWorker::Ready { .. } | FromWorker::Store { .. } => None,
            FromWorker::RunStarted { id, .. }
            | FromWorker::Event { id, .. }
            | FromWorker::Head { id, .. }
            | FromWorker::Body { id, .. }
            | FromWorker::End { id }
            | FromWorker::Done { id, .. }
            | FromWorker::Refused { id, .. }
            | FromWorker::Healthy { id, .. }
            | FromWorker::Drained { id } => Some(*id),
        }
    }

    /// Whether this is the last frame of its request.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            FromWorker::RunStarted { .. }
                | FromWorker::Event { .. }
                | FromWorker::Head { .. }
                | FromWorker::Body { .. }
        )
    }
}

pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    // Zeroed when dropped, whatever happens: a start frame carries keys.
    let body = zeroize::Zeroizing::new(serde_json::to_vec(message)?);
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    writer.write_u32(len).await?;
    writer.write_all(&body).await?;
    writer.flush().await?;
    Ok(())
}

pub async fn read_frame<R, T>(reader: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let len = match reader.read_u32().await {
        Ok(len) => len,
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed);
        }
        Err(error) => return Err(error.into()),
    };
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await?;
    let message = serde_json::from_slice(&body);
    // A start frame carries keys: do not leave them in a buffer.
    zeroize::Zeroize::zeroize(&mut body);
    Ok(message?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &ToWorker::Health { id: 7 })
            .await
            .unwrap();
        let read: ToWorker = read_frame(&mut b).await.unwrap();
        assert!(matches!(read, ToWorker::Health { id: 7 }));

        a.write_u32(MAX_FRAME + 1).await.unwrap();
        assert!(matches!(
            read_frame::<_, ToWorker>(&mut b).await,
            Err(FrameError::TooLarge(_))
        ));
        drop(a);
        let (mut c, mut d) = tokio::io::duplex(64);
        drop(c.shutdown().await);
        drop(c);
        assert!(matches!(
            read_frame::<_, ToWorker>(&mut d).await,
            Err(FrameError::Closed)
        ));
    }
}
