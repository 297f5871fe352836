//! Recipes and their variables (DESIGN.md §6).
//!
//! A recipe string value may hold references: `${NAME}`, `${NAME:-default}` (default when unset or
//! empty) and `${NAME-default}` (default when unset; bash semantics, where the CLI's `expandvars`
//! also treats empty as unset), with NAME in `[A-Za-z0-9_]+` and defaults that may themselves hold
//! references. `\$` is a literal `$`. Any other `$` is literal, and so is every backslash not
//! followed by `$`. Only values are expanded, never keys, as the DataHub CLI does.
//!
//! Values are inserted byte for byte and never re-expanded. Because the CLI (>= 1.5.0.15) expands
//! `${...}` itself from the stdin envelope's `__secrets__`, [`prepare_for_cli`] leaves a string
//! untouched only when the CLI's expansion gives exactly our result (plain `${NAME}` references and
//! no other `$` or backslash); otherwise it hands the CLI a fresh variable holding our result, so
//! that no secret value is ever re-read as a pattern.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::error::RecipeError;

/// Prefix of the variables [`prepare_for_cli`] adds to the envelope.
pub const INDIRECT_VALUE_PREFIX: &str = "DATAHUB_EXECUTOR_VALUE_";

/// Parses recipe text: JSON (as GMS sends it) or YAML (as people write it).
pub fn parse_recipe(text: &str) -> Result<Value, RecipeError> {
    let value = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(_) => serde_yaml_ng::from_str::<Value>(text).map_err(|e| RecipeError::Parse(e.to_string()))?,
    };
    if !value.is_object() || value.get("source").is_none() {
        return Err(RecipeError::NotAMap);
    }
    source_type(&value)?;
    Ok(value)
}

/// The recipe's `source.type` (the plugin name).
pub fn source_type(recipe: &Value) -> Result<&str, RecipeError> {
    recipe
        .get("source")
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .ok_or(RecipeError::MissingSourceType)
}

/// The names a recipe references.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Names referenced at least once without a default: a run fails if no store has them.
    pub required: BTreeSet<String>,
    /// Names referenced only with a default.
    pub optional: BTreeSet<String>,
}

impl References {
    /// Every referenced name.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.required.iter().chain(self.optional.iter())
    }
}

/// Collects the names referenced in the recipe's string values.
pub fn references(recipe: &Value) -> Result<References, RecipeError> {
    let mut refs = References::default();
    walk_strings(recipe, &mut String::new(), &mut |path, s| {
        let segs = parse_segments(s).map_err(|reason| RecipeError::BadReference { path: path.to_owned(), reason })?;
        collect_names(&segs, &mut refs);
        Ok(())
    })?;
    let required = refs.required.clone();
    refs.optional.retain(|n| !required.contains(n));
    Ok(refs)
}

/// The recipe with every reference replaced by its value: for CLIs that do not read the envelope.
pub fn substitute(recipe: &Value, values: &BTreeMap<String, String>) -> Result<Value, RecipeError> {
    let mut missing = BTreeSet::new();
    let out = map_strings(recipe, &mut String::new(), &mut |path, s| {
        let segs = parse_segments(s).map_err(|reason| RecipeError::BadReference { path: path.to_owned(), reason })?;
        if !has_reference_or_escape(&segs, s) {
            return Ok(Value::String(s.to_owned()));
        }
        let mut used = false;
        Ok(Value::String(resolve(&segs, values, &mut used, &mut missing)))
    })?;
    if missing.is_empty() { Ok(out) } else { Err(RecipeError::Unresolved(missing.into_iter().collect())) }
}

/// A variable that is never set: appended to a string as `${NAME:-}`, it expands to nothing and makes
/// the CLI run its expansion (and so its unescaping) over the whole string.
pub const NOTHING_VARIABLE: &str = "DATAHUB_EXECUTOR_NOTHING_2F7C";

/// The recipe for a CLI that predates the stdin envelope (< 1.5.0.15): every reference replaced by
/// its value, and every string the CLI would expand again escaped so that its expansion gives the
/// value back byte for byte (`\` → `\\`, `$` → `\$`, plus an empty `${NOTHING:-}` that makes sure
/// the CLI expands, and so unescapes, the whole string).
pub fn substitute_for_old_cli(recipe: &Value, values: &BTreeMap<String, String>) -> Result<Value, RecipeError> {
    let resolved = substitute(recipe, values)?;
    map_strings(&resolved, &mut String::new(), &mut |_, s| {
        if cli_would_expand(s) {
            Ok(Value::String(format!("{}${{{NOTHING_VARIABLE}:-}}", s.replace('\\', "\\\\").replace('$', "\\$"))))
        } else {
            Ok(Value::String(s.to_owned()))
        }
    })
}

