//! The deployment templates set only variables the code reads (issue 5, must-show 3): each
//! function's and the job container's environment in `template.yaml` and in the Terraform modules
//! is fed to the real configuration loaders through a recording lookup; every name the template
//! sets must have been read, and the configuration must load. A rename in the code (or a typo in a
//! template) fails here instead of silently breaking a deployment. Also checks the values
//! cfn-lint misses inside `AWS::Serverless::Function` (Runtime, Architectures,
//! FunctionResponseTypes) and the SQS visibility rule.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn template() -> Value {
    let text = std::fs::read_to_string(repo().join("template.yaml")).expect("template.yaml");
    serde_yaml_ng::from_str(&text).expect("template.yaml parses (CloudFormation tags included)")
}

/// A value that satisfies the loaders for a variable whose template value is an expression
/// (`!Ref`, `!GetAtt`, a Terraform reference): what a deployment would resolve it to.
fn placeholder(name: &str) -> String {
    let v = match name {
        "DATAHUB_GMS_URL" => "https://acme.acryl.io/gms",
        "DATAHUB_GMS_TOKEN" => "token-placeholder",
        "DATAHUB_GMS_TOKEN_SECRET_ARN" => "arn:aws:secretsmanager:us-east-1:111111111111:secret:gms-token",
        "DATAHUB_EXECUTOR_ECS_SUBNETS" => "subnet-0a,subnet-0b",
        "DATAHUB_EXECUTOR_ECS_SECURITY_GROUPS" => "sg-0a",
        "DATAHUB_EXECUTOR_ECS_ASSIGN_PUBLIC_IP" => "false",
        "DATAHUB_EXECUTOR_ECS_CAPACITY_PROVIDER" => "FARGATE_SPOT",
        "DATAHUB_EXECUTOR_QUEUE_URL" | "DATAHUB_EXECUTOR_DLQ_URL" => {
            "https://sqs.us-east-1.amazonaws.com/111111111111/datahub-executor"
        }
        "DATAHUB_EXECUTOR_RELAY_MODE" => "self-hosted",
        "DATAHUB_EXECUTOR_AWS_SM_REGION" => "us-east-1",
        "DATAHUB_EXECUTOR_AWS_SM_PREFIX" | "DATAHUB_EXECUTOR_GCP_SM_PREFIX" => "datahub-",
        "DATAHUB_EXECUTOR_CLOUD_RUN_REGION" => "us-central1",
        n if n.ends_with("_ENABLED") => "true",
        n if n.ends_with("_MAX_WORKERS") => "4",
        n if n.contains("BACKOFF") || n.ends_with("_GRACE") || n.ends_with("_THRESHOLD") => "300",
        _ => "placeholder-value",
    };
    v.to_owned()
}

/// A CloudFormation value as the deployment would see it: literals as they are, anything else
/// (tags, `!If` with a literal branch) through [`placeholder`] or that branch.
fn cfn_value(name: &str, v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Tagged(t) if t.tag == "If" => {
            // `!If [cond, a, b]`: the branch that sets something.
            let branches = t.value.as_sequence().expect("!If takes a list");
            match &branches[1] {
                Value::String(s) => s.clone(),
                other => cfn_value(name, other),
            }
        }
        _ => placeholder(name),
    }
}

/// The result of running loaders over `vars` with a lookup that records every name read.
struct Loaded {
    read: BTreeSet<String>,
}

fn load(vars: &BTreeMap<String, String>, loaders: impl FnOnce(&dyn Fn(&str) -> Option<String>)) -> Loaded {
    let read = RefCell::new(BTreeSet::new());
    let lookup = |k: &str| {
        read.borrow_mut().insert(k.to_owned());
        vars.get(k).cloned()
    };
    loaders(&lookup);
    Loaded { read: read.into_inner() }
}

/// Every name of `vars` was read (`allowed_unread`: names the code does not read yet, each of
/// which must really be unread, so the exception disappears once the code catches up).
fn assert_all_read(what: &str, vars: &BTreeMap<String, String>, loaded: &Loaded, allowed_unread: &[&str]) {
    let unread: Vec<&String> =
        vars.keys().filter(|k| !loaded.read.contains(*k) && !allowed_unread.contains(&k.as_str())).collect();
    assert!(unread.is_empty(), "{what}: the template sets variables no configuration loader reads: {unread:?}");
    for name in allowed_unread {
        if vars.contains_key(*name) {
            assert!(
                !loaded.read.contains(*name),
                "{what}: {name} is read now: remove it from the exceptions of this test"
            );
        }
    }
    assert!(!vars.is_empty(), "{what}: no variables found");
}

