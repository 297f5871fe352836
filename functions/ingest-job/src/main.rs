//! `ingest-job`: runs one DataHub ingestion and reports it to GMS. The container entry point of the
//! serverless executor and the CLI for manual runs. Wiring only; the logic is in `shared::job`.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = cli::Cli::parse();
    cli::init_tracing();
    let code = match cli::run(args).await {
        Ok(code) => code,
        Err(e) => {
            // Configuration and usage problems: nothing ran, nothing was reported.
            eprintln!("ingest-job: {e:#}");
            shared::job::exit_code::USAGE
        }
    };
    std::process::exit(code);
}
