//! Splitting documents into chunks: by heading, then by paragraph, then by sentence and word
//! only when a paragraph alone is too long. Every chunk stays within the token bound, keeps
//! the path of headings above it, and repeats the end of the previous chunk of its section
//! (the overlap) so a sentence cut at a boundary is still found whole somewhere.

use crate::html;

/// The formats a document may be posted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Plain,
    Markdown,
    Html,
}

impl ContentType {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "text/plain" => Some(Self::Plain),
            "text/markdown" => Some(Self::Markdown),
            "text/html" => Some(Self::Html),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "text/plain",
            Self::Markdown => "text/markdown",
            Self::Html => "text/html",
        }
    }

    /// From a file name, for `bulkhead ingest`.
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension.to_ascii_lowercase().as_str() {
            "txt" | "text" => Some(Self::Plain),
            "md" | "markdown" => Some(Self::Markdown),
            "html" | "htm" => Some(Self::Html),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Most tokens in one chunk, overlap included.
    pub max_tokens: usize,
    /// Tokens repeated from the end of the previous chunk of the same section.
    pub overlap_tokens: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        // all-MiniLM-L6-v2 reads 256 tokens; leave room for the heading path it is given.
        Self {
            max_tokens: 200,
            overlap_tokens: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// 0-based order within the document.
    pub position: usize,
    pub heading_path: Vec<String>,
    pub text: String,
}

impl Chunk {
    /// What the embedder sees: the heading path gives a short chunk its topic.
    pub fn embedding_text(&self) -> String {
        if self.heading_path.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n{}", self.heading_path.join(" > "), self.text)
        }
    }
}

/// A run of paragraphs under one heading path.
#[derive(Debug, Default)]
struct Section {
    heading_path: Vec<String>,
    paragraphs: Vec<String>,
}

