//! Self-tests of the test support: the GMS emulator and the throw-away PostgreSQL, with real parts
//! where they exist (a real PostgreSQL server, the real `datahub` CLI, DataHub's schema classes).
//!
//! Tests that need the `datahub` venv skip (with a note on stderr) when `DATAHUB_TEST_VENV` is
//! unset; tests that need PostgreSQL skip when no server binaries are found.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use integration_tests::{GmsEmulator, Postgres, Route, postgres, test_venv, validate_proposals};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "test-token-123";
/// Every character a naive quoting would trip over: `$`, backslash, both quotes, `#`, `:`, spaces.
const NASTY_PASSWORD: &str = "pa$s\\w'o\"rd #:x y";
const ROLE: &str = "ingest_user";
const DATABASE: &str = "shop";
const CLI_TIMEOUT: Duration = Duration::from_secs(300);

fn pg_or_skip(test: &str) -> Option<Postgres> {
    if let Err(e) = postgres::bin_dir() {
        eprintln!("SKIPPED {test}: {e}");
        return None;
    }
    Some(Postgres::start().expect("start a throw-away PostgreSQL"))
}

/// The role (nasty password) owning database `shop` with schemas `sales`, `hr` and 3 tables.
fn seed_shop(pg: &Postgres) {
    pg.create_role(ROLE, NASTY_PASSWORD);
    pg.create_database(DATABASE, ROLE);
    pg.psql(
        DATABASE,
        &format!(
            "SET ROLE {ROLE};
             CREATE SCHEMA sales;
             CREATE SCHEMA hr;
             CREATE TABLE sales.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL,
                                        total numeric(12,2), placed_at timestamptz);
             COMMENT ON TABLE sales.orders IS 'One row per order';
             CREATE TABLE sales.customers (id bigint PRIMARY KEY, email text UNIQUE, name text);
             CREATE TABLE hr.employees (id serial PRIMARY KEY, full_name text NOT NULL,
                                        hired_on date);
             INSERT INTO sales.customers VALUES (1, 'a@example.com', 'Ada');"
        ),
    )
    .expect("create schemas and tables");
}

const EXPECTED_TABLES: [&str; 3] = ["sales.orders", "sales.customers", "hr.employees"];

fn dataset_urn(table: &str) -> String {
    format!("urn:li:dataset:(urn:li:dataPlatform:postgres,{DATABASE}.{table},PROD)")
}

#[test]
fn postgres_quotes_passwords_and_requires_them_over_tcp() {
    let Some(pg) = pg_or_skip("postgres_quotes_passwords_and_requires_them_over_tcp") else {
        return;
    };
    seed_shop(&pg);

    let tables = pg
        .psql(
            DATABASE,
            "SELECT table_schema || '.' || table_name FROM information_schema.tables \
             WHERE table_schema IN ('sales', 'hr') ORDER BY 1;",
        )
        .expect("list tables");
    assert_eq!(tables.lines().collect::<BTreeSet<_>>(), EXPECTED_TABLES.into_iter().collect::<BTreeSet<_>>());

    // The password arrived intact and TCP logins really check it (scram-sha-256).
    let who = pg
        .psql_tcp(ROLE, NASTY_PASSWORD, DATABASE, "SELECT current_user;")
        .expect("log in over TCP with the right password");
    assert_eq!(who.trim(), ROLE);
    let wrong = pg.psql_tcp(ROLE, "pa$s\\w'o\"rd #:x", DATABASE, "SELECT 1;");
    let err = wrong.expect_err("a wrong password must be refused");
    assert!(err.contains("password authentication failed"), "{err}");
}

async fn run_cli(venv: &Path, recipe: &str, envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(venv.join("bin/datahub"));
    cmd.args(["ingest", "run", "-c", "-"])
        .env("DATAHUB_TELEMETRY_ENABLED", "false")
        .env_remove("DATAHUB_GMS_URL")
        .env_remove("DATAHUB_GMS_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the datahub CLI");
    let mut stdin = child.stdin.take().expect("the CLI's stdin is piped");
    stdin.write_all(recipe.as_bytes()).await.expect("write the recipe to the CLI");
    drop(stdin);
    tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .expect("the datahub CLI finished in time")
        .expect("wait for the datahub CLI")
}