fn check_admission(what: &str, vars: &BTreeMap<String, String>) {
    let mut settings = None;
    let loaded = load(vars, |lookup| {
        settings = Some(admission::Settings::from_lookup(lookup).map_err(|e| format!("{e:#}")));
        // The admission also builds its cloud secret stores and (for Cloud Run) the Google token
        // source from the same lookup.
        if let Ok(shared::launcher::LauncherConfig::CloudRun(_)) = shared::launcher::LauncherConfig::from_lookup(lookup)
        {
            shared::gcp::token_source_from_env(lookup).expect("Google token source");
        }
    });
    let settings = settings.expect("ran").unwrap_or_else(|e| panic!("{what}: the admission's configuration: {e}"));
    assert_all_read(what, vars, &loaded, &[]);
    if vars.contains_key("DATAHUB_GMS_TOKEN_SECRET_ARN") {
        assert!(
            matches!(settings.token, shared::config::GmsTokenSource::SecretsManager { .. }),
            "{what}: the token comes from Secrets Manager"
        );
    }
}

fn check_relay(what: &str, vars: &BTreeMap<String, String>) {
    let mut result = None;
    let loaded = load(vars, |lookup| {
        result = Some((
            shared::relay::RelayConfig::from_lookup(lookup).map(|_| ()).map_err(|e| e.to_string()),
            shared::launcher::LauncherConfig::from_lookup(lookup).map(|_| ()).map_err(|e| e.to_string()),
        ));
    });
    let (relay, launcher) = result.expect("ran");
    relay.unwrap_or_else(|e| panic!("{what}: the relay's configuration: {e}"));
    launcher.unwrap_or_else(|e| panic!("{what}: the relay's launcher configuration: {e}"));
    assert_all_read(what, vars, &loaded, &[]);
}

fn check_job(what: &str, vars: &BTreeMap<String, String>) {
    let mut result = None;
    let loaded = load(vars, |lookup| {
        result = Some((
            shared::config::JobConfig::from_lookup(lookup).map(|_| ()).map_err(|e| e.to_string()),
            shared::cloud_secrets::CloudSecretsConfig::from_lookup(lookup).map(|_| ()).map_err(|e| e.to_string()),
        ));
        shared::config::json_logs(lookup);
    });
    let (job, cloud) = result.expect("ran");
    job.unwrap_or_else(|e| panic!("{what}: the job's configuration: {e}"));
    cloud.unwrap_or_else(|e| panic!("{what}: the job's secret stores: {e}"));
    assert_all_read(what, vars, &loaded, &[]);
}

fn resources(t: &Value) -> &serde_yaml_ng::Mapping {
    t["Resources"].as_mapping().expect("Resources")
}

fn function_env(t: &Value, name: &str) -> BTreeMap<String, String> {
    let vars = t["Resources"][name]["Properties"]["Environment"]["Variables"].as_mapping().expect("variables");
    vars.iter()
        .map(|(k, v)| {
            let k = k.as_str().expect("name").to_owned();
            let v = cfn_value(&k, v);
            (k, v)
        })
        .collect()
}

/// The container's literal names from `Environment` and `Secrets`; entries whose name is itself
/// an expression are the operator's OptionalEnvVars / OptionalSecrets slots, counted separately.
fn container_env(container: &Value) -> (BTreeMap<String, String>, usize) {
    let mut vars = BTreeMap::new();
    let mut slots = 0;
    for (list, value_key) in [("Environment", "Value"), ("Secrets", "ValueFrom")] {
        for entry in container[list].as_sequence().expect(list) {
            let entry = match entry {
                Value::Tagged(t) if t.tag == "If" => &t.value.as_sequence().expect("!If")[1],
                e => e,
            };
            match entry["Name"].as_str() {
                Some(name) => {
                    let value = if list == "Secrets" { placeholder(name) } else { cfn_value(name, &entry[value_key]) };
                    vars.insert(name.to_owned(), value);
                }
                None => slots += 1,
            }
        }
    }
    (vars, slots)
}

