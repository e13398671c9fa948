use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{RegionName, TenantId};

/// Where a tenant's agent work runs: in the shared pool, or in a worker process of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    Shared,
    Dedicated,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Shared => "shared",
            Isolation::Dedicated => "dedicated",
        }
    }
}

impl FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(Isolation::Shared),
            "dedicated" => Ok(Isolation::Dedicated),
            other => Err(format!(
                "unknown isolation {other:?}; expected shared or dedicated"
            )),
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A suspended tenant keeps its data but no credential of it authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
}

impl FromStr for TenantStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(TenantStatus::Active),
            "suspended" => Ok(TenantStatus::Suspended),
            other => Err(format!(
                "unknown status {other:?}; expected active or suspended"
            )),
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A customer organisation, as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub region: RegionName,
    /// Regions besides `region` where this tenant's data may go.
    pub allowed_regions: Vec<RegionName>,
    pub isolation: Isolation,
    pub status: TenantStatus,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// Checks a human-readable name (of a tenant, a key): trimmed, 1 to 200 characters, no
/// control characters. Returns the trimmed name.
pub fn validate_display_name(name: &str) -> Result<String, &'static str> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 200 {
        return Err("must be 1 to 200 characters");
    }
    if trimmed.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(trimmed.to_owned())
}
