//! Offline administration: works on the data directory or database directly, for operators
//! at a shell. Every change is audited like its HTTP twin, with actor `cli`.

use std::io::Write;

use anyhow::{Context, anyhow, bail};
use bulkhead_core::audit::Origin;
use bulkhead_core::auth::{generate_admin_token, generate_api_key, hash_secret};
use bulkhead_core::timestamp::to_rfc3339;
use bulkhead_core::{
    ApiKeyId, Isolation, RegionName, Role, Tenant, TenantId, TenantStatus, validate_display_name,
};
use bulkhead_store::{ApiKeyInfo, NewTenant, Store, TenantPatch};
use comfy_table::Table;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::serve::ADMIN_TOKEN_SETTING;
use crate::{GlobalArgs, settings};

#[derive(clap::Args)]
pub struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        id: String,
        #[arg(long)]
        name: String,
        /// Home region (default: the first configured region).
        #[arg(long)]
        region: Option<String>,
        #[arg(long, default_value = "shared")]
        isolation: Isolation,
        /// A region besides the home region where the tenant's data may go; repeatable.
        #[arg(long = "allow-region")]
        allowed_regions: Vec<String>,
        #[command(flatten)]
        output: Output,
    },
    /// List tenants.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this tenant id.
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Show one tenant.
    Show {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Suspend a tenant: every credential of it stops working at once.
    Suspend {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Reactivate a suspended tenant.
    Reactivate {
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Delete a tenant with its keys and issuers; its audit trail records the deletion.
    Delete {
        id: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Create an API key; the key is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// owner, admin, approver, developer, viewer or agent.
        #[arg(long)]
        role: Role,
        #[command(flatten)]
        output: Output,
    },
    /// List a tenant's API keys (metadata only).
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        output: Output,
    },
    /// Revoke an API key; it stops working on the next request.
    Revoke {
        #[arg(long)]
        tenant: String,
        key_id: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(clap::Subcommand)]
pub enum AdminTokenCommand {
    /// Replace the admin token with a new one, printed once. Running servers pick it up on
    /// restart. Ignored while BULKHEAD_ADMIN_TOKEN is set, which always wins.
    Rotate,
}

fn tenant_id(id: &str) -> anyhow::Result<TenantId> {
    TenantId::try_from(id).map_err(|e| anyhow!("invalid tenant id {id:?}: {e}"))
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    writeln!(std::io::stdout().lock(), "{table}")?;
    Ok(())
}

fn tenant_json(t: &Tenant) -> serde_json::Value {
    json!({
        "id": t.id,
        "name": t.name,
        "region": t.region,
        "allowed_regions": t.allowed_regions,
        "isolation": t.isolation,
        "status": t.status,
        "created_at": to_rfc3339(t.created_at),
        "updated_at": to_rfc3339(t.updated_at),
    })
}

fn tenant_row(t: &Tenant) -> Vec<String> {
    vec![
        t.id.to_string(),
        t.name.clone(),
        t.region.to_string(),
        t.isolation.to_string(),
        t.status.to_string(),
        to_rfc3339(t.created_at),
    ]
}

const TENANT_HEADER: &[&str] = &["ID", "NAME", "REGION", "ISOLATION", "STATUS", "CREATED"];

fn show_tenants(tenants: &[Tenant], output: &Output) -> anyhow::Result<()> {
    if output.json {
        print_json(&serde_json::Value::Array(
            tenants.iter().map(tenant_json).collect(),
        ))
    } else {
        print_table(TENANT_HEADER, tenants.iter().map(tenant_row).collect())
    }
}

fn show_tenant(tenant: &Tenant, output: &Output) -> anyhow::Result<()> {
    if output.json {
        print_json(&tenant_json(tenant))
    } else {
        print_table(TENANT_HEADER, vec![tenant_row(tenant)])
    }
}

async fn open(global: &GlobalArgs) -> anyhow::Result<(bulkhead_core::config::Config, Store)> {
    let config = settings::load(global)?;
    let store = settings::open_store(&config, false).await?;
    Ok((config, store))
}

pub async fn tenant(global: &GlobalArgs, command: TenantCommand) -> anyhow::Result<()> {
    let (config, store) = open(global).await?;
    let admin = store.admin();
    let result = match command {
        TenantCommand::Create {
            id,
            name,
            region,
            isolation,
            allowed_regions,
            output,
        } => {
            let configured = |r: &str| {
                let region =
                    RegionName::try_from(r).map_err(|e| anyhow!("invalid region {r:?}: {e}"))?;
                if !config.regions.contains(&region) {
                    bail!("unknown region {region}; configured: {:?}", config.regions);
                }
                Ok(region)
            };
            let region = match region {
                None => config
                    .regions
                    .first()
                    .cloned()
                    .context("no region is configured")?,
                Some(r) => configured(&r)?,
            };
            let allowed_regions = allowed_regions
                .iter()
                .map(|r| configured(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let new = NewTenant {
                id: tenant_id(&id)?,
                name: validate_display_name(&name).map_err(|e| anyhow!("invalid name: {e}"))?,
                region,
                allowed_regions,
                isolation,
            };
            let tenant = admin
                .create_tenant(new, &Origin::cli())
                .await
                .with_context(|| format!("cannot create tenant {id}"))?;
            show_tenant(&tenant, &output)
        }
        TenantCommand::List {
            limit,
            after,
            output,
        } => {
            let after = after.as_deref().map(tenant_id).transpose()?;
            let page = admin
                .list_tenants(after.as_ref(), limit.clamp(1, 10_000))
                .await?;
            show_tenants(&page.items, &output)?;
            if let (Some(next), false) = (&page.next_after, output.json) {
                writeln!(std::io::stdout().lock(), "more: --after {next}")?;
            }
            Ok(())
        }
        TenantCommand::Show { id, output } => {
            let tenant = admin
                .get_tenant(&tenant_id(&id)?)
                .await?
                .with_context(|| format!("no tenant {id}"))?;
            show_tenant(&tenant, &output)
        }
        TenantCommand::Suspend { id, output } => {
            set_status(&store, &id, TenantStatus::Suspended, &output).await
        }
        TenantCommand::Reactivate { id, output } => {
            set_status(&store, &id, TenantStatus::Active, &output).await
        }
        TenantCommand::Delete { id, output } => {
            let receipt = admin
                .delete_tenant(&tenant_id(&id)?, &Origin::cli())
                .await?
                .with_context(|| format!("no tenant {id}"))?;
            let value = json!({
                "tenant_id": receipt.tenant_id,
                "deleted_at": to_rfc3339(receipt.deleted_at),
                "data_keys_destroyed": receipt.data_keys_destroyed,
                "credentials_destroyed": receipt.credentials_destroyed,
                "api_keys_deleted": receipt.api_keys_deleted,
                "issuers_deleted": receipt.issuers_deleted,
                "audit_seq": receipt.audit_seq,
            });
            if output.json {
                print_json(&value)
            } else {
                writeln!(
                    std::io::stdout().lock(),
                    "deleted tenant {}: destroyed {} data keys and {} credentials, {} API keys, {} issuers; audit event #{}",
                    receipt.tenant_id,
                    receipt.data_keys_destroyed,
                    receipt.credentials_destroyed,
                    receipt.api_keys_deleted,
                    receipt.issuers_deleted,
                    receipt.audit_seq
                )?;
                Ok(())
            }
        }
    };
    store.close().await;
    result
}

async fn set_status(
    store: &Store,
    id: &str,
    status: TenantStatus,
    output: &Output,
) -> anyhow::Result<()> {
    let patch = TenantPatch {
        status: Some(status),
        ..TenantPatch::default()
    };
    let tenant = store
        .admin()
        .update_tenant(&tenant_id(id)?, patch, &Origin::cli())
        .await?
        .with_context(|| format!("no tenant {id}"))?;
    show_tenant(&tenant, output)
}

fn key_json(k: &ApiKeyInfo) -> serde_json::Value {
    json!({
        "id": k.id,
        "tenant_id": k.tenant_id,
        "name": k.name,
        "role": k.role,
        "prefix": k.display_prefix,
        "created_at": to_rfc3339(k.created_at),
        "revoked_at": k.revoked_at.map(to_rfc3339),
    })
}

const KEY_HEADER: &[&str] = &["ID", "NAME", "ROLE", "PREFIX", "CREATED", "REVOKED"];

fn key_row(k: &ApiKeyInfo) -> Vec<String> {
    vec![
        k.id.to_string(),
        k.name.clone(),
        k.role.to_string(),
        k.display_prefix.clone(),
        to_rfc3339(k.created_at),
        k.revoked_at.map(to_rfc3339).unwrap_or_default(),
    ]
}

pub async fn key(global: &GlobalArgs, command: KeyCommand) -> anyhow::Result<()> {
    let (_config, store) = open(global).await?;
    let admin = store.admin();
    let result = match command {
        KeyCommand::Create {
            tenant,
            name,
            role,
            output,
        } => {
            let name = validate_display_name(&name).map_err(|e| anyhow!("invalid name: {e}"))?;
            let generated = generate_api_key();
            let info = admin
                .create_api_key(
                    &tenant_id(&tenant)?,
                    &name,
                    role,
                    &generated,
                    &Origin::cli(),
                )
                .await?
                .with_context(|| format!("no tenant {tenant}"))?;
            if output.json {
                let mut value = key_json(&info);
                value["key"] = json!(generated.key.expose_secret());
                print_json(&value)
            } else {
                print_table(KEY_HEADER, vec![key_row(&info)])?;
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "key (shown only now): {}",
                    generated.key.expose_secret()
                )?;
                Ok(())
            }
        }
        KeyCommand::List { tenant, output } => {
            let keys = admin
                .list_api_keys(&tenant_id(&tenant)?)
                .await?
                .with_context(|| format!("no tenant {tenant}"))?;
            if output.json {
                print_json(&serde_json::Value::Array(
                    keys.iter().map(key_json).collect(),
                ))
            } else {
                print_table(KEY_HEADER, keys.iter().map(key_row).collect())
            }
        }
        KeyCommand::Revoke {
            tenant,
            key_id,
            output,
        } => {
            let key_id =
                ApiKeyId::try_from(key_id.as_str()).map_err(|e| anyhow!("invalid key id: {e}"))?;
            let info = admin
                .revoke_api_key(&tenant_id(&tenant)?, &key_id, &Origin::cli())
                .await?
                .with_context(|| format!("tenant {tenant} has no key {key_id}"))?;
            if output.json {
                print_json(&key_json(&info))
            } else {
                print_table(KEY_HEADER, vec![key_row(&info)])
            }
        }
    };
    store.close().await;
    result
}

pub async fn admin_token(global: &GlobalArgs, command: AdminTokenCommand) -> anyhow::Result<()> {
    let (config, store) = open(global).await?;
    match command {
        AdminTokenCommand::Rotate => {
            if config.admin_token.is_some() {
                bail!(
                    "BULKHEAD_ADMIN_TOKEN (or admin_token in the config) is set and always wins; change it there"
                );
            }
            let token = generate_admin_token();
            store
                .admin()
                .set_setting(ADMIN_TOKEN_SETTING, &hash_secret(token.expose_secret()))
                .await?;
            writeln!(
                std::io::stdout().lock(),
                "new admin token (shown only now): {}",
                token.expose_secret()
            )?;
        }
    }
    store.close().await;
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum CredentialCommand {
    /// Store a tenant's secret for a connector (a new version if one exists). The secret is
    /// read from standard input, or from --secret-file; never from the command line, where
    /// it would land in shell history and the process list.
    Set {
        #[arg(long)]
        tenant: String,
        connector: String,
        /// Read the secret from this file instead of standard input.
        #[arg(long)]
        secret_file: Option<std::path::PathBuf>,
        /// Non-secret metadata, repeatable: --field base_url=https://api.example.com
        #[arg(long = "field", value_parser = parse_field)]
        fields: Vec<(String, String)>,
        #[command(flatten)]
        output: Output,
    },
    /// List a tenant's credentials (metadata only).
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        output: Output,
    },
    /// Open every credential of a tenant with the current keys and report how many open
    /// (the secrets themselves are never printed). Exits non-zero if any does not.
    Check {
        #[arg(long)]
        tenant: String,
    },
    /// Delete a tenant's credential for a connector.
    Delete {
        #[arg(long)]
        tenant: String,
        connector: String,
    },
}

fn parse_field(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {value:?}"))
}

fn read_secret(file: Option<&std::path::Path>) -> anyhow::Result<secrecy::SecretString> {
    use std::io::{IsTerminal, Read};
    let mut text = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the secret from standard input; finish with Ctrl-D");
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            text
        }
    };
    // One trailing newline is how files and `echo` end; it is not part of the secret.
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        bail!("the secret is empty");
    }
    Ok(secrecy::SecretString::from(text))
}

