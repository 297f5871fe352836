//! The search query of the scan, in Elasticsearch `query_string` syntax over the fields DataHub
//! indexes for `dataHubExecutionRequest` (`executorId` of the input, `executionResultStatus` of
//! the result; `reference/datahub-executor.md` §6.2).

/// `"value"` with `\` and `"` escaped: a pool id may hold characters the query syntax reserves
/// (`-`, `/`, `:`).
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The pool's requests that have no result yet or are RUNNING: what the feed and the sweeper act
/// on. The pool is checked again in code on every entity.
pub fn open_requests(pool: &str) -> String {
    format!("executorId:{} AND ((NOT _exists_:executionResultStatus) OR executionResultStatus:RUNNING)", quote(pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_quoted() {
        assert_eq!(
            open_requests("remote"),
            r#"executorId:"remote" AND ((NOT _exists_:executionResultStatus) OR executionResultStatus:RUNNING)"#
        );
        assert_eq!(quote(r#"a"b\c-d"#), r#""a\"b\\c-d""#);
    }
}
