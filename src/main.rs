#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use companies_gateway::cli::{check_document, Cli};
use companies_gateway::{telemetry, Config};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("companies-gateway: config error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        let report = match check_document(&config) {
            Ok(report) => report,
            Err(e) => {
                eprintln!("companies-gateway: config error: {e}");
                return ExitCode::FAILURE;
            }
        };
        print!("{}{}", config.to_masked_toml(), report.summary);
        for warning in report.warnings {
            eprintln!("companies-gateway: warning: {warning}");
        }
        return ExitCode::SUCCESS;
    }
    if let Err(e) = telemetry::init(&config.log) {
        eprintln!("companies-gateway: {e}");
        return ExitCode::FAILURE;
    }
    match companies_gateway::run(config, &cli.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "companies-gateway stopped");
            eprintln!("companies-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