fn credential_json(r: &bulkhead_store::CredentialRecord) -> serde_json::Value {
    json!({
        "connector": r.connector,
        "version": r.version,
        "fields": r.fields,
        "created_at": to_rfc3339(r.created_at),
        "updated_at": to_rfc3339(r.updated_at),
    })
}

const CREDENTIAL_HEADER: &[&str] = &["CONNECTOR", "VERSION", "FIELDS", "UPDATED"];

fn credential_row(r: &bulkhead_store::CredentialRecord) -> Vec<String> {
    vec![
        r.connector.to_string(),
        r.version.to_string(),
        r.fields.to_string(),
        to_rfc3339(r.updated_at),
    ]
}

pub async fn credential(global: &GlobalArgs, command: CredentialCommand) -> anyhow::Result<()> {
    let (config, store) = open(global).await?;
    let tenant_arg = match &command {
        CredentialCommand::Set { tenant, .. }
        | CredentialCommand::List { tenant, .. }
        | CredentialCommand::Check { tenant }
        | CredentialCommand::Delete { tenant, .. } => tenant.clone(),
    };
    let tenant = store
        .admin()
        .get_tenant(&tenant_id(&tenant_arg)?)
        .await?
        .with_context(|| format!("no tenant {tenant_arg}"))?;
    let ctx = bulkhead_core::auth::operator_context(&tenant);
    let scoped = store.tenant(&ctx);
    let connector_name = |name: &str| {
        bulkhead_core::ConnectorName::try_from(name)
            .map_err(|e| anyhow!("invalid connector name {name:?}: {e}"))
    };
    let result = match command {
        CredentialCommand::Set {
            connector,
            secret_file,
            fields,
            output,
            ..
        } => {
            let connector = connector_name(&connector)?;
            let secret = read_secret(secret_file.as_deref())?;
            let fields: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let vault = settings::open_vault(&config)?;
            let record = vault
                .put(
                    &scoped,
                    &connector,
                    &secret,
                    serde_json::Value::Object(fields),
                )
                .await?;
            if output.json {
                print_json(&credential_json(&record))
            } else {
                print_table(CREDENTIAL_HEADER, vec![credential_row(&record)])
            }
        }
        CredentialCommand::List { output, .. } => {
            let records = scoped.credentials().await?;
            if output.json {
                print_json(&serde_json::Value::Array(
                    records.iter().map(credential_json).collect(),
                ))
            } else {
                print_table(
                    CREDENTIAL_HEADER,
                    records.iter().map(credential_row).collect(),
                )
            }
        }
        CredentialCommand::Check { .. } => {
            let vault = settings::open_vault(&config)?;
            let records = scoped.credentials().await?;
            let mut failed = Vec::new();
            for record in &records {
                match vault.reveal(&scoped, &record.connector).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {}
                    Err(error) => failed.push(format!("{}: {error}", record.connector)),
                }
            }
            writeln!(
                std::io::stdout().lock(),
                "{} of {} credentials of {tenant_arg} open",
                records.len() - failed.len(),
                records.len()
            )?;
            if failed.is_empty() {
                Ok(())
            } else {
                Err(anyhow!("these do not open: {}", failed.join("; ")))
            }
        }
        CredentialCommand::Delete { connector, .. } => {
            let connector = connector_name(&connector)?;
            if !scoped.delete_credential(&connector).await? {
                bail!("tenant {tenant_arg} has no credential {connector}");
            }
            writeln!(
                std::io::stdout().lock(),
                "deleted credential {connector} of tenant {tenant_arg}"
            )?;
            Ok(())
        }
    };
    store.close().await;
    result
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Make a new key-encryption key current and re-wrap every tenant's data key with it.
    /// Safe while servers run; if interrupted, run it again: it resumes (re-wrapping what is
    /// left) instead of starting another rotation.
    RotateKek,
    /// Re-encrypt one tenant's secrets under a new data key and destroy the old key. Safe
    /// while servers run; if interrupted, run it again to finish.
    RotateDek {
        #[arg(long)]
        tenant: String,
    },
}

