//! The command line.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "companies-gateway",
    version,
    about = "A validating reverse proxy in front of the Companies API"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, env = "GATEWAY_CONFIG", default_value = "config.toml")]
    pub config: PathBuf,

    /// Load and validate the configuration, print it with secrets masked, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// What `--check-config` says of the OpenAPI document once it compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentReport {
    /// For stdout, as TOML comments after the effective configuration.
    pub summary: String,
    /// For stderr: formats the document uses that are only annotations (not checked).
    pub warnings: Vec<String>,
}

/// Compiles the document `validation.openapi` names (or the built-in one), as start-up would; the
/// error names the key and the place in the document.
pub fn check_document(config: &crate::Config) -> Result<DocumentReport, String> {
    let api = crate::stack::load_api(config).map_err(|e| e.to_string())?;
    // The router is compiled too: start-up would refuse a template it cannot route.
    crate::route::Router::new(
        api.operations()
            .iter()
            .map(|op| (op.method(), op.template())),
    )
    .map_err(|e| format!("validation.openapi: {e}"))?;
    let labels: Vec<&str> = api.operations().iter().map(|op| op.label()).collect();
    crate::rate_limit::check_routes(&config.rate_limit, &labels)?;
    crate::shared::check(&config.shared, config.upstream.ca_file.as_deref())?;
    let source = match &config.validation.openapi {
        Some(path) => path.display().to_string(),
        None => "the built-in document".to_string(),
    };
    let n = api.operations().len();
    let summary = format!(
        "# validation.openapi: {source}: {n} operation{}\n",
        if n == 1 { "" } else { "s" }
    );
    let warnings = api
        .annotation_formats()
        .into_iter()
        .map(|f| format!("validation.openapi: format `{f}` is not checked (an annotation)"))
        .collect();
    Ok(DocumentReport { summary, warnings })
}
