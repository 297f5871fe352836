//! End-to-end: `ingest-job` runs the real `datahub` CLI against a real PostgreSQL and reports to the
//! GMS emulator, which also receives the metadata through the CLI's default `datahub-rest` sink.

use std::time::Duration;

use integration_tests::jobrun::{JobSandbox, files_containing, seed_request, statuses};
use integration_tests::{GmsEmulator, Postgres, test_venv, validate_proposals};
use serde_json::{Value, json};

const TOKEN: &str = "test-token-9f8e7d";
/// Holds `$`, a backslash, both quote kinds, `#`, `:` and a space.
const PASSWORD: &str = "pa$s\\w'o\"rd #:x y";
const TABLES: [&str; 4] = ["sales.orders", "sales.customers", "inventory.items", "inventory.stock_moves"];

fn database() -> Postgres {
    let pg = Postgres::start().expect("start PostgreSQL");
    pg.create_role("ingest", PASSWORD);
    pg.create_database("shop", "ingest");
    let ddl = "
        CREATE SCHEMA sales AUTHORIZATION ingest;
        CREATE SCHEMA inventory AUTHORIZATION ingest;
        CREATE TABLE sales.orders (id bigint PRIMARY KEY, customer_id bigint, total numeric(12,2), placed_at timestamptz);
        CREATE TABLE sales.customers (id bigint PRIMARY KEY, email text NOT NULL, country char(2));
        CREATE TABLE inventory.items (sku text PRIMARY KEY, name text, price numeric(10,2));
        CREATE TABLE inventory.stock_moves (id serial PRIMARY KEY, sku text REFERENCES inventory.items(sku), qty int);
        ALTER TABLE sales.orders OWNER TO ingest; ALTER TABLE sales.customers OWNER TO ingest;
        ALTER TABLE inventory.items OWNER TO ingest; ALTER TABLE inventory.stock_moves OWNER TO ingest;
        INSERT INTO inventory.items VALUES ('A-1', 'anvil', 99.50);
    ";
    pg.psql("shop", ddl).expect("create tables");
    pg
}

fn recipe(pg: &Postgres) -> Value {
    json!({"source": {"type": "postgres", "config": {
        "host_port": pg.host_port(),
        "database": "shop",
        "username": "ingest",
        "password": "${PG_PASSWORD}",
        "profiling": {"enabled": false}
    }}})
}

fn dataset_urn(table: &str) -> String {
    format!("urn:li:dataset:(urn:li:dataPlatform:postgres,shop.{table},PROD)")
}