pub async fn keys(global: &GlobalArgs, command: KeysCommand) -> anyhow::Result<()> {
    let (config, store) = open(global).await?;
    let vault = settings::open_vault(&config)?;
    let mut out = std::io::stdout().lock();
    match command {
        KeysCommand::RotateKek => {
            let admin = store.admin();
            let pending = admin.data_keys_not_wrapped_by(&vault.kek_id()).await?.len();
            if pending == 0 {
                let provider = settings::local_key_file_provider(&config)?;
                let new_id = provider.add_current_key()?;
                writeln!(out, "new key-encryption key {new_id} is current")?;
            } else {
                writeln!(
                    out,
                    "resuming: {pending} data keys are not yet wrapped by {}",
                    vault.kek_id()
                )?;
            }
            let rewrapped = vault.rewrap_all(&admin, &Origin::cli()).await?;
            writeln!(
                out,
                "re-wrapped {rewrapped} data keys with {}",
                vault.kek_id()
            )?;
        }
        KeysCommand::RotateDek { tenant } => {
            let record = store
                .admin()
                .get_tenant(&tenant_id(&tenant)?)
                .await?
                .with_context(|| format!("no tenant {tenant}"))?;
            let ctx = bulkhead_core::auth::operator_context(&record);
            let report = vault.rotate_data_key(&store.tenant(&ctx)).await?;
            if report.to_dek_version == 0 {
                writeln!(
                    out,
                    "tenant {tenant} has no data key yet; nothing to rotate"
                )?;
            } else {
                writeln!(
                    out,
                    "{} data key of {tenant}: version {} -> {}, {} secrets re-sealed, {} old key versions destroyed",
                    if report.resumed {
                        "finished rotating the"
                    } else {
                        "rotated the"
                    },
                    report.from_dek_version,
                    report.to_dek_version,
                    report.resealed,
                    report.retired
                )?;
            }
        }
    }
    drop(out);
    store.close().await;
    Ok(())
}
