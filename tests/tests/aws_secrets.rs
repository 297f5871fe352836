//! The `aws-sm` secret store against a real local Secrets Manager API (moto): values come back byte
//! for byte whatever they hold, names go out in `BatchGetSecretValue` calls of at most 20 ids
//! (counted on the wire by an SDK interceptor, since moto does not enforce the limit), a missing
//! secret is absent rather than an error, the TTL cache serves a value until the TTL and the
//! rotated value after it, and `names()` lists the prefix's secrets without reading values.
//! Error entries other than "not found" (AccessDenied...) are tested with `aws-smithy-mocks` in
//! `shared::cloud_secrets`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use integration_tests::moto::{Moto, unique_name};
use serde_json::Value;
use shared::cloud_secrets::{AwsSecretsManagerStore, CachedStore, ManualClock};
use shared::secrets::{SecretStore, resolve};

/// One HTTP request the SDK sent: its `X-Amz-Target` and the `SecretIdList` of its body.
#[derive(Debug, Clone)]
struct Sent {
    target: String,
    ids: Vec<String>,
}

/// Records every request the client transmits (retries included), just before it goes out.
#[derive(Debug, Clone, Default)]
struct Recorder {
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl Recorder {
    fn batch_calls(&self) -> Vec<Vec<String>> {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.target == "secretsmanager.BatchGetSecretValue")
            .map(|s| s.ids.clone())
            .collect()
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "request-recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let request = context.request();
        let target = request.headers().get("x-amz-target").unwrap_or_default().to_owned();
        let body: Value = request.body().bytes().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
        let ids = body
            .get("SecretIdList")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).push(Sent { target, ids });
        Ok(())
    }
}

struct World {
    _moto: Moto,
    /// A plain client, for arranging secrets.
    admin: Client,
    /// The client the store uses, with the recorder.
    client: Client,
    recorder: Recorder,
    /// A prefix no other test uses.
    prefix: String,
}

async fn world(test: &str) -> Option<World> {
    let moto = Moto::start_or_skip(test).await?;
    let conf = moto.sdk_config().await;
    let recorder = Recorder::default();
    let client =
        Client::from_conf(aws_sdk_secretsmanager::config::Builder::from(&conf).interceptor(recorder.clone()).build());
    let prefix = format!("{}-", unique_name("dh"));
    Some(World { admin: Client::new(&conf), client, recorder, prefix, _moto: moto })
}

impl World {
    async fn create(&self, full_name: &str, value: &str) {
        self.admin.create_secret().name(full_name).secret_string(value).send().await.expect("CreateSecret");
    }

    fn store(&self) -> AwsSecretsManagerStore {
        AwsSecretsManagerStore::new(self.client.clone(), self.prefix.clone())
    }
}