#[tokio::test(flavor = "multi_thread")]
async fn real_cli_ingests_postgres_into_the_emulator() {
    let test = "real_cli_ingests_postgres_into_the_emulator";
    let Some(venv) = test_venv(test) else { return };
    let Some(pg) = pg_or_skip(test) else { return };
    seed_shop(&pg);
    let gms = GmsEmulator::start(TOKEN).await;

    let recipe = format!(
        r#"source:
  type: postgres
  config:
    host_port: "{host_port}"
    database: {DATABASE}
    username: {ROLE}
    password: "${{PG_PASSWORD}}"
sink:
  type: datahub-rest
  config:
    server: "{server}"
    token: "{TOKEN}"
"#,
        host_port = pg.host_port(),
        server = gms.url(),
    );
    let out = run_cli(&venv, &recipe, &[("PG_PASSWORD", NASTY_PASSWORD)]).await;
    let logs = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "datahub ingest failed ({}):\n{logs}", out.status);

    let urns = gms.dataset_urns();
    for table in EXPECTED_TABLES {
        assert!(urns.contains(&dataset_urn(table)), "{} missing from {urns:#?}\n{logs}", dataset_urn(table));
    }
    let requests = gms.requests();
    for r in &requests {
        let query = r.query.as_deref().map(|q| format!("?{q}")).unwrap_or_default();
        eprintln!("sink called: {} {}{query} -> {}", r.method, r.path, r.status);
    }
    assert!(requests.iter().all(|r| r.status != 401), "the sink authenticated every request");
    assert!(
        requests.iter().all(|r| r.status < 300 || r.route == Route::GetAspect),
        "unexpected failures: {:#?}",
        requests
            .iter()
            .filter(|r| r.status >= 300)
            .map(|r| (&r.method, &r.path, &r.query, r.status))
            .collect::<Vec<_>>()
    );
    assert!(gms.count(Route::Config) >= 1, "the sink read /config");
    assert!(gms.count(Route::IngestProposalBatch) >= 1, "the sink sent batches");
    // What the real sink sent is valid for DataHub's schema.
    let bodies: Vec<String> = requests
        .iter()
        .filter(|r| matches!(r.route, Route::IngestProposal | Route::IngestProposalBatch))
        .map(|r| r.body.clone())
        .collect();
    validate_proposals(&venv.join("bin/python"), &bodies).expect("valid proposals");
}

/// The shipped demo recipe runs with the real CLI from the repository root and writes its 20 datasets.
#[tokio::test]
async fn demo_recipe_runs_with_real_cli() {
    let Some(venv) = test_venv("demo_recipe_runs_with_real_cli") else {
        return;
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out_dir = tempfile::tempdir().expect("a temporary directory");
    // The shipped recipe with its input made absolute; it writes demo-output.json in the cwd.
    let recipe = std::fs::read_to_string(examples.join("demo-recipe.yml")).expect("the demo recipe");
    let data = examples.join("demo-metadata.json");
    let recipe = recipe.replace("examples/demo-metadata.json", &data.display().to_string());
    std::fs::write(out_dir.path().join("demo.yml"), recipe).expect("write the recipe");
    let output = out_dir.path().join("demo-output.json");
    let out = tokio::process::Command::new(venv.join("bin/datahub"))
        .args(["ingest", "run", "-c", "demo.yml"])
        .current_dir(out_dir.path())
        .env("DATAHUB_TELEMETRY_ENABLED", "false")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLI_TIMEOUT, out)
        .await
        .expect("the datahub CLI finished in time")
        .expect("run the datahub CLI");
    assert!(
        out.status.success(),
        "demo recipe failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&output).expect("the file sink wrote demo-output.json"))
            .expect("the output is a JSON array");
    let datasets: BTreeSet<&str> = written
        .iter()
        .filter(|mcp| mcp["entityType"] == "dataset")
        .filter_map(|mcp| mcp["entityUrn"].as_str())
        .collect();
    assert_eq!(datasets.len(), 20, "{datasets:#?}");
}

// -------------------------------------------------------------------------------------------------
// The emulator alone, driven by a plain HTTP client.

fn result_body(exec_id: &str, status: &str) -> String {
    let value = json!({"status": status, "startTimeMs": 1_796_321_289_383_u64}).to_string();
    json!({
        "proposal": {
            "entityType": "dataHubExecutionRequest",
            "entityKeyAspect": {"value": json!({"id": exec_id}).to_string(), "contentType": "application/json"},
            "changeType": "UPSERT",
            "aspectName": "dataHubExecutionRequestResult",
            "aspect": {"value": value, "contentType": "application/json"},
            "systemMetadata": {"lastObserved": 1_796_321_289_383_u64, "runId": "no-run-id-provided",
                               "lastRunId": "no-run-id-provided"}
        },
        "async": "false"
    })
    .to_string()
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(gms: &GmsEmulator) -> Client {
        Client { http: reqwest::Client::new(), base: gms.url() }
    }

    async fn post(&self, path: &str, body: String, token: Option<&str>) -> (u16, Value) {
        let mut req =
            self.http.post(format!("{}{path}", self.base)).header("content-type", "application/json").body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("POST to the emulator");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("a JSON answer"))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("GET from the emulator");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("a JSON answer"))
    }
}