/// A recipe prepared for the CLI's stdin envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct CliRecipe {
    /// The recipe to put in `__recipe_yaml__`.
    pub recipe: Value,
    /// The variables to put in `__secrets__`.
    pub variables: BTreeMap<String, String>,
}

/// Prepares a recipe for a CLI that reads the stdin envelope (see the module docs).
pub fn prepare_for_cli(recipe: &Value, values: &BTreeMap<String, String>) -> Result<CliRecipe, RecipeError> {
    let mut missing = BTreeSet::new();
    let mut variables = BTreeMap::new();
    let mut counter = 0usize;
    let out = map_strings(recipe, &mut String::new(), &mut |path, s| {
        let segs = parse_segments(s).map_err(|reason| RecipeError::BadReference { path: path.to_owned(), reason })?;
        if !has_reference_or_escape(&segs, s) && !cli_would_expand(s) {
            return Ok(Value::String(s.to_owned()));
        }
        let mut used_store_value = false;
        let resolved = resolve(&segs, values, &mut used_store_value, &mut missing);
        if is_plain_passthrough(&segs, s, values) {
            for seg in &segs {
                if let Seg::Ref { name, .. } = seg
                    && let Some(v) = values.get(name)
                {
                    variables.insert(name.clone(), v.clone());
                }
            }
            return Ok(Value::String(s.to_owned()));
        }
        if used_store_value || cli_would_expand(&resolved) {
            counter += 1;
            let name = format!("{INDIRECT_VALUE_PREFIX}{counter}");
            variables.insert(name.clone(), resolved);
            return Ok(Value::String(format!("${{{name}}}")));
        }
        Ok(Value::String(resolved))
    })?;
    if missing.is_empty() {
        Ok(CliRecipe { recipe: out, variables })
    } else {
        Err(RecipeError::Unresolved(missing.into_iter().collect()))
    }
}

/// Whether the DataHub CLI's `EnvResolver` would run `expandvars` over this string
/// (`reference/peer-executor.md` §3.3: `(\$\{).+(\})` anywhere, or a leading `$`).
pub fn cli_would_expand(s: &str) -> bool {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\$\{.+\}").expect("static regex"));
    s.starts_with('$') || PATTERN.is_match(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultWhen {
    /// `${NAME:-d}`
    UnsetOrEmpty,
    /// `${NAME-d}`
    Unset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Ref { name: String, default: Option<(DefaultWhen, Vec<Seg>)> },
}

fn parse_segments(s: &str) -> Result<Vec<Seg>, String> {
    let chars: Vec<char> = s.chars().collect();
    let (segs, pos) = parse_until(&chars, 0, false)?;
    debug_assert_eq!(pos, chars.len());
    Ok(segs)
}

/// Parses from `pos` to the end, or, inside a default, to the `}` that closes it (returned position
/// is just after that brace).
fn parse_until(chars: &[char], mut pos: usize, in_default: bool) -> Result<(Vec<Seg>, usize), String> {
    let mut segs = Vec::new();
    let mut lit = String::new();
    while pos < chars.len() {
        let c = chars[pos];
        if c == '\\' && chars.get(pos + 1) == Some(&'$') {
            lit.push('$');
            pos += 2;
        } else if c == '$' && chars.get(pos + 1) == Some(&'{') {
            if !lit.is_empty() {
                segs.push(Seg::Lit(std::mem::take(&mut lit)));
            }
            let (seg, next) = parse_reference(chars, pos)?;
            segs.push(seg);
            pos = next;
        } else if c == '}' && in_default {
            if !lit.is_empty() {
                segs.push(Seg::Lit(lit));
            }
            return Ok((segs, pos + 1));
        } else {
            lit.push(c);
            pos += 1;
        }
    }
    if in_default {
        return Err("a default value has no closing `}`".to_owned());
    }
    if !lit.is_empty() {
        segs.push(Seg::Lit(lit));
    }
    Ok((segs, pos))
}

/// Parses `${...}` starting at `start` (the `$`).
fn parse_reference(chars: &[char], start: usize) -> Result<(Seg, usize), String> {
    let mut pos = start + 2;
    let name_start = pos;
    while pos < chars.len() && (chars[pos].is_ascii_alphanumeric() || chars[pos] == '_') {
        pos += 1;
    }
    let name: String = chars[name_start..pos].iter().collect();
    let shown = |end: usize| -> String { chars[start..end.min(chars.len())].iter().take(40).collect() };
    if name.is_empty() {
        return Err(format!("`{}` has no variable name (names are [A-Za-z0-9_]+)", shown(pos + 1)));
    }
    match chars.get(pos) {
        Some('}') => Ok((Seg::Ref { name, default: None }, pos + 1)),
        Some(':') if chars.get(pos + 1) == Some(&'-') => {
            let (segs, next) = parse_until(chars, pos + 2, true)?;
            Ok((Seg::Ref { name, default: Some((DefaultWhen::UnsetOrEmpty, segs)) }, next))
        }
        Some('-') => {
            let (segs, next) = parse_until(chars, pos + 1, true)?;
            Ok((Seg::Ref { name, default: Some((DefaultWhen::Unset, segs)) }, next))
        }
        None => Err(format!("`{}` has no closing `}}`", shown(pos))),
        Some(_) => Err(format!(
            "`{}` is not supported (use ${{NAME}}, ${{NAME:-default}} or ${{NAME-default}})",
            shown(pos + 1)
        )),
    }
}

fn collect_names(segs: &[Seg], refs: &mut References) {
    for seg in segs {
        if let Seg::Ref { name, default } = seg {
            match default {
                None => {
                    refs.required.insert(name.clone());
                }
                Some((_, d)) => {
                    refs.optional.insert(name.clone());
                    collect_names(d, refs);
                }
            }
        }
    }
}

fn resolve(segs: &[Seg], values: &BTreeMap<String, String>, used: &mut bool, missing: &mut BTreeSet<String>) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Lit(l) => out.push_str(l),
            Seg::Ref { name, default } => {
                let found = values.get(name);
                let take_default = match (default, found) {
                    (None, Some(_)) => false,
                    (None, None) => {
                        missing.insert(name.clone());
                        false
                    }
                    (Some((DefaultWhen::UnsetOrEmpty, _)), Some(v)) => v.is_empty(),
                    (Some((DefaultWhen::Unset, _)), Some(_)) => false,
                    (Some(_), None) => true,
                };
                if take_default {
                    if let Some((_, d)) = default {
                        out.push_str(&resolve(d, values, used, missing));
                    }
                } else if let Some(v) = found {
                    *used = true;
                    out.push_str(v);
                }
            }
        }
    }
    out
}