#[test]
fn sam_template_environment_names_are_the_ones_the_code_reads() {
    let t = template();
    check_admission("template.yaml AdmissionFunction", &function_env(&t, "AdmissionFunction"));
    check_relay("template.yaml RelayFunction", &function_env(&t, "RelayFunction"));

    let containers =
        t["Resources"]["JobTaskDefinition"]["Properties"]["ContainerDefinitions"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let job = &containers[0];
    assert_eq!(
        job["Name"].as_str(),
        Some(shared::launcher::ecs::DEFAULT_CONTAINER),
        "the container the admission overrides"
    );
    assert_eq!(job["Command"], serde_yaml_ng::from_str::<Value>("[job]").expect("yaml"), "ingest-job job");
    let (vars, slots) = container_env(job);
    assert!(vars.contains_key("DATAHUB_GMS_TOKEN"), "the token is injected from Secrets Manager");
    assert_eq!(slots, 20, "10 OptionalSecrets and 10 OptionalEnvVars slots, as DataHub's template");
    check_job("template.yaml ingest-job container", &vars);
}

#[test]
fn sam_functions_use_values_cfn_lint_does_not_check() {
    let t = template();
    let params = &t["Parameters"];
    let arch = &params["Architectures"];
    let allowed: Vec<&str> =
        arch["AllowedValues"].as_sequence().expect("allowed").iter().filter_map(Value::as_str).collect();
    assert_eq!(allowed, ["arm64", "x86_64"]);
    let mut functions = 0;
    for (name, res) in resources(&t) {
        if res["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        functions += 1;
        let name = name.as_str().expect("name");
        let p = &res["Properties"];
        assert_eq!(p["Runtime"].as_str(), Some("provided.al2023"), "{name}: Runtime");
        assert_eq!(p["Handler"].as_str(), Some("bootstrap"), "{name}: Handler");
        let archs = p["Architectures"].as_sequence().expect("Architectures");
        assert_eq!(archs.len(), 1, "{name}");
        match &archs[0] {
            Value::Tagged(tag) if tag.tag == "Ref" => assert_eq!(tag.value.as_str(), Some("Architectures"), "{name}"),
            Value::String(s) => assert!(allowed.contains(&s.as_str()), "{name}: Architectures {s}"),
            other => panic!("{name}: Architectures {other:?}"),
        }
        assert_eq!(res["Metadata"]["BuildMethod"].as_str(), Some("rust-cargolambda"), "{name}");
        let bin = res["Metadata"]["BuildProperties"]["Binary"].as_str().expect("Binary");
        assert!(
            repo().join("functions").join(bin).join("Cargo.toml").exists(),
            "{name}: Binary {bin} is a package of the workspace"
        );
        if let Some(events) = p["Events"].as_mapping() {
            for (ev, e) in events {
                if e["Type"].as_str() == Some("SQS") {
                    assert_eq!(
                        e["Properties"]["FunctionResponseTypes"],
                        serde_yaml_ng::from_str::<Value>("[ReportBatchItemFailures]").expect("yaml"),
                        "{name}.{ev:?}: FunctionResponseTypes"
                    );
                    let timeout = p["Timeout"].as_u64().expect("Timeout");
                    let queue = &t["Resources"]["ExecutionRequestQueue"]["Properties"];
                    let visibility = queue["VisibilityTimeout"].as_u64().expect("VisibilityTimeout");
                    assert!(
                        visibility >= 6 * timeout,
                        "visibility timeout {visibility} < 6 x {name}'s timeout {timeout}"
                    );
                    // Capacity waits count as receives: a small maxReceiveCount would dead-letter them.
                    let redrive = &queue["RedrivePolicy"]["maxReceiveCount"];
                    assert!(matches!(redrive, Value::Tagged(tag) if tag.value.as_str() == Some("MaxReceiveCount")));
                    assert!(params["MaxReceiveCount"]["Default"].as_u64().expect("default") >= 50);
                }
            }
        }
    }
    assert_eq!(functions, 2, "admission and relay");
}

// ------------------------------------------------------------------ Terraform

/// The keys of `name = { ... }` in `text` (a Terraform object of environment variables).
fn tf_map(text: &str, name: &str) -> BTreeMap<String, String> {
    let start = regex::Regex::new(&format!(r"(?m)^\s*{name}\s*=\s*(merge\()?")).expect("regex");
    let m = start.find(text).unwrap_or_else(|| panic!("no local {name}"));
    // The text up to the matching close of the first `{` (or of `merge(`).
    let body = &text[m.end()..];
    let mut depth = 0i32;
    let mut end = body.len();
    for (i, c) in body.char_indices() {
        match c {
            '{' | '(' => depth += 1,
            '}' | ')' => {
                depth -= 1;
                if depth <= 0 {
                    end = i;
                    break;
                }
            }
            _ => {}
        }
    }
    let entry = regex::Regex::new(r#"(?m)^\s*([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*$"#).expect("regex");
    entry
        .captures_iter(&body[..end])
        .map(|c| {
            let k = c[1].to_owned();
            let raw = c[2].trim();
            let v = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                Some(lit) if !lit.contains("${") => lit.to_owned(),
                _ => placeholder(&k),
            };
            (k, v)
        })
        .collect()
}

fn tf(path: &str) -> String {
    std::fs::read_to_string(repo().join("infra/terraform").join(path)).expect(path)
}

/// The maps a local merges in by name (`merge(local.launcher_env, {...})`).
fn with_merged(text: &str, name: &str) -> BTreeMap<String, String> {
    let mut vars = tf_map(text, name);
    let merged = regex::Regex::new(&format!(r"(?m)^\s*{name}\s*=\s*merge\(local\.([a-z_]+)")).expect("regex");
    if let Some(c) = merged.captures(text) {
        vars.extend(tf_map(text, &c[1]));
    }
    vars
}

#[test]
fn terraform_environment_names_are_the_ones_the_code_reads() {
    let aws = tf("modules/aws/main.tf");
    let admission = with_merged(&aws, "admission_env");
    assert!(admission.contains_key("DATAHUB_EXECUTOR_ECS_CLUSTER"), "{admission:?}");
    check_admission("modules/aws admission_env", &admission);
    let relay = with_merged(&aws, "relay_env");
    check_relay("modules/aws relay_env", &relay);
    let mut job = tf_map(&aws, "job_env");
    job.insert("DATAHUB_GMS_TOKEN".into(), placeholder("DATAHUB_GMS_TOKEN"));
    assert!(aws.contains("DATAHUB_GMS_TOKEN = local.token_secret_arn"), "the token is injected from Secrets Manager");
    check_job("modules/aws job_env", &job);

    // SAM and Terraform set the same names.
    let t = template();
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(names(&admission), names(&function_env(&t, "AdmissionFunction")), "admission: SAM vs Terraform");
    assert_eq!(names(&relay), names(&function_env(&t, "RelayFunction")), "relay: SAM vs Terraform");

    let gcp = tf("modules/gcp/main.tf");
    let mut job = tf_map(&gcp, "job_env");
    job.insert("DATAHUB_GMS_TOKEN".into(), placeholder("DATAHUB_GMS_TOKEN"));
    check_job("modules/gcp job_env", &job);
    // The admission's Cloud Run launcher settings: a real external_account file stands in for
    // the module's credential_config_json output.
    let dir = tempfile::tempdir().expect("tmp");
    let creds = dir.path().join("gcp-credentials.json");
    std::fs::write(
        &creds,
        r#"{"type": "external_account", "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/aws",
            "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request", "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": {"environment_id": "aws1", "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"}}"#,
    )
    .expect("write");
    let mut admission = tf_map(&gcp, "admission_env");
    assert_eq!(admission.get("DATAHUB_EXECUTOR_LAUNCHER").map(String::as_str), Some("cloud-run"));
    admission.insert("GOOGLE_APPLICATION_CREDENTIALS".into(), creds.display().to_string());
    // The rest of the admission's environment comes from the AWS module.
    for k in ["DATAHUB_GMS_URL", "DATAHUB_GMS_TOKEN_SECRET_ARN", "DATAHUB_EXECUTOR_POOL_ID"] {
        admission.insert(k.into(), placeholder(k));
    }
    // The AWS federation signs with the Lambda's own credentials (set by Lambda, not the template).
    let mut with_lambda = admission.clone();
    for (k, v) in [("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_REGION", "us-east-1")] {
        with_lambda.insert(k.into(), v.into());
    }
    let mut settings = None;
    let loaded = load(&with_lambda, |lookup| {
        settings = Some(admission::Settings::from_lookup(lookup).map(|_| ()).map_err(|e| format!("{e:#}")));
        shared::gcp::token_source_from_env(lookup).map(|_| ()).expect("Google token source from the credential file");
    });
    settings.expect("ran").unwrap_or_else(|e| panic!("modules/gcp admission_env: {e}"));
    assert_all_read("modules/gcp admission_env", &admission, &loaded, &[]);
}

#[test]
fn a_name_the_code_does_not_read_fails_the_check() {
    // The check itself must be able to fail: a misspelt variable is reported.
    let mut vars = function_env(&template(), "AdmissionFunction");
    vars.insert("DATAHUB_EXECUTOR_ECS_CLUSTR".into(), "typo".into());
    let result = std::panic::catch_unwind(|| check_admission("typo", &vars));
    let message = result.expect_err("a typo fails");
    let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("DATAHUB_EXECUTOR_ECS_CLUSTR"), "{text}");
}
