//! `admission`: the SQS-triggered Lambda that admits DataHub execution requests and launches one
//! job each. Wiring only; see `admission::handler` and `shared::admission`.

use lambda_runtime::{service_fn, tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing::init_default_subscriber();
    let app = admission::build_from_env().await?;
    lambda_runtime::run(service_fn(|event| admission::handler::handle(&app, event))).await
}
