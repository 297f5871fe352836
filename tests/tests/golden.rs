//! Golden tests: the kickoff, progress and completion writes match DataHub's format field for field
//! (`reference/peer-executor.md` §2.7), byte for byte where DataHub's values are not run-specific.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::jobrun::{JobSandbox, seed_request};
use integration_tests::{GmsEmulator, test_venv, validate_proposals};
use serde_json::{Value, json};

const TOKEN: &str = "golden-token";

/// §2.7.1, the kickoff as DataHub's executor sends it, on one line as `json.dumps` writes it, with
/// the run-specific values as placeholders. `clientId`/`clientVersion` name this executor.
const KICKOFF: &str = r#"{"proposal": {"entityType": "dataHubExecutionRequest", "entityKeyAspect": {"value": "{\"id\": \"<ID>\"}", "contentType": "application/json"}, "changeType": "UPSERT", "aspectName": "dataHubExecutionRequestResult", "aspect": {"value": "{\"status\": \"RUNNING\", \"startTimeMs\": <START>}", "contentType": "application/json"}, "systemMetadata": {"lastObserved": <OBSERVED>, "runId": "no-run-id-provided", "lastRunId": "no-run-id-provided", "properties": {"appSource": "reportingExecutor", "clientId": "<CLIENT>", "clientVersion": "<VERSION>"}}}, "async": "false"}"#;

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

fn aspect(body: &str) -> (Value, Value) {
    let b: Value = serde_json::from_str(body).expect("body json");
    let value: Value =
        serde_json::from_str(b["proposal"]["aspect"]["value"].as_str().expect("aspect value")).expect("aspect json");
    (b, value)
}

fn python_check(python: &std::path::Path, bodies: &[String]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/check_python_format.py");
    let mut child =
        Command::new(python).arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run python");
    child.stdin.take().expect("stdin").write_all(bodies.join("\n").as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.trim(), format!("ok {}", bodies.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kickoff_progress_and_completion_match_datahubs_format() {
    let Some(venv) = test_venv("golden") else { return };
    let gms = GmsEmulator::start(TOKEN).await;
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    // A datahub-rest sink makes the CLI write its report file, so the completion has a structured report.
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo-metadata.json");
    let recipe = json!({"source": {"type": "file", "config": {"path": data}},
        "sink": {"type": "datahub-rest", "config": {"server": gms.url(), "token": "${GMS_TOKEN_SECRET}"}}});
    sandbox.file_secret("GMS_TOKEN_SECRET", TOKEN);
    let urn = seed_request(&gms, "golden-1", "RUN_INGEST", &recipe, "native", &[]);
    let exit = sandbox.run(&["run", "--execution-request", &urn], Duration::from_secs(240)).await;
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);

    let bodies = gms.result_bodies("golden-1");
    assert!(bodies.len() >= 3, "kickoff, progress and completion: {}", bodies.len());

    // Kickoff: byte for byte.
    let (k, kv) = aspect(&bodies[0]);
    let expected = KICKOFF
        .replace("<ID>", "golden-1")
        .replace("<START>", &kv["startTimeMs"].to_string())
        .replace("<OBSERVED>", &k["proposal"]["systemMetadata"]["lastObserved"].to_string())
        .replace("<CLIENT>", k["proposal"]["systemMetadata"]["properties"]["clientId"].as_str().expect("client"))
        .replace(
            "<VERSION>",
            k["proposal"]["systemMetadata"]["properties"]["clientVersion"].as_str().expect("version"),
        );
    assert_eq!(bodies[0], expected);

    // Progress: §2.7.2, same envelope, value {status, report, startTimeMs}.
    let progress: Vec<&String> = bodies[1..bodies.len() - 1].iter().collect();
    assert!(!progress.is_empty(), "at least one progress update");
    for p in &progress {
        let (b, v) = aspect(p);
        assert_eq!(keys(&b), ["proposal", "async"]);
        assert_eq!(
            keys(&b["proposal"]),
            ["entityType", "entityKeyAspect", "changeType", "aspectName", "aspect", "systemMetadata"]
        );
        assert_eq!(keys(&v), ["status", "report", "startTimeMs"]);
        assert_eq!(v["status"], "RUNNING");
        assert_eq!(v["startTimeMs"], kv["startTimeMs"], "the start time never changes");
    }

    // Completion: §2.7.3, value {status, report, structuredReport{type, serializedValue, contentType}, startTimeMs, durationMs}.
    let (c, cv) = aspect(bodies.last().expect("completion"));
    assert_eq!(keys(&c), ["proposal", "async"]);
    assert_eq!(keys(&c["proposal"]["systemMetadata"]), ["lastObserved", "runId", "lastRunId", "properties"]);
    assert_eq!(keys(&cv), ["status", "report", "structuredReport", "startTimeMs", "durationMs"]);
    assert_eq!(keys(&cv["structuredReport"]), ["type", "serializedValue", "contentType"]);
    assert_eq!(cv["structuredReport"]["type"], "RUN_INGEST");
    assert_eq!(cv["structuredReport"]["contentType"], "application/json");
    let report = cv["report"].as_str().expect("report");
    assert!(report.starts_with("~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished successfully!\n{'exec_id': 'golden-1',\n 'infos': ['"), "{report}");
    assert!(report.contains("\n\n~~~~ Ingestion Report ~~~~\n{\n  \"cli\": {\n"), "{report}");
    assert!(report.contains("\n\n~~~~ Ingestion Logs ~~~~\n"), "{report}");
    assert!(report.ends_with("\n"));
    assert!(cv["durationMs"].as_i64().expect("duration") > 0);

    let python = venv.join("bin/python");
    python_check(&python, &bodies);
    validate_proposals(&python, &bodies).expect("DataHub's schema classes accept every write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_completion_matches_datahubs_format() {
    let Some(venv) = test_venv("golden_failure") else { return };
    let gms = GmsEmulator::start(TOKEN).await;
    let sandbox = JobSandbox::new(&venv).with_gms(&gms.url(), TOKEN);
    let recipe =
        json!({"source": {"type": "no-such-source", "config": {"note": "ünïcödé \u{1f600} and 'quotes' \"both\""}}});
    let urn = seed_request(&gms, "golden-2", "RUN_INGEST", &recipe, "native", &[]);
    let exit = sandbox.run(&["run", "--execution-request", &urn], Duration::from_secs(240)).await;
    assert_eq!(exit.code, Some(1));
    let bodies = gms.result_bodies("golden-2");
    let (_, cv) = aspect(bodies.last().expect("completion"));
    assert_eq!(
        keys(&cv),
        ["status", "report", "startTimeMs", "durationMs"],
        "no structured report without a report file"
    );
    assert_eq!(cv["status"], "FAILURE");
    assert!(
        cv["report"]
            .as_str()
            .expect("report")
            .starts_with("~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished with errors.\n")
    );
    let python = venv.join("bin/python");
    python_check(&python, &bodies);
    validate_proposals(&python, &bodies).expect("DataHub's schema classes accept every write");
}