fn has_reference_or_escape(segs: &[Seg], original: &str) -> bool {
    segs.iter().any(|s| matches!(s, Seg::Ref { .. })) || original.contains("\\$")
}

/// True when the CLI's own expansion of `original` gives exactly our resolution: only plain
/// `${NAME}` references that resolve, and no other `$` or any backslash.
fn is_plain_passthrough(segs: &[Seg], original: &str, values: &BTreeMap<String, String>) -> bool {
    !original.contains('\\')
        && segs.iter().all(|s| match s {
            Seg::Lit(l) => !l.contains('$'),
            Seg::Ref { name, default } => default.is_none() && values.contains_key(name),
        })
}

type StrFn<'a> = dyn FnMut(&str, &str) -> Result<(), RecipeError> + 'a;
type MapFn<'a> = dyn FnMut(&str, &str) -> Result<Value, RecipeError> + 'a;

fn walk_strings(v: &Value, path: &mut String, f: &mut StrFn<'_>) -> Result<(), RecipeError> {
    match v {
        Value::String(s) => f(path, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk_strings(item, path, f)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk_strings(item, path, f)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn map_strings(v: &Value, path: &mut String, f: &mut MapFn<'_>) -> Result<Value, RecipeError> {
    match v {
        Value::String(s) => f(path, s),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(map_strings(item, path, f)?);
                path.truncate(len);
            }
            Ok(Value::Array(out))
        }
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                out.insert(k.clone(), map_strings(item, path, f)?);
                path.truncate(len);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vals(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_yaml_and_json() {
        let y = parse_recipe("source:\n  type: postgres\n  config: {host: h}\n").expect("yaml");
        assert_eq!(source_type(&y).expect("type"), "postgres");
        let j = parse_recipe(r#"{"source": {"type": "file"}}"#).expect("json");
        assert_eq!(source_type(&j).expect("type"), "file");
        assert_eq!(
            parse_recipe("source: [unclosed").expect_err("bad").to_string().split(':').next(),
            Some("the recipe is not valid YAML or JSON")
        );
        assert_eq!(parse_recipe("just text"), Err(RecipeError::NotAMap));
        assert_eq!(parse_recipe("source: {config: {}}"), Err(RecipeError::MissingSourceType));
    }

    #[test]
    fn collects_required_and_optional_names() {
        let r = json!({"source": {"type": "x", "config": {
            "a": "${A}", "b": "pre ${B:-${C}} ${D-x}", "${KEY}": "keys are not expanded", "e": ["${E}"], "n": 5,
            "lit": "cost $5 \\${NOT} $$"
        }}});
        let refs = references(&r).expect("refs");
        assert_eq!(refs.required, ["A", "C", "E"].iter().map(|s| s.to_string()).collect());
        assert_eq!(refs.optional, ["B", "D"].iter().map(|s| s.to_string()).collect());
    }

    #[test]
    fn bad_references_name_the_path() {
        for bad in ["${ A}", "${A", "${A:1:2}", "${}", "${A:-x"] {
            let r = json!({"source": {"type": "x", "config": {"list": [bad]}}});
            let e = references(&r).expect_err(bad);
            assert!(e.to_string().contains("source.config.list[0]"), "{e}");
        }
    }

    #[test]
    fn substitutes_byte_for_byte_without_reexpansion() {
        let nasty = "pa$s\\w'o\"rd #:x y ${OTHER} $$";
        let r = json!({"source": {"type": "x", "config": {
            "p": "${P}", "uri": "u:${P}@h", "d1": "${UNSET:-dflt}", "d2": "${EMPTY:-dflt}", "d3": "${EMPTY-dflt}",
            "esc": "\\${P}", "lit": "a$b\\c"
        }}});
        let out = substitute(&r, &vals(&[("P", nasty), ("EMPTY", "")])).expect("ok");
        let c = &out["source"]["config"];
        assert_eq!(c["p"], nasty);
        assert_eq!(c["uri"], format!("u:{nasty}@h"));
        assert_eq!(c["d1"], "dflt");
        assert_eq!(c["d2"], "dflt");
        assert_eq!(c["d3"], "");
        assert_eq!(c["esc"], "${P}");
        assert_eq!(c["lit"], "a$b\\c");
        let e = substitute(&r, &vals(&[])).expect_err("missing");
        assert_eq!(e, RecipeError::Unresolved(vec!["P".into()]));
    }

    #[test]
    fn prepares_plain_references_for_the_cli_and_indirects_the_rest() {
        let r = json!({"source": {"type": "x", "config": {
            "p": "${P}", "uri": "postgresql://u:${P}@h", "d": "${H:-localhost}", "esc": "\\${P}", "dollar": "$HOME",
            "plain": "text"
        }}});
        let out = prepare_for_cli(&r, &vals(&[("P", "s3cr$t")])).expect("ok");
        let c = &out.recipe["source"]["config"];
        assert_eq!(c["p"], "${P}");
        assert_eq!(c["uri"], "postgresql://u:${P}@h");
        assert_eq!(c["d"], "localhost");
        assert_eq!(c["plain"], "text");
        // `\${P}` resolves to the literal `${P}`, which the CLI would expand: it goes through a variable.
        let esc_var = c["esc"].as_str().expect("str").trim_start_matches("${").trim_end_matches('}');
        assert_eq!(out.variables[esc_var], "${P}");
        let dollar_var = c["dollar"].as_str().expect("str").trim_start_matches("${").trim_end_matches('}');
        assert_eq!(out.variables[dollar_var], "$HOME");
        assert_eq!(out.variables["P"], "s3cr$t");
    }

    #[test]
    fn old_cli_recipes_escape_what_the_cli_would_expand() {
        let r =
            json!({"source": {"type": "x", "config": {"p": "${P}", "plain": "${Q}", "lit": "$HOME", "keep": "a$b"}}});
        let out = substitute_for_old_cli(&r, &vals(&[("P", "a\\b${X}$"), ("Q", "plain")])).expect("ok");
        let c = &out["source"]["config"];
        assert_eq!(c["p"], format!("a\\\\b\\${{X}}\\$${{{NOTHING_VARIABLE}:-}}"));
        assert_eq!(c["plain"], "plain");
        assert_eq!(c["lit"], format!("\\$HOME${{{NOTHING_VARIABLE}:-}}"));
        assert_eq!(c["keep"], "a$b");
    }

    #[test]
    fn cli_trigger_matches_the_cli() {
        assert!(cli_would_expand("${A}"));
        assert!(cli_would_expand("$A"));
        assert!(cli_would_expand("x ${A} y"));
        assert!(!cli_would_expand("x$A"));
        assert!(!cli_would_expand("^foo$"));
        assert!(!cli_would_expand("x${}"));
    }
}
