//! The execution-request model: what DataHub asks an executor to run.
//!
//! GMS stores a request as the `dataHubExecutionRequestInput` aspect: `task`, `args` (a map of
//! strings), `executorId` and `source`. Every arg is a string; list and map args are JSON text
//! (`reference/peer-executor.md` §1.2), and we accept real JSON lists/maps too.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::RequestError;

/// The executor id DataHub's own CLI uses for requests it runs itself; such requests are never
/// dispatched to a pool or swept (`reference/datahub-executor.md` §1.1).
pub const CLI_EXECUTOR_ID: &str = "__datahub_cli_";
/// URN prefix of execution requests.
pub const EXECUTION_REQUEST_URN_PREFIX: &str = "urn:li:dataHubExecutionRequest:";
/// URN prefix of ingestion sources.
pub const INGESTION_SOURCE_URN_PREFIX: &str = "urn:li:dataHubIngestionSource:";

/// The two task kinds DataHub sends to an executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// `RUN_INGEST`: `datahub ingest run`.
    RunIngest,
    /// `TEST_CONNECTION`: the UI's "Test Connection" button.
    TestConnection,
}

impl TaskKind {
    /// The task name as DataHub writes it.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::RunIngest => "RUN_INGEST",
            TaskKind::TestConnection => "TEST_CONNECTION",
        }
    }

    /// Parses a task name; DataHub's names are upper case.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "RUN_INGEST" => Some(TaskKind::RunIngest),
            "TEST_CONNECTION" => Some(TaskKind::TestConnection),
            _ => None,
        }
    }
}

/// The args of a task, parsed from the request's string map.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskArgs {
    /// The recipe as text (JSON from GMS, YAML or JSON from a file).
    pub recipe: String,
    /// `latest`, `bundled`, `native`, a PEP 440 version or a wheel URL.
    pub version: String,
    pub extra_pip_requirements: Vec<String>,
    pub extra_pip_plugins: Vec<String>,
    pub extra_env_vars: BTreeMap<String, String>,
    pub debug_mode: bool,
}

impl TaskArgs {
    /// Args for a recipe with every optional field at DataHub's default.
    pub fn for_recipe(recipe: impl Into<String>) -> Self {
        TaskArgs {
            recipe: recipe.into(),
            version: "latest".to_owned(),
            extra_pip_requirements: Vec::new(),
            extra_pip_plugins: Vec::new(),
            extra_env_vars: BTreeMap::new(),
            debug_mode: false,
        }
    }

    /// Parses the `args` map of a `dataHubExecutionRequestInput` aspect.
    pub fn from_args(args: &serde_json::Map<String, Value>) -> Result<Self, RequestError> {
        let recipe = match args.get("recipe") {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            Some(_) => return Err(RequestError::bad("args.recipe", "must be a string")),
            None => return Err(RequestError::Missing("args.recipe")),
        };
        let version = match args.get("version") {
            None | Some(Value::Null) => "latest".to_owned(),
            Some(Value::String(s)) if s.trim().is_empty() => "latest".to_owned(),
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(_) => return Err(RequestError::bad("args.version", "must be a string")),
        };
        let debug = args
            .get("debug_mode")
            .or_else(|| args.get("debugMode"))
            .map(|v| match v {
                Value::String(s) => s.eq_ignore_ascii_case("true"),
                Value::Bool(b) => *b,
                _ => false,
            })
            .unwrap_or(false);
        Ok(TaskArgs {
            recipe,
            version,
            extra_pip_requirements: string_list(args.get("extra_pip_requirements"), "args.extra_pip_requirements")?,
            extra_pip_plugins: string_list(args.get("extra_pip_plugins"), "args.extra_pip_plugins")?,
            extra_env_vars: string_map(args.get("extra_env_vars"), "args.extra_env_vars")?,
            debug_mode: debug,
        })
    }

    /// The args as the string map DataHub stores (lists and maps as JSON text).
    pub fn to_args(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("recipe".into(), Value::String(self.recipe.clone()));
        m.insert("version".into(), Value::String(self.version.clone()));
        m.insert("debug_mode".into(), Value::String(self.debug_mode.to_string()));
        if !self.extra_pip_requirements.is_empty() {
            m.insert(
                "extra_pip_requirements".into(),
                Value::String(serde_json::json!(self.extra_pip_requirements).to_string()),
            );
        }
        if !self.extra_pip_plugins.is_empty() {
            m.insert("extra_pip_plugins".into(), Value::String(serde_json::json!(self.extra_pip_plugins).to_string()));
        }
        if !self.extra_env_vars.is_empty() {
            m.insert("extra_env_vars".into(), Value::String(serde_json::json!(self.extra_env_vars).to_string()));
        }
        m
    }
}

/// One execution request, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRequest {
    /// The id part of `urn:li:dataHubExecutionRequest:<id>`.
    pub exec_id: String,
    pub task: TaskKind,
    pub executor_id: Option<String>,
    pub args: TaskArgs,
    /// `urn:li:dataHubIngestionSource:<id>` when the request belongs to a source.
    pub ingestion_source: Option<String>,
}

impl ExecutionRequest {
    /// The request's URN.
    pub fn urn(&self) -> String {
        format!("{EXECUTION_REQUEST_URN_PREFIX}{}", self.exec_id)
    }

