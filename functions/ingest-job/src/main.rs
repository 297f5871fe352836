//! `ingest-job`: runs one DataHub ingestion and reports it to GMS. The container entry point of the
//! serverless executor and the CLI for manual runs. Wiring only; the logic is in `shared::job`.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    cli::init_tracing();
    let code = cli::run(args).await?;
    std::process::exit(code);
}
