//! Secret stores and how a recipe's names are resolved (DESIGN.md §5).
//!
//! Stores are asked in order and a later store's value wins, as in DataHub's executor
//! (`reference/datahub-executor.md` §4.1): `env` < `file` < `datahub`. A store that fails stops the
//! resolution with an error naming the store and the names; a name no store holds is simply absent
//! (the caller decides whether that is an error). Values stay in memory only.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::pin::Pin;

use crate::error::SecretStoreError;
use crate::gms::GmsClient;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place secrets can be read from by name.
pub trait SecretStore: Send + Sync {
    /// The store's name as users configure it (`env`, `file`, `datahub`, ...).
    fn name(&self) -> &'static str;
    /// The values this store holds for `names`; names it does not hold are absent.
    fn get<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<BTreeMap<String, String>, SecretStoreError>>;
}

/// Reads every name from every store; a later store's value wins.
pub async fn resolve(
    stores: &[Box<dyn SecretStore>],
    names: &[String],
) -> Result<BTreeMap<String, String>, SecretStoreError> {
    let refs: Vec<&dyn SecretStore> = stores.iter().map(|s| s.as_ref()).collect();
    resolve_in(&refs, names).await
}

/// [`resolve`] over borrowed stores.
pub async fn resolve_in(
    stores: &[&dyn SecretStore],
    names: &[String],
) -> Result<BTreeMap<String, String>, SecretStoreError> {
    let mut values = BTreeMap::new();
    if names.is_empty() {
        return Ok(values);
    }
    for store in stores {
        let found = store.get(names).await?;
        tracing::debug!(store = store.name(), found = found.len(), "secret store answered");
        values.extend(found);
    }
    Ok(values)
}

/// The `env` store: the job's environment (plus the request's `extra_env_vars`, which the run's
/// child process gets too).
#[derive(Debug, Clone, Default)]
pub struct EnvStore {
    vars: BTreeMap<String, String>,
}

impl EnvStore {
    /// A store over these variables.
    pub fn new(vars: BTreeMap<String, String>) -> Self {
        EnvStore { vars }
    }

    /// A store over the process environment, overlaid with `extra`.
    pub fn from_process(extra: &BTreeMap<String, String>) -> Self {
        let mut vars: BTreeMap<String, String> = std::env::vars().collect();
        vars.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        EnvStore { vars }
    }
}

impl SecretStore for EnvStore {
    fn name(&self) -> &'static str {
        "env"
    }

    fn get<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<BTreeMap<String, String>, SecretStoreError>> {
        Box::pin(
            async move { Ok(names.iter().filter_map(|n| self.vars.get(n).map(|v| (n.clone(), v.clone()))).collect()) },
        )
    }
}

/// The `file` store: one file per secret under a base folder (a Kubernetes or ECS secret mount).
/// Names are flat (`[A-Za-z0-9_]+` by construction); values longer than `max_len` characters are
/// cut, with a warning. Trailing line breaks are removed (files written by `echo` end with one);
/// other trailing whitespace is kept, unlike DataHub's `.rstrip()`, so a value stays byte for byte.
#[derive(Debug, Clone)]
pub struct FileStore {
    basedir: PathBuf,
    max_len: usize,
}

impl FileStore {
    pub fn new(basedir: PathBuf, max_len: usize) -> Self {
        FileStore { basedir, max_len }
    }

    fn read(&self, name: &str) -> Result<Option<String>, SecretStoreError> {
        let fail = |reason: String| SecretStoreError { store: "file", names: vec![name.to_owned()], reason };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(fail("secret names in the file store are flat names of [A-Za-z0-9_]".into()));
        }
        let path = self.basedir.join(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fail(format!("cannot open {}: {e}", path.display()))),
        };
        let mut bytes = Vec::new();
        // Up to 4 bytes a character: enough to see whether the value is longer than the limit.
        file.take((self.max_len as u64 + 1) * 4)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(bytes).map_err(|_| fail(format!("{} is not UTF-8 text", path.display())))?;
        let mut value: String = text.chars().take(self.max_len + 1).collect();
        if value.chars().count() > self.max_len {
            tracing::warn!(secret = name, max = self.max_len, "secret is longer than the limit and was truncated");
            value = value.chars().take(self.max_len).collect();
        }
        let trimmed_len = value.trim_end_matches(['\n', '\r']).len();
        value.truncate(trimmed_len);
        Ok(Some(value))
    }
}

impl SecretStore for FileStore {
    fn name(&self) -> &'static str {
        "file"
    }

    fn get<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<BTreeMap<String, String>, SecretStoreError>> {
        Box::pin(async move {
            let mut out = BTreeMap::new();
            for n in names {
                if let Some(v) = self.read(n)? {
                    out.insert(n.clone(), v);
                }
            }
            Ok(out)
        })
    }
}

/// The `datahub` store: secrets kept in DataHub, read with GraphQL `getSecretValues`.
#[derive(Debug, Clone)]
pub struct DatahubStore {
    gms: GmsClient,
}

impl DatahubStore {
    pub fn new(gms: GmsClient) -> Self {
        DatahubStore { gms }
    }
}

impl SecretStore for DatahubStore {
    fn name(&self) -> &'static str {
        "datahub"
    }

    fn get<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<BTreeMap<String, String>, SecretStoreError>> {
        Box::pin(async move {
            self.gms.get_secret_values(names).await.map_err(|e| SecretStoreError {
                store: "datahub",
                names: names.to_vec(),
                reason: e.to_string(),
            })
        })
    }
}

/// Whether a value looks like a JSON document where a string is expected (DataHub warns about
/// key/value secrets from AWS Secrets Manager, `reference/peer-executor.md` §3.1).
pub fn looks_like_json_document(value: &str) -> bool {
    matches!(
        serde_json::from_str::<serde_json::Value>(value),
        Ok(serde_json::Value::Object(_)) | Ok(serde_json::Value::Array(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn later_store_wins_and_missing_names_are_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("A"), "from-file\n").expect("write");
        std::fs::write(dir.path().join("T"), "keeps trailing space \n").expect("write");
        let env = EnvStore::new([("A".to_string(), "from-env".to_string()), ("B".into(), "env-b".into())].into());
        let file = FileStore::new(dir.path().to_path_buf(), 100);
        let stores: Vec<&dyn SecretStore> = vec![&env, &file];
        let names: Vec<String> = ["A", "B", "C", "T"].iter().map(|s| s.to_string()).collect();
        let v = resolve_in(&stores, &names).await.expect("ok");
        assert_eq!(v["A"], "from-file");
        assert_eq!(v["B"], "env-b");
        assert_eq!(v["T"], "keeps trailing space ");
        assert!(!v.contains_key("C"));
    }

    #[tokio::test]
    async fn file_store_truncates_and_names_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("LONG"), "abcdefgh").expect("write");
        std::fs::write(dir.path().join("BIN"), [0xff, 0xfe]).expect("write");
        let s = FileStore::new(dir.path().to_path_buf(), 4);
        assert_eq!(s.read("LONG").expect("ok").as_deref(), Some("abcd"));
        let e = s.read("BIN").expect_err("binary");
        assert!(e.to_string().contains("`file`") && e.to_string().contains("BIN"), "{e}");
        assert!(s.read("../etc").is_err());
    }

    #[test]
    fn json_documents_are_noticed() {
        assert!(looks_like_json_document(r#"{"password": "x"}"#));
        assert!(!looks_like_json_document("plain"));
        assert!(!looks_like_json_document("42"));
    }
}