/// Every rendering of the password a leak could take.
fn password_renderings() -> Vec<String> {
    let json = serde_json::to_string(PASSWORD).expect("json");
    vec![
        PASSWORD.to_owned(),
        json.trim_matches('"').to_owned(),
        "pa$s\\\\w".to_owned(),
        "pa%24s%5Cw".to_owned(),
        "rd #:x y".to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_run_reports_running_progress_success_and_never_leaks_the_password() {
    let Some(venv) = test_venv("postgres_run") else { return };
    let pg = database();
    let gms = GmsEmulator::start(TOKEN).await;
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    sandbox.file_secret("PG_PASSWORD", PASSWORD);
    let urn = seed_request(&gms, "pg-run-1", "RUN_INGEST", &recipe(&pg), "native", &[]);

    let exit = sandbox.run(&["run", "--execution-request", &urn], Duration::from_secs(240)).await;
    assert_eq!(exit.code, Some(0), "stdout:\n{}\nstderr:\n{}", exit.stdout, exit.stderr);

    let results = gms.execution_results("pg-run-1");
    let seen = statuses(&results);
    assert_eq!(seen.first().map(String::as_str), Some("RUNNING"), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("SUCCESS"), "{seen:?}");
    assert!(
        results
            .iter()
            .any(|r| r["status"] == "RUNNING" && r["report"].as_str().is_some_and(|t| t.contains("Executing:"))),
        "a progress update carried the log tail: {seen:?}"
    );
    let done = results.last().expect("final");
    let sr = &done["structuredReport"];
    assert_eq!(sr["type"], "RUN_INGEST");
    let report: Value = serde_json::from_str(sr["serializedValue"].as_str().expect("serialized")).expect("report json");
    assert_eq!(report["source"]["type"], "postgres", "{report}");
    assert!(done["report"].as_str().expect("report").contains("Successfully executed 'datahub ingest'"));

    let datasets = gms.dataset_urns();
    for table in TABLES {
        assert!(datasets.contains(&dataset_urn(table)), "{table} missing from {datasets:?}");
    }

    // The password is nowhere: output, GMS requests, files the job wrote.
    for leak in password_renderings() {
        assert!(!exit.stdout.contains(&leak), "stdout leaks {leak:?}");
        assert!(!exit.stderr.contains(&leak), "stderr leaks {leak:?}");
        for req in gms.requests() {
            assert!(!req.body.contains(&leak), "GMS request {} {} leaks {leak:?}", req.method, req.path);
        }
        let secrets_dir = sandbox.root.path().join("secrets");
        let files: Vec<_> = files_containing(sandbox.root.path(), leak.as_bytes())
            .into_iter()
            .filter(|p| !p.starts_with(&secrets_dir))
            .collect();
        assert!(files.is_empty(), "files leak {leak:?}: {files:?}");
    }
    assert!(!sandbox.tmp_dir().join("pg-run-1").exists(), "the run folder is removed");

    let python = venv.join("bin/python");
    validate_proposals(&python, &gms.result_bodies("pg-run-1")).expect("DataHub accepts every status write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_with_the_cli_error_tail() {
    let Some(venv) = test_venv("wrong_password") else { return };
    let pg = database();
    let gms = GmsEmulator::start(TOKEN).await;
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    sandbox.file_secret("PG_PASSWORD", "not-the-password");
    let urn = seed_request(&gms, "pg-wrong-1", "RUN_INGEST", &recipe(&pg), "native", &[]);
    let exit = sandbox.run(&["run", "--execution-request", &urn], Duration::from_secs(240)).await;
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    let done = gms.wait_for_status("pg-wrong-1", "FAILURE", Duration::from_secs(5)).await.expect("FAILURE");
    let report = done["report"].as_str().expect("report");
    assert!(report.contains("password authentication failed"), "{report}");
    assert!(report.contains("failed with exit code 1"), "{report}");
    assert!(!report.contains("not-the-password"), "the wrong password is masked too");
}

async fn test_connection(password: &str, exec_id: &str) -> Value {
    let venv = test_venv("test_connection").expect("checked by caller");
    let pg = database();
    let gms = GmsEmulator::start(TOKEN).await;
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    sandbox.file_secret("PG_PASSWORD", password);
    let urn = seed_request(&gms, exec_id, "TEST_CONNECTION", &recipe(&pg), "native", &[]);
    let exit = sandbox.run(&["run", "--execution-request", &urn], Duration::from_secs(240)).await;
    let results = gms.execution_results(exec_id);
    let done = results.last().cloned().expect("a final result");
    assert_eq!(exit.code, Some(if done["status"] == "SUCCESS" { 0 } else { 1 }), "{}", exit.stderr);
    let sr = &done["structuredReport"];
    assert_eq!(sr["type"], "TEST_CONNECTION", "{done}");
    serde_json::from_str(sr["serializedValue"].as_str().expect("serialized")).expect("connection report json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_is_capable_with_the_right_password() {
    if test_venv("test_connection_ok").is_none() {
        return;
    }
    let report = test_connection(PASSWORD, "tc-ok-1").await;
    assert_eq!(report["basic_connectivity"]["capable"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_is_not_capable_with_a_wrong_password() {
    if test_venv("test_connection_bad").is_none() {
        return;
    }
    let report = test_connection("wrong-password", "tc-bad-1").await;
    assert_eq!(report["basic_connectivity"]["capable"], false, "{report}");
    let reason = report["basic_connectivity"]["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("password authentication failed"), "{report}");
}
