//! `bulkhead ingest`: files and folders into a tenant's knowledge base, from the command line.
//!
//! Each file is one document, committed on its own: an interrupted ingest keeps what it
//! finished, and running it again skips every file whose content is already stored (the
//! comparison is by content hash, so nothing is embedded twice).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow};
use bulkhead_core::KnowledgeBaseName;
use bulkhead_knowledge::{ContentType, Embedders, Knowledge, NewDocument};
use bulkhead_store::DocumentOutcome;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::GlobalArgs;
use crate::settings;

#[derive(Args)]
pub struct IngestArgs {
    /// The tenant whose knowledge base receives the documents.
    #[arg(long)]
    tenant: String,
    /// The knowledge base (created on first use with the configured default embedder).
    #[arg(long)]
    kb: String,
    /// Files and folders (searched recursively for .md, .markdown, .txt, .text, .html, .htm).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// No progress bar; one line per file instead.
    #[arg(long)]
    quiet: bool,
}

/// A file to ingest and the document id it gets: its path relative to the folder it was
/// found under, or its file name when given directly.
struct Source {
    path: PathBuf,
    id: String,
    content_type: ContentType,
}

pub async fn run(global: &GlobalArgs, args: IngestArgs) -> anyhow::Result<()> {
    let config = settings::load(global)?;
    let store = settings::open_store(&config, false).await?;
    let tenant_id = bulkhead_core::TenantId::try_from(args.tenant.as_str())
        .map_err(|e| anyhow!("invalid tenant id {:?}: {e}", args.tenant))?;
    let tenant = store
        .admin()
        .get_tenant(&tenant_id)
        .await?
        .with_context(|| format!("no tenant {}", args.tenant))?;
    let kb = KnowledgeBaseName::try_from(args.kb.as_str())
        .map_err(|e| anyhow!("invalid knowledge base name {:?}: {e}", args.kb))?;
    let (sources, unsupported) = collect(&args.paths)?;
    if sources.is_empty() {
        anyhow::bail!(
            "no .md, .markdown, .txt, .text, .html or .htm files under the given paths ({unsupported} other files)"
        );
    }
    let embedder_configs = config.embedders.clone();
    let embedders = tokio::task::spawn_blocking(move || Embedders::load(&embedder_configs))
        .await?
        .map_err(|e| anyhow!("[[embedders]]: {e}"))?;
    let vault = settings::open_vault(&config)?;
    let egress = bulkhead_egress::Egress::new(&config.endpoints, store.clone(), vault)
        .map_err(|e| anyhow!("[[endpoints]]: {e}"))?;
    let knowledge = Knowledge::new(config.knowledge.clone(), embedders, egress);
    let ctx = bulkhead_core::auth::operator_context(&tenant);
    let scoped = store.tenant(&ctx);

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(sources.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files  {msg}",
        )
        .map_err(|e| anyhow!("progress style: {e}"))?,
    );
    let started = Instant::now();
    let (mut created, mut replaced, mut unchanged, mut chunks) = (0, 0, 0, 0usize);
    let mut failures = Vec::new();
    for source in &sources {
        bar.set_message(source.id.clone());
        let outcome = match read_document(source) {
            Ok(document) => {
                let id = source.id.clone();
                let bar = bar.clone();
                knowledge
                    .put_document(&scoped, &kb, document, &move |done, total| {
                        bar.set_message(format!("{id} ({done}/{total} chunks)"));
                    })
                    .await
                    .map_err(|e| anyhow!("{e}"))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(written) => {
                match written.outcome {
                    DocumentOutcome::Created => created += 1,
                    DocumentOutcome::Replaced => replaced += 1,
                    DocumentOutcome::Unchanged => unchanged += 1,
                }
                chunks += written.chunks;
                if args.quiet {
                    eprintln!("{:?} {}", written.outcome, source.id);
                }
            }
            Err(e) => {
                bar.println(format!("failed: {}: {e:#}", source.path.display()));
                failures.push(source.path.display().to_string());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "ingested {} files into {}/{kb}: {created} created, {replaced} replaced, {unchanged} unchanged, {} failed, {unsupported} skipped (unsupported type); {chunks} chunks embedded in {seconds:.1} s ({:.0} chunks/s)",
        sources.len(),
        tenant.id,
        failures.len(),
        chunks as f64 / seconds.max(1e-9),
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} files failed: {}",
            failures.len(),
            failures.join(", ")
        ))
    }
}

fn read_document(source: &Source) -> anyhow::Result<NewDocument> {
    let bytes = std::fs::read(&source.path)
        .with_context(|| format!("cannot read {}", source.path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("not UTF-8 text"))?;
    Ok(NewDocument {
        id: Some(source.id.clone()),
        title: title_of(&text, source),
        content_type: source.content_type,
        metadata: serde_json::json!({"source": "bulkhead ingest"}),
        text,
    })
}

/// The first Markdown heading or HTML title, else the file name.
fn title_of(text: &str, source: &Source) -> String {
    let found = match source.content_type {
        ContentType::Markdown => text
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .map(|t| t.trim().to_owned()),
        ContentType::Html => text.find("<title>").and_then(|start| {
            let rest = &text[start + 7..];
            rest.find("</title>")
                .map(|end| rest[..end].trim().to_owned())
        }),
        ContentType::Plain => None,
    };
    found
        .filter(|t| !t.is_empty())
        .map(|t| t.chars().take(300).collect())
        .unwrap_or_else(|| {
            source
                .path
                .file_name()
                .map_or_else(|| source.id.clone(), |n| n.to_string_lossy().into_owned())
        })
}

/// The supported files under `paths`, sorted, and how many others were skipped.
fn collect(paths: &[PathBuf]) -> anyhow::Result<(Vec<Source>, usize)> {
    let mut sources = Vec::new();
    let mut unsupported = 0;
    for root in paths {
        let metadata =
            std::fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
        if metadata.is_dir() {
            let mut files = Vec::new();
            walk(root, &mut files)?;
            files.sort();
            for file in files {
                let relative = file.strip_prefix(root).unwrap_or(&file);
                push(&mut sources, &mut unsupported, &file, relative);
            }
        } else {
            let name = root.file_name().map_or(root.as_path(), Path::new);
            push(&mut sources, &mut unsupported, root, name);
        }
    }
    Ok((sources, unsupported))
}

fn push(sources: &mut Vec<Source>, unsupported: &mut usize, path: &Path, id: &Path) {
    let content_type = path
        .extension()
        .and_then(|e| e.to_str())
        .and_then(ContentType::from_extension);
    match content_type {
        Some(content_type) => sources.push(Source {
            path: path.to_path_buf(),
            id: id
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/"),
            content_type,
        }),
        None => *unsupported += 1,
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            // Hidden folders (.git and the like) are not documents.
            if !entry.file_name().to_string_lossy().starts_with('.') {
                walk(&path, files)?;
            }
        } else if kind.is_file() {
            files.push(path);
        }
    }
    Ok(())
}