/// Exactly 64 KiB of text with multi-byte characters spread through it.
fn long_value() -> String {
    let mut v = String::new();
    while v.len() < 64 * 1024 - 16 {
        v.push_str("line é 中 😀 \"q\" 'q' \\ ${X}\n");
    }
    while v.len() < 64 * 1024 {
        v.push('x');
    }
    v
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn values_come_back_byte_for_byte_in_batches_of_twenty() {
    let Some(w) = world("values_come_back_byte_for_byte_in_batches_of_twenty").await else { return };
    let mut expected: BTreeMap<String, String> = [
        ("NEWLINES", "first line\nsecond line\r\nthird\n"),
        ("QUOTES", r#"both "double" and 'single' quotes"#),
        ("BACKSLASH", r"back\slash \n is not a newline \\ \"),
        ("DOLLARS", "$HOME ${X} $${Y} ${Z:-default} $"),
        ("UNICODE", "é 中 😀 ünïcödé"),
        ("SPACES", "  leading and trailing  "),
        ("JSONISH", r#"{"user": "u", "password": "p"}"#),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    expected.insert("LONG".into(), long_value());
    assert_eq!(expected["LONG"].len(), 65_536);
    for i in 0..16 {
        expected.insert(format!("PLAIN_{i:02}"), format!("plain-value-{i}"));
    }
    for (name, value) in &expected {
        w.create(&format!("{}{name}", w.prefix), value).await;
    }
    // A secret of the same name without the prefix must not be read.
    w.create("NOT_PREFIXED", "wrong").await;

    // 24 existing names + 1 missing = 25 names in one `get`.
    let mut wanted: Vec<String> = expected.keys().cloned().collect();
    wanted.push("MISSING".into());
    assert_eq!(wanted.len(), 25);

    let stores: Vec<Box<dyn SecretStore>> = vec![Box::new(w.store())];
    let got = resolve(&stores, &wanted).await.expect("a missing secret is not an error");
    assert!(!got.contains_key("MISSING"), "missing secret is absent");
    assert_eq!(got.len(), expected.len());
    for (name, value) in &expected {
        assert_eq!(got[name].as_bytes(), value.as_bytes(), "{name} byte for byte");
    }

    let calls = w.recorder.batch_calls();
    assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), vec![20, 5], "25 names = 2 BatchGetSecretValue calls");
    let sent: BTreeSet<&String> = calls.iter().flatten().collect();
    assert_eq!(sent.len(), 25, "every name asked once");
    assert!(sent.iter().all(|id| id.starts_with(&w.prefix)), "ids carry the prefix: {sent:?}");

    // Duplicates and empty names are not sent again.
    let again = names(&["UNICODE", "UNICODE", "", "NOT_PREFIXED"]);
    let got = w.store().get(&again).await.expect("get");
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["UNICODE"]);
    assert_eq!(w.recorder.batch_calls().last().map(Vec::len), Some(2));
}

#[tokio::test]
async fn the_cache_serves_until_the_ttl_then_reads_the_rotated_value() {
    let Some(w) = world("the_cache_serves_until_the_ttl_then_reads_the_rotated_value").await else { return };
    let id = format!("{}PG_PASSWORD", w.prefix);
    w.create(&id, "password-v1").await;
    let clock = ManualClock::new();
    let ttl = Duration::from_secs(600);
    let store = CachedStore::with_clock(w.store(), ttl, Arc::new(clock.clone()));
    assert_eq!(store.name(), "aws-sm");
    let wanted = names(&["PG_PASSWORD", "CREATED_LATER"]);

    assert_eq!(store.get(&wanted).await.expect("get")["PG_PASSWORD"], "password-v1");
    assert_eq!(w.recorder.batch_calls().len(), 1);

    // Rotate the secret and create the one that was missing.
    w.admin.put_secret_value().secret_id(&id).secret_string("password-v2").send().await.expect("PutSecretValue");
    w.create(&format!("{}CREATED_LATER", w.prefix), "now-here").await;

    clock.advance(ttl - Duration::from_secs(1));
    let got = store.get(&wanted).await.expect("get");
    assert_eq!(got["PG_PASSWORD"], "password-v1", "served from the cache before the TTL");
    assert_eq!(got["CREATED_LATER"], "now-here", "a miss is not cached");
    assert_eq!(w.recorder.batch_calls().last(), Some(&vec![format!("{}CREATED_LATER", w.prefix)]));

    clock.advance(Duration::from_secs(1));
    let got = store.get(&wanted[..1]).await.expect("get");
    assert_eq!(got["PG_PASSWORD"], "password-v2", "read again at the TTL");
    assert_eq!(w.recorder.batch_calls().len(), 3);
    let debug = format!("{store:?}");
    assert!(!debug.contains("password-v"), "Debug shows no value: {debug}");
}

#[tokio::test]
async fn names_lists_the_prefix_only_without_reading_values() {
    let Some(w) = world("names_lists_the_prefix_only_without_reading_values").await else { return };
    // More than one ListSecrets page (100 a page).
    let mut expected = BTreeSet::new();
    for i in 0..105 {
        let name = format!("SECRET_{i:03}");
        w.create(&format!("{}{name}", w.prefix), "v").await;
        expected.insert(name);
    }
    let other = format!("{}-", unique_name("other"));
    w.create(&format!("{other}X"), "v").await;
    w.create(&format!("x{}INSIDE", w.prefix), "v").await;
    w.create(&format!("{}Y", w.prefix.to_uppercase()), "v").await;

    let got = w.store().names().await.expect("names");
    assert_eq!(got, expected);
    assert!(w.recorder.batch_calls().is_empty(), "no value was read");
    let sent = w.recorder.sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(sent.len() >= 2 && sent.iter().all(|s| s.target == "secretsmanager.ListSecrets"), "{sent:?}");
}

/// One unauthenticated IAM query-API call to moto (only the first requests are let through
/// unauthenticated, see [`access_denied_is_an_error_naming_the_store_and_the_secrets`]).
async fn iam(moto: &Moto, params: &[(&str, &str)]) -> String {
    let form: Vec<String> = [("Version", "2010-05-08")]
        .iter()
        .chain(params)
        .map(|(k, v)| {
            let enc = |t: &str| {
                t.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("{}/", moto.url()))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=x",
        )
        .header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
        .body(form.join("&"))
        .send()
        .await
        .expect("IAM call");
    let status = resp.status();
    let body = resp.text().await.expect("IAM body");
    assert!(status.is_success(), "IAM {params:?}: HTTP {status}: {body}");
    body
}

/// The text of the first `<tag>` element of an XML answer.
fn xml_value(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml.find(&open).map(|i| i + open.len()).unwrap_or_else(|| panic!("no <{tag}> in {xml}"));
    let end = xml[start..].find(&format!("</{tag}>")).map(|i| start + i).unwrap_or_else(|| panic!("no </{tag}>"));
    xml[start..end].to_owned()
}

#[tokio::test]
async fn access_denied_is_an_error_naming_the_store_and_the_secrets() {
    let test = "access_denied_is_an_error_naming_the_store_and_the_secrets";
    let Some(venv) = integration_tests::moto::moto_venv(test) else { return };
    // moto enforces IAM after the first 4 requests: the 4 set-up calls below.
    let moto = Moto::start_with_env(&venv, &[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]).await.expect("moto starts");
    let user = unique_name("reader");
    let prefix = format!("{}-", unique_name("dh"));
    iam(&moto, &[("Action", "CreateUser"), ("UserName", &user)]).await;
    // The user may list secrets but not read them.
    let policy = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "secretsmanager:ListSecrets", "Resource": "*"}]}"#;
    iam(
        &moto,
        &[("Action", "PutUserPolicy"), ("UserName", &user), ("PolicyName", "list-only"), ("PolicyDocument", policy)],
    )
    .await;
    let keys = iam(&moto, &[("Action", "CreateAccessKey"), ("UserName", &user)]).await;
    let (key_id, secret_key) = (xml_value(&keys, "AccessKeyId"), xml_value(&keys, "SecretAccessKey"));
    let admin = Client::new(&moto.sdk_config().await);
    admin
        .create_secret()
        .name(format!("{prefix}DB_PASSWORD"))
        .secret_string("never-shown-3f9a")
        .send()
        .await
        .expect("CreateSecret (the last unauthenticated call)");

    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto.url())
        .region(aws_config::Region::new(integration_tests::moto::REGION))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(key_id, secret_key, None, None, "iam"))
        .load()
        .await;
    let store = AwsSecretsManagerStore::new(Client::new(&conf), prefix.clone());
    // The policy is enforced action by action: listing names works for this user.
    assert_eq!(store.names().await.expect("ListSecrets is allowed"), BTreeSet::from(["DB_PASSWORD".to_owned()]));

    let stores: Vec<Box<dyn SecretStore>> = vec![Box::new(store)];
    let err = resolve(&stores, &names(&["DB_PASSWORD", "OTHER"])).await.expect_err("denied is an error, not absent");
    let text = err.to_string();
    eprintln!("the store's error: {text}");
    assert!(text.contains("aws-sm"), "names the store: {text}");
    assert!(text.contains("DB_PASSWORD") && text.contains("OTHER"), "names the secrets: {text}");
    assert!(text.contains("HTTP 403: AccessDenied") && text.contains("not authorized"), "says why: {text}");
    assert!(text.len() < 600, "a short reason, not the raw response: {text}");
    assert!(!text.contains("never-shown-3f9a"), "no value in the error: {text}");
}