const INGEST: &str = "/aspects?action=ingestProposal";

#[tokio::test]
async fn emulator_authenticates_and_records_everything() {
    let gms = GmsEmulator::start(TOKEN).await;
    assert!(gms.url().starts_with("http://127.0.0.1:") && !gms.url().ends_with('/'));
    let c = Client::new(&gms);

    let (status, body) = c.get("/config", None).await;
    assert_eq!((status, body["status"].as_u64()), (401, Some(401)));
    let (status, _) = c.get("/config", Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, config) = c.get("/config", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(config["noCode"], "true");

    let (status, body) = c.get("/nope?x=1", Some(TOKEN)).await;
    assert_eq!((status, body["status"].as_u64()), (404, Some(404)));

    let requests = gms.requests();
    assert_eq!(requests.len(), 4, "rejected requests are recorded too");
    assert_eq!(requests.iter().map(|r| r.status).collect::<Vec<_>>(), [401, 401, 200, 404]);
    assert_eq!(requests[2].header("Authorization"), Some("Bearer test-token-123"));
    assert_eq!(requests[3].route, Route::Unknown);
    assert_eq!((requests[3].path.as_str(), requests[3].query.as_deref()), ("/nope", Some("x=1")));
    assert_eq!(gms.count(Route::Config), 3);
    assert_eq!(gms.count(Route::Any), 4);
}

#[tokio::test]
async fn emulator_injects_faults_limits_bodies_and_reports_statuses_on_events() {
    let gms = GmsEmulator::start(TOKEN).await;
    let c = Client::new(&gms);

    // Fault injection: exactly the next n requests of that route, recorded.
    gms.fail_next(Route::IngestProposal, 2, 503);
    for expected in [503, 503, 200] {
        let (status, body) = c.post(INGEST, result_body("e1", "RUNNING"), Some(TOKEN)).await;
        assert_eq!(status, expected, "{body}");
        if expected != 200 {
            assert_eq!(body["status"].as_u64(), Some(u64::from(expected)));
        }
    }
    assert_eq!(gms.count(Route::IngestProposal), 3);
    assert_eq!(gms.execution_results("e1").len(), 1, "failed requests are not stored");
    gms.fail_next(Route::Any, 1, 500);
    assert_eq!(c.get("/config", Some(TOKEN)).await.0, 500);
    assert_eq!(c.get("/config", Some(TOKEN)).await.0, 200);

    // Body limit.
    gms.set_max_body(Some(64));
    assert_eq!(c.post(INGEST, result_body("e1", "RUNNING"), Some(TOKEN)).await.0, 413);
    gms.set_max_body(None);
    assert_eq!(gms.requests().last().map(|r| r.status), Some(413));

    // wait_for_status wakes on the write, while the writes are slow.
    gms.set_latency(Duration::from_millis(300));
    let writer = async {
        for status in ["RUNNING", "SUCCESS"] {
            let (code, _) = c.post(INGEST, result_body("e2", status), Some(TOKEN)).await;
            assert_eq!(code, 200);
        }
    };
    let (done, ()) = tokio::join!(gms.wait_for_status("e2", "SUCCESS", Duration::from_secs(10)), writer);
    assert_eq!(done.expect("SUCCESS arrives")["status"], "SUCCESS");
    gms.set_latency(Duration::ZERO);
    let statuses: Vec<Value> = gms.execution_results("e2").iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [json!("RUNNING"), json!("SUCCESS")]);
    assert_eq!(gms.result_bodies("e2"), [result_body("e2", "RUNNING"), result_body("e2", "SUCCESS")]);
    let err =
        gms.wait_for_status("e2", "FAILURE", Duration::from_millis(50)).await.expect_err("no FAILURE was written");
    assert!(err.contains("RUNNING") && err.contains("SUCCESS"), "{err}");

    // The execution request's urn was derived from the key aspect.
    assert!(gms.aspect("urn:li:dataHubExecutionRequest:e2", "dataHubExecutionRequestResult").is_some());
    assert_eq!(gms.proposals().len(), 3);

    // Malformed proposals are refused (422) and not stored.
    let bad = json!({"proposal": {"entityType": "dataset", "changeType": "UPSERT", "bogus": 1}, "async": "false"});
    assert_eq!(c.post(INGEST, bad.to_string(), Some(TOKEN)).await.0, 422);
    assert_eq!(gms.proposals().len(), 3);
}