    /// Builds a request from the value of a `dataHubExecutionRequestInput` aspect.
    pub fn from_input_aspect(exec_id: &str, input: &Value) -> Result<Self, RequestError> {
        let obj = input
            .as_object()
            .ok_or_else(|| RequestError::bad("dataHubExecutionRequestInput", "is not a JSON object"))?;
        let task_name = obj.get("task").and_then(Value::as_str).ok_or(RequestError::Missing("task"))?;
        let task = TaskKind::parse(task_name).ok_or_else(|| RequestError::UnknownTask(task_name.to_owned()))?;
        let args = match obj.get("args") {
            Some(Value::Object(a)) => TaskArgs::from_args(a)?,
            Some(_) => return Err(RequestError::bad("args", "is not a map")),
            None => return Err(RequestError::Missing("args")),
        };
        let ingestion_source =
            obj.get("source").and_then(|s| s.get("ingestionSource")).and_then(Value::as_str).map(str::to_owned);
        Ok(ExecutionRequest {
            exec_id: exec_id.to_owned(),
            task,
            executor_id: obj.get("executorId").and_then(Value::as_str).map(str::to_owned),
            args,
            ingestion_source,
        })
    }
}

/// The id of an execution request URN (its last `:` segment, as DataHub does), or the text itself
/// when it is already a bare id. Rejects empty ids and URNs of other entity types.
pub fn exec_id_from_urn(urn_or_id: &str) -> Result<String, RequestError> {
    let id = if let Some(rest) = urn_or_id.strip_prefix(EXECUTION_REQUEST_URN_PREFIX) {
        rest
    } else if urn_or_id.starts_with("urn:") {
        return Err(RequestError::bad(
            "execution request",
            format!("{urn_or_id:?} is not a urn:li:dataHubExecutionRequest URN"),
        ));
    } else {
        urn_or_id
    };
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(RequestError::bad("execution request", format!("{urn_or_id:?} has no valid id")));
    }
    Ok(id.to_owned())
}

/// A fresh execution id (a UUID, as DataHub uses).
pub fn new_exec_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn string_list(v: Option<&Value>, field: &'static str) -> Result<Vec<String>, RequestError> {
    let parsed;
    let v = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Vec::new()),
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|e| RequestError::bad(field, format!("is not a JSON list: {e}")))?;
            &parsed
        }
        Some(v) => v,
    };
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(RequestError::bad(field, "must hold only strings")),
            })
            .collect(),
        _ => Err(RequestError::bad(field, "is not a list")),
    }
}

fn string_map(v: Option<&Value>, field: &'static str) -> Result<BTreeMap<String, String>, RequestError> {
    let parsed;
    let v = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(BTreeMap::new()),
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|e| RequestError::bad(field, format!("is not a JSON map: {e}")))?;
            &parsed
        }
        Some(v) => v,
    };
    let obj = v.as_object().ok_or_else(|| RequestError::bad(field, "is not a map"))?;
    obj.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(RequestError::bad(field, format!("value of {k} must be a string"))),
            };
            Ok((k.clone(), s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_gms_string_args() {
        let input = json!({
            "task": "RUN_INGEST",
            "executorId": "remote",
            "source": {"type": "MANUAL_INGESTION_SOURCE", "ingestionSource": "urn:li:dataHubIngestionSource:abc"},
            "args": {
                "recipe": "{\"source\": {\"type\": \"file\"}}",
                "version": "1.7.0.17",
                "debug_mode": "True",
                "extra_pip_requirements": "[\"pkg==1\"]",
                "extra_env_vars": "{\"EXECUTOR_TASK_WEIGHT\": \"0.5\", \"N\": 3}"
            }
        });
        let r = ExecutionRequest::from_input_aspect("e1", &input).expect("parses");
        assert_eq!(r.task, TaskKind::RunIngest);
        assert_eq!(r.executor_id.as_deref(), Some("remote"));
        assert_eq!(r.args.version, "1.7.0.17");
        assert!(r.args.debug_mode);
        assert_eq!(r.args.extra_pip_requirements, vec!["pkg==1"]);
        assert_eq!(r.args.extra_env_vars["N"], "3");
        assert_eq!(r.ingestion_source.as_deref(), Some("urn:li:dataHubIngestionSource:abc"));
        assert_eq!(r.urn(), "urn:li:dataHubExecutionRequest:e1");
    }

    #[test]
    fn defaults_and_errors_name_the_field() {
        let r = TaskArgs::from_args(json!({"recipe": "x", "extra_env_vars": ""}).as_object().expect("obj"))
            .expect("parses");
        assert_eq!(r.version, "latest");
        assert!(r.extra_env_vars.is_empty());
        let e = TaskArgs::from_args(json!({"recipe": "x", "extra_pip_plugins": "[1"}).as_object().expect("obj"))
            .expect_err("bad json");
        assert!(e.to_string().contains("args.extra_pip_plugins"), "{e}");
        let e = ExecutionRequest::from_input_aspect("e", &json!({"task": "ASSERTION", "args": {}})).expect_err("task");
        assert!(e.to_string().contains("ASSERTION"), "{e}");
    }

    #[test]
    fn exec_ids_from_urns() {
        assert_eq!(exec_id_from_urn("urn:li:dataHubExecutionRequest:abc-1").expect("ok"), "abc-1");
        assert_eq!(exec_id_from_urn("abc").expect("ok"), "abc");
        assert!(exec_id_from_urn("urn:li:dataset:x").is_err());
        assert!(exec_id_from_urn("urn:li:dataHubExecutionRequest:").is_err());
    }
}
