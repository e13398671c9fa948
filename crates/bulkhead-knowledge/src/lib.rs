//! Knowledge bases: documents split into chunks, embedded, and searched by meaning and by
//! keyword over an index that holds one tenant's knowledge base and nothing else.
//!
//! **Architecture Invariant:** the tenant boundary is inside the index. Each
//! [`PartitionIndex`] is built from one tenant's knowledge base, read through that tenant's
//! `TenantStore`, and the cache keys it by tenant and knowledge base. A search reaches only
//! the partition of its caller's context; there is no shared index to filter.

pub mod chunk;
mod html;
pub mod index;

pub use chunk::{Chunk, ChunkLimits, ContentType, chunk_document, estimate_tokens};
pub use index::{IndexEntry, PartitionIndex, Scored};