/// Splits `text` into chunks; `count_tokens` is the embedder's own tokenizer (or an estimate).
pub fn chunk_document(
    content_type: ContentType,
    text: &str,
    limits: ChunkLimits,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<Chunk> {
    let sections = match content_type {
        ContentType::Plain => sections_of(text, false),
        ContentType::Markdown => sections_of(text, true),
        ContentType::Html => sections_of(&html::to_markdown(text), true),
    };
    let limits = ChunkLimits {
        max_tokens: limits.max_tokens.max(8),
        overlap_tokens: limits.overlap_tokens.min(limits.max_tokens / 2),
    };
    let mut chunks = Vec::new();
    for section in sections {
        for text in pack(&section.paragraphs, limits, count_tokens) {
            chunks.push(Chunk {
                position: chunks.len(),
                heading_path: section.heading_path.clone(),
                text,
            });
        }
    }
    chunks
}

/// Paragraphs are separated by blank lines; with `markdown`, `#` lines open sections.
fn sections_of(text: &str, markdown: bool) -> Vec<Section> {
    let mut sections = vec![Section::default()];
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut paragraph = String::new();
    let mut in_code = false;
    let flush = |paragraph: &mut String, sections: &mut Vec<Section>| {
        let trimmed = paragraph.trim();
        if !trimmed.is_empty()
            && let Some(section) = sections.last_mut()
        {
            section.paragraphs.push(trimmed.to_string());
        }
        paragraph.clear();
    };
    for line in text.lines() {
        if markdown && line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if markdown
            && !in_code
            && let Some((level, title)) = heading(line)
        {
            flush(&mut paragraph, &mut sections);
            path.retain(|(l, _)| *l < level);
            if !title.is_empty() {
                path.push((level, title));
            }
            sections.push(Section {
                heading_path: path.iter().map(|(_, t)| t.clone()).collect(),
                paragraphs: Vec::new(),
            });
        } else if line.trim().is_empty() && !in_code {
            flush(&mut paragraph, &mut sections);
        } else {
            if !paragraph.is_empty() {
                paragraph.push('\n');
            }
            paragraph.push_str(line.trim_end());
        }
    }
    flush(&mut paragraph, &mut sections);
    sections.retain(|s| !s.paragraphs.is_empty());
    sections
}

/// `## Title` → (2, "Title").
fn heading(line: &str) -> Option<(usize, String)> {
    let trimmed = line.trim_start();
    let level = trimmed.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &trimmed[level..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    // An empty heading closes the sections at its level without opening one.
    Some((level, rest.trim().trim_end_matches('#').trim().to_string()))
}

/// Packs a section's paragraphs into chunks of at most `max_tokens`, each after the first
/// starting with the previous chunk's last `overlap_tokens`.
fn pack(
    paragraphs: &[String],
    limits: ChunkLimits,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<String> {
    let pieces: Vec<(String, usize)> = paragraphs
        .iter()
        .flat_map(|p| split_to_fit(p, limits.max_tokens, count_tokens))
        .map(|piece| {
            let tokens = count_tokens(&piece);
            (piece, tokens)
        })
        .collect();
    let mut chunks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut current_tokens = 0;
    let mut overlap = String::new();
    for (piece, tokens) in &pieces {
        if !current.is_empty() && current_tokens + tokens > limits.max_tokens {
            let text = current.join("\n\n");
            overlap = tail(&text, limits.overlap_tokens, count_tokens);
            chunks.push(text);
            current.clear();
            current_tokens = 0;
        }
        if current.is_empty() && !overlap.is_empty() {
            let overlap_tokens = count_tokens(&overlap);
            // An overlap that leaves no room for the piece is dropped.
            if overlap_tokens + tokens <= limits.max_tokens {
                current.push(std::mem::take(&mut overlap));
                current_tokens = overlap_tokens;
            }
        }
        current.push(piece.clone());
        current_tokens += tokens;
    }
    if !current.is_empty() {
        chunks.push(current.join("\n\n"));
    }
    chunks
}

/// A paragraph as pieces of at most `max_tokens`: itself, else whole sentences, else words.
fn split_to_fit(
    paragraph: &str,
    max_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<String> {
    if count_tokens(paragraph) <= max_tokens {
        return vec![paragraph.to_string()];
    }
    let mut pieces = Vec::new();
    let mut current = String::new();
    for sentence in sentences(paragraph) {
        let candidate = if current.is_empty() {
            sentence.to_string()
        } else {
            format!("{current} {sentence}")
        };
        if count_tokens(&candidate) <= max_tokens {
            current = candidate;
            continue;
        }
        if !current.is_empty() {
            pieces.push(std::mem::take(&mut current));
        }
        if count_tokens(sentence) <= max_tokens {
            current = sentence.to_string();
        } else {
            pieces.extend(word_windows(sentence, max_tokens, count_tokens));
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let ends = matches!(c, '.' | '!' | '?')
            && bytes
                .get(i + 1)
                .is_none_or(|next| next.is_ascii_whitespace());
        if ends {
            let sentence = text[start..=i].trim();
            if !sentence.is_empty() {
                out.push(sentence);
            }
            start = i + 1;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Consecutive words, each window as many as fit; a single word longer than the bound is
/// cut by characters.
fn word_windows(
    text: &str,
    max_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<String> {
    let mut windows = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let candidate = if current.is_empty() {
            word.to_string()
        } else {
            format!("{current} {word}")
        };
        if count_tokens(&candidate) <= max_tokens {
            current = candidate;
            continue;
        }
        if !current.is_empty() {
            windows.push(std::mem::take(&mut current));
        }
        if count_tokens(word) <= max_tokens {
            current = word.to_string();
        } else {
            windows.extend(char_windows(word, max_tokens, count_tokens));
        }
    }
    if !current.is_empty() {
        windows.push(current);
    }
    windows
}

fn char_windows(
    word: &str,
    max_tokens: usize,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<String> {
    let mut windows = Vec::new();
    let mut current = String::new();
    for c in word.chars() {
        current.push(c);
        if count_tokens(&current) > max_tokens {
            current.pop();
            if current.is_empty() {
                // One character over the bound: nothing smaller exists.
                current.push(c);
                windows.push(std::mem::take(&mut current));
                continue;
            }
            windows.push(std::mem::take(&mut current));
            current.push(c);
        }
    }
    if !current.is_empty() {
        windows.push(current);
    }
    windows
}

/// The last words of `text` that fit in `tokens`.
fn tail(text: &str, tokens: usize, count_tokens: &dyn Fn(&str) -> usize) -> String {
    if tokens == 0 {
        return String::new();
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut start = words.len();
    while start > 0 {
        let candidate = words[start - 1..].join(" ");
        if count_tokens(&candidate) > tokens {
            break;
        }
        start -= 1;
    }
    words[start..].join(" ")
}

/// A tokenizer-free estimate for embedders that do not expose theirs: about four bytes of
/// English per token, and never fewer tokens than words.
pub fn estimate_tokens(text: &str) -> usize {
    text.split_whitespace().count().max(text.len().div_ceil(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    fn limits(max_tokens: usize, overlap_tokens: usize) -> ChunkLimits {
        ChunkLimits {
            max_tokens,
            overlap_tokens,
        }
    }

    #[test]
    fn markdown_headings_become_paths_and_never_share_a_chunk() {
        let doc = "# Handbook\nIntro line.\n\n## Refunds\nRefunds take 14 days.\n\n### Exceptions\nSale items are final.\n\n## Shipping\nWe ship weekly.\n";
        let chunks = chunk_document(ContentType::Markdown, doc, limits(50, 5), &words);
        let paths: Vec<_> = chunks.iter().map(|c| c.heading_path.join(" > ")).collect();
        assert_eq!(
            paths,
            [
                "Handbook",
                "Handbook > Refunds",
                "Handbook > Refunds > Exceptions",
                "Handbook > Shipping"
            ]
        );
        assert_eq!(chunks[2].text, "Sale items are final.");
        assert_eq!(
            chunks.iter().map(|c| c.position).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(
            chunks[1].embedding_text(),
            "Handbook > Refunds\nRefunds take 14 days."
        );
    }

    #[test]
    fn chunks_stay_within_the_bound_and_overlap() {
        let paragraph = (0..40)
            .map(|i| format!("Sentence number {i} has five words."))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk_document(ContentType::Plain, &paragraph, limits(30, 6), &words);
        assert!(chunks.len() > 5);
        for chunk in &chunks {
            assert!(words(&chunk.text) <= 30, "{} words", words(&chunk.text));
        }
        for pair in chunks.windows(2) {
            let end_of_first: Vec<_> = pair[0].text.split_whitespace().rev().take(3).collect();
            let start_of_second: Vec<_> = pair[1].text.split_whitespace().take(6).collect();
            assert!(
                end_of_first.iter().all(|w| start_of_second.contains(w)),
                "no overlap between {:?} and {:?}",
                pair[0].text,
                pair[1].text
            );
        }
        // Nothing lost: every sentence appears in some chunk.
        for i in 0..40 {
            let needle = format!("number {i} has");
            assert!(chunks.iter().any(|c| c.text.contains(&needle)), "{needle}");
        }
    }

    #[test]
    fn a_word_longer_than_the_bound_is_cut_not_dropped() {
        let long = "x".repeat(100);
        let chunks = chunk_document(ContentType::Plain, &long, limits(8, 0), &estimate_tokens);
        assert!(chunks.iter().all(|c| estimate_tokens(&c.text) <= 8));
        assert_eq!(chunks.iter().map(|c| c.text.len()).sum::<usize>(), 100);
    }

    #[test]
    fn code_fences_do_not_open_sections() {
        let doc = "# Setup\n```\n# not a heading\n\nstill code\n```\n";
        let chunks = chunk_document(ContentType::Markdown, doc, limits(50, 0), &words);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].heading_path, ["Setup"]);
        assert!(chunks[0].text.contains("# not a heading"));
    }

    #[test]
    fn html_headings_and_paragraphs_are_understood() {
        let doc = "<html><head><title>t</title><style>p{}</style></head><body><h1>Guide</h1>\
                   <p>First &amp; foremost.</p><script>alert(1)</script><h2>Part</h2><p>Body text</p></body></html>";
        let chunks = chunk_document(ContentType::Html, doc, limits(50, 0), &words);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].heading_path, ["Guide"]);
        assert_eq!(chunks[0].text, "First & foremost.");
        assert_eq!(chunks[1].heading_path, ["Guide", "Part"]);
        assert!(chunks.iter().all(|c| !c.text.contains("alert")));
    }

    #[test]
    fn empty_and_blank_documents_have_no_chunks() {
        assert!(chunk_document(ContentType::Plain, "", limits(10, 2), &words).is_empty());
        assert!(
            chunk_document(ContentType::Markdown, "\n\n  \n# \n", limits(10, 2), &words).is_empty()
        );
    }
}
