//! Prompt templates: minijinja with strict undefined variables, bounded execution, and a
//! snippet library that holds only the rendering tenant's snippets and the platform's.
//!
//! **Architecture Invariant:** user input, retrieved documents, memory and tool output enter
//! a prompt only as values of variables, never as template source, so `{{ ... }}` inside them
//! is printed, not evaluated. Only the tenant's own templates and snippets are source.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// Template execution budget: enough for any real prompt, small enough that a template that
/// loops or recurses fails fast instead of burning a CPU.
const FUEL: u64 = 200_000;
pub const PLATFORM_PREFIX: &str = "platform/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("template syntax error{}: {message}", line_suffix(*line))]
    Syntax {
        line: Option<usize>,
        message: String,
    },
    #[error("template error{}: {message}", line_suffix(*line))]
    Render {
        line: Option<usize>,
        message: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

impl PromptError {
    pub fn line(&self) -> Option<usize> {
        match self {
            PromptError::Syntax { line, .. } | PromptError::Render { line, .. } => *line,
        }
    }
}

/// The snippets a template may `{% include %}`: the tenant's own by name, the platform's as
/// `platform/<name>`. Built per tenant, so another tenant's snippet cannot be named at all.
#[derive(Debug, Clone, Default)]
pub struct PromptLibrary {
    snippets: BTreeMap<String, String>,
}

impl PromptLibrary {
    pub fn new(
        tenant_snippets: impl IntoIterator<Item = (String, String)>,
        platform_snippets: &BTreeMap<String, String>,
    ) -> Self {
        let mut snippets: BTreeMap<String, String> = tenant_snippets.into_iter().collect();
        for (name, source) in platform_snippets {
            snippets.insert(format!("{PLATFORM_PREFIX}{name}"), source.clone());
        }
        Self { snippets }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantVars {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentVars {
    pub name: String,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryTurn {
    pub role: String,
    pub content: String,
}

/// Everything a template can see. All of it is data.
#[derive(Debug, Clone, Serialize)]
pub struct PromptVariables {
    pub tenant: TenantVars,
    pub agent: AgentVars,
    /// The end user, when the caller names one. Without one, `user` is undefined (an error if
    /// used, testable with `{% if user is defined %}`) rather than printing "none".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub input: String,
    /// Retrieved passages.
    pub context: Vec<String>,
    pub memory: Vec<MemoryTurn>,
}

impl PromptVariables {
    /// What a render of `agent`'s prompt for the tenant of `ctx` sees, before retrieved
    /// passages and memory, which the caller adds when it has them. Runs and the prompt
    /// preview both start here, so a preview renders exactly what a run would.
    pub fn for_agent(
        ctx: &bulkhead_core::TenantContext,
        agent: &bulkhead_store::AgentRecord,
        user: Option<String>,
        input: String,
    ) -> Self {
        Self {
            tenant: TenantVars {
                id: ctx.tenant_id().to_string(),
                name: ctx.tenant_name().to_owned(),
            },
            agent: AgentVars {
                name: agent.name.to_string(),
                version: agent.version,
            },
            user,
            input,
            context: Vec::new(),
            memory: Vec::new(),
        }
    }
}

fn environment(library: Arc<PromptLibrary>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    // Prompts are text, not HTML.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_loader(move |name| Ok(library.snippets.get(name).cloned()));
    env
}

fn syntax(error: &minijinja::Error) -> PromptError {
    PromptError::Syntax {
        line: error.line(),
        message: error
            .detail()
            .unwrap_or(&error.kind().to_string())
            .to_owned(),
    }
}

/// Checks that `source` parses, without rendering it.
pub fn check_template(source: &str) -> Result<(), PromptError> {
    let mut env = environment(Arc::new(PromptLibrary::default()));
    env.add_template_owned("template".to_owned(), source.to_owned())
        .map_err(|e| syntax(&e))
}

/// Whether the template itself reads `name` (snippets it includes are not followed).
pub fn reads_variable(source: &str, name: &str) -> bool {
    let env = environment(Arc::new(PromptLibrary::default()));
    env.template_from_str(source)
        .is_ok_and(|t| t.undeclared_variables(false).contains(name))
}

/// Renders `source` with `variables`, including snippets from `library`. A missing variable
/// or snippet is an error naming its line.
pub fn render(
    source: &str,
    library: &PromptLibrary,
    variables: &PromptVariables,
) -> Result<String, PromptError> {
    let mut env = environment(Arc::new(library.clone()));
    env.add_template_owned("template".to_owned(), source.to_owned())
        .map_err(|e| syntax(&e))?;
    let template = env.get_template("template").map_err(|e| syntax(&e))?;
    template
        .render(variables)
        .map_err(|error| render_error(&error))
}

/// Describes a render error by its innermost cause (an include wraps the snippet's error),
/// reporting the line in the rendered template and, for a snippet, where in the snippet.
fn render_error(error: &minijinja::Error) -> PromptError {
    let mut innermost = error;
    while let Some(inner) =
        std::error::Error::source(innermost).and_then(|s| s.downcast_ref::<minijinja::Error>())
    {
        innermost = inner;
    }
    let mut message = match innermost.detail() {
        Some(detail) => format!("{}: {detail}", innermost.kind()),
        None => innermost.kind().to_string(),
    };
    if let Some(name) = innermost.name().filter(|n| *n != "template") {
        message = match innermost.line() {
            Some(line) => format!("{message} (snippet {name}, line {line})"),
            None => format!("{message} (snippet {name})"),
        };
    }
    PromptError::Render {
        line: error.line(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(input: &str) -> PromptVariables {
        PromptVariables {
            tenant: TenantVars {
                id: "acme".into(),
                name: "Acme Corp".into(),
            },
            agent: AgentVars {
                name: "triage".into(),
                version: 3,
            },
            user: Some("alice".into()),
            input: input.into(),
            context: vec!["Passage {{ tenant.id }} one".into()],
            memory: vec![MemoryTurn {
                role: "user".into(),
                content: "{% include 'secret' %}".into(),
            }],
        }
    }

    fn library() -> PromptLibrary {
        let platform = BTreeMap::from([("safety".to_owned(), "Be safe.".to_owned())]);
        PromptLibrary::new(
            [("tone".to_owned(), "Be brief, {{ user }}.".to_owned())],
            &platform,
        )
    }

    #[test]
    fn renders_variables_and_snippets() {
        let out = render(
            "You help {{ tenant.name }} as {{ agent.name }} v{{ agent.version }}. {% include 'tone' %} {% include 'platform/safety' %}\n{{ input }}",
            &library(),
            &vars("hello"),
        )
        .unwrap();
        assert_eq!(
            out,
            "You help Acme Corp as triage v3. Be brief, alice. Be safe.\nhello"
        );
    }

    #[test]
    fn data_is_never_evaluated() {
        let out = render(
            "{{ input }}|{% for p in context %}{{ p }}{% endfor %}|{{ memory[0].content }}",
            &library(),
            &vars("{{ 7 * 7 }} {% include 'tone' %} {{ tenant }}"),
        )
        .unwrap();
        assert_eq!(
            out,
            "{{ 7 * 7 }} {% include 'tone' %} {{ tenant }}|Passage {{ tenant.id }} one|{% include 'secret' %}"
        );
    }

    #[test]
    fn a_missing_variable_is_an_error_with_its_line() {
        let error = render(
            "line one\nHello {{ customer_name }}",
            &library(),
            &vars("x"),
        )
        .unwrap_err();
        assert!(
            matches!(error, PromptError::Render { line: Some(2), .. }),
            "{error:?}"
        );
        let error = render("{{ tenant.missing }}", &library(), &vars("x")).unwrap_err();
        assert_eq!(error.line(), Some(1));
    }

    #[test]
    fn an_absent_user_is_undefined_not_none() {
        let mut anonymous = vars("x");
        anonymous.user = None;
        assert!(render("Hi {{ user }}", &library(), &anonymous).is_err());
        let out = render(
            "Hi{% if user is defined %} {{ user }}{% endif %}.",
            &library(),
            &anonymous,
        )
        .unwrap();
        assert_eq!(out, "Hi.");
    }

    #[test]
    fn unknown_snippets_and_syntax_errors_are_errors() {
        let error = render("{% include 'globex-snippet' %}", &library(), &vars("x")).unwrap_err();
        assert!(matches!(error, PromptError::Render { .. }), "{error:?}");
        let error = render("{% include 'safety' %}", &library(), &vars("x")).unwrap_err();
        assert!(
            matches!(error, PromptError::Render { .. }),
            "platform snippets need their prefix: {error:?}"
        );
        let error = check_template("ok\n{% if %}").unwrap_err();
        assert!(
            matches!(error, PromptError::Syntax { line: Some(2), .. }),
            "{error:?}"
        );
        assert!(check_template("{{ input }}").is_ok());
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let error = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &library(),
            &vars("x"),
        )
        .unwrap_err();
        assert!(matches!(error, PromptError::Render { .. }), "{error:?}");
    }
}