#[tokio::test]
async fn emulator_serves_secrets_batch_reads_and_datasets() {
    let gms = GmsEmulator::start(TOKEN).await;
    let c = Client::new(&gms);

    gms.set_secret("PG_PASSWORD", "s3cret");
    let query = json!({
        "query": "query getSecretValues($input: GetSecretValuesInput!) {\n getSecretValues(input: $input) { name value } }",
        "variables": {"input": {"secrets": ["PG_PASSWORD", "MISSING"]}}
    });
    let (status, body) = c.post("/api/graphql", query.to_string(), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"data": {"getSecretValues": [{"name": "PG_PASSWORD", "value": "s3cret"}]}}));
    let (status, body) =
        c.post("/api/graphql", json!({"query": "{ me { corpUser { urn } } }"}).to_string(), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(body["errors"].is_array(), "{body}");
    assert_eq!(gms.count(Route::GraphQl), 2);

    let urn = "urn:li:dataHubExecutionRequest:abc";
    gms.put_aspect(
        urn,
        "dataHubExecutionRequestInput",
        json!({"task": "RUN_INGEST", "args": {"recipe": "{}"}, "executorId": "default"}),
    );
    let read = json!({
        "urns": [urn, "urn:li:dataHubExecutionRequest:unknown"],
        "aspectNames": ["dataHubExecutionRequestInput", "dataHubExecutionRequestKey"],
        "withSystemMetadata": false
    });
    let (status, body) =
        c.post("/openapi/v2/entity/batch/dataHubExecutionRequest", read.to_string(), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"entities": [{"urn": urn, "aspects": {
            "dataHubExecutionRequestInput": {"value": {"task": "RUN_INGEST", "args": {"recipe": "{}"}, "executorId": "default"}},
            "dataHubExecutionRequestKey": {"value": {"id": "abc"}}
        }}]})
    );
    let signal = json!({"urns": [urn], "aspectNames": ["dataHubExecutionRequestSignal"]});
    let (_, body) = c.post("/openapi/v2/entity/batch/dataHubExecutionRequest", signal.to_string(), Some(TOKEN)).await;
    assert_eq!(body, json!({"entities": []}));
    gms.fail_next(Route::OpenApiBatch, 1, 500);
    let (status, _) = c.post("/openapi/v2/entity/batch/dataHubExecutionRequest", signal.to_string(), Some(TOKEN)).await;
    assert_eq!(status, 500);

    // Datasets from both a proposal batch and an MCE.
    let props = json!({"value": "{\"name\": \"orders\"}", "contentType": "application/json"});
    let batch = json!({"proposals": [{
        "entityType": "dataset", "entityUrn": dataset_urn("sales.orders"), "changeType": "UPSERT",
        "aspectName": "datasetProperties", "aspect": props
    }], "async": "true"});
    let (status, _) = c.post("/aspects?action=ingestProposalBatch", batch.to_string(), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let mce = json!({"entity": {"value": {"com.linkedin.metadata.snapshot.DatasetSnapshot": {
        "urn": dataset_urn("hr.employees"),
        "aspects": [{"com.linkedin.common.Status": {"removed": false}}]
    }}}, "systemMetadata": {}});
    let (status, _) = c.post("/entities?action=ingest", mce.to_string(), Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(gms.dataset_urns(), [dataset_urn("hr.employees"), dataset_urn("sales.orders")].into());
    assert_eq!(gms.aspect(&dataset_urn("hr.employees"), "status"), Some(json!({"removed": false})));
    assert_eq!(gms.aspect(&dataset_urn("sales.orders"), "datasetProperties"), Some(json!({"name": "orders"})));
}

#[test]
fn validate_proposals_uses_datahubs_schema() {
    let Some(venv) = test_venv("validate_proposals_uses_datahubs_schema") else {
        return;
    };
    let python: PathBuf = venv.join("bin/python");
    let good = vec![result_body("e1", "RUNNING"), result_body("e1", "SUCCESS")];
    validate_proposals(&python, &good).expect("the reference kickoff shape is valid");

    let mut bad: Value = serde_json::from_str(&result_body("e1", "SUCCESS")).expect("JSON");
    bad["proposal"]["aspect"]["value"] = json!(json!({"status": "SUCCESS", "executorInstanceId": "x"}).to_string());
    let err = validate_proposals(&python, &[bad.to_string()]).expect_err("executorInstanceId is not OSS");
    assert!(err.contains("executorInstanceId"), "{err}");
}
