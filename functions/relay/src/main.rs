//! `relay`: the scheduled Lambda that feeds the pool's queue from DataHub, reports the executor's
//! status and sweeps lost runs. Wiring only; see `relay::handle` and `shared::relay`.

use lambda_runtime::{service_fn, tracing};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing::init_default_subscriber();
    let app = relay::build_from_env().await?;
    lambda_runtime::run(service_fn(|event| relay::handle(&app, event))).await
}
