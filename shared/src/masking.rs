//! Masking of secret values in text, in one pass over the text whatever the number of secrets.
//!
//! Every rendering of a value is replaced by `***REDACTED:<NAME>***` (DataHub's marker,
//! `reference/peer-executor.md` §3.5): the value itself, each line of a multi-line value, its
//! escaped forms (Python repr with either quote, JSON), and its URL-encoded forms (DataHub's
//! `:`/`@`/`/` variant, `quote(v, safe='')` and `quote_plus(v)`). As in DataHub, values shorter than
//! 3 characters and boolean-like words are not registered (masking them would garble every log);
//! lines of a multi-line value are registered from 3 characters on. Existing markers are matched
//! as wholes, so masking is idempotent.

use std::borrow::Cow;
use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

const MIN_LEN: usize = 3;
const SKIPPED: [&str; 6] = ["true", "false", "yes", "no", "none", "null"];

/// Replaces registered secret renderings in text.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    automaton: Option<AhoCorasick>,
    replacements: Vec<String>,
    names: usize,
}

impl Masker {
    /// A masker for these `(name, value)` pairs.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut renderings: BTreeMap<String, String> = BTreeMap::new();
        let mut names = 0;
        for (name, value) in secrets {
            let marker = marker(name);
            let mut registered = false;
            for r in renderings_of(value) {
                if r.chars().count() >= MIN_LEN && !r.contains("***REDACTED:") {
                    renderings.entry(r).or_insert_with(|| marker.clone());
                    registered = true;
                }
            }
            if registered {
                renderings.insert(marker.clone(), marker);
                names += 1;
            }
        }
        if renderings.is_empty() {
            return Masker::default();
        }
        let (patterns, replacements): (Vec<String>, Vec<String>) = renderings.into_iter().unzip();
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)
            .or_else(|_| AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).build(&patterns))
            .ok();
        Masker { automaton, replacements, names }
    }

    /// How many secrets have at least one registered rendering.
    pub fn registered(&self) -> usize {
        self.names
    }

    /// Masks a text.
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match &self.automaton {
            Some(ac) if ac.is_match(text) => Cow::Owned(ac.replace_all(text, &self.replacements)),
            _ => Cow::Borrowed(text),
        }
    }

    /// Masks bytes that may not be UTF-8, then decodes them lossily: nothing here fails on bad bytes.
    pub fn mask_bytes_lossy(&self, bytes: &[u8]) -> String {
        match &self.automaton {
            Some(ac) if ac.is_match(bytes) => {
                String::from_utf8_lossy(&ac.replace_all_bytes(bytes, &self.replacements)).into_owned()
            }
            _ => String::from_utf8_lossy(bytes).into_owned(),
        }
    }
}

/// The marker that replaces a secret named `name`.
pub fn marker(name: &str) -> String {
    format!("***REDACTED:{name}***")
}

fn renderings_of(value: &str) -> Vec<String> {
    let trimmed = value.trim();
    if value.chars().count() < MIN_LEN || SKIPPED.contains(&trimmed.to_ascii_lowercase().as_str()) {
        return Vec::new();
    }
    let mut out = vec![value.to_owned()];
    if value.contains(['\n', '\r']) {
        out.extend(value.lines().map(str::trim).filter(|l| l.chars().count() >= MIN_LEN).map(str::to_owned));
    }
    if value.contains(['\n', '\r', '\t', '\\', '"', '\'']) || value.chars().any(char::is_control) {
        out.push(py_escape(value, '\''));
        out.push(py_escape(value, '"'));
        let json = serde_json::to_string(value).unwrap_or_default();
        out.push(json.trim_matches('"').to_owned());
    }
    out.push(value.replace(':', "%3A").replace('@', "%40").replace('/', "%2F"));
    out.push(percent_encode(value, false));
    out.push(percent_encode(value, true));
    out.sort();
    out.dedup();
    out
}

/// The inside of Python's `repr()` of `value` when quoted with `quote`.
fn py_escape(value: &str, quote: char) -> String {
    let mut s = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c == quote => {
                s.push('\\');
                s.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => s.push_str(&format!("\\x{:02x}", c as u32)),
            c => s.push(c),
        }
    }
    s
}

/// Python's `urllib.parse.quote(v, safe='')`, or `quote_plus(v)` when `plus`.
fn percent_encode(value: &str, plus: bool) -> String {
    let mut s = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => s.push(b as char),
            b' ' if plus => s.push('+'),
            _ => s.push_str(&format!("%{b:02X}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_rendering() {
        let pw = "pa$s\\w'o\"rd #:x y/@";
        let m = Masker::new([("PG", pw)]);
        let line =
            format!("raw={pw} repr={:?} url={} plus={}", pw, percent_encode(pw, false), percent_encode(pw, true));
        let masked = m.mask(&line);
        assert!(!masked.contains("rd #"), "{masked}");
        assert_eq!(masked.matches("***REDACTED:PG***").count(), 4, "{masked}");
        let py = format!("'{}'", py_escape(pw, '\''));
        assert_eq!(m.mask(&py), "'***REDACTED:PG***'");
    }

    #[test]
    fn multi_line_values_mask_each_line() {
        let key = "-----BEGIN KEY-----\nabcdefghijkl\n-----END KEY-----";
        let m = Masker::new([("KEY", key)]);
        assert_eq!(m.mask("got abcdefghijkl here"), "got ***REDACTED:KEY*** here");
        assert_eq!(m.mask(key), "***REDACTED:KEY***");
    }

    #[test]
    fn short_and_boolean_values_are_not_registered_and_masking_is_idempotent() {
        let m = Masker::new([("A", "ab"), ("B", "true"), ("C", "RED")]);
        assert_eq!(m.registered(), 1);
        assert_eq!(m.mask("ab true"), "ab true");
        let once = m.mask("RED").into_owned();
        assert_eq!(once, "***REDACTED:C***");
        assert_eq!(m.mask(&once), once);
    }

    #[test]
    fn longest_rendering_wins_and_bytes_survive() {
        let m = Masker::new([("S", "secret"), ("L", "secret-long")]);
        assert_eq!(m.mask("secret-long secret"), "***REDACTED:L*** ***REDACTED:S***");
        let bytes = b"\xff secret \xfe";
        assert_eq!(m.mask_bytes_lossy(bytes), "\u{fffd} ***REDACTED:S*** \u{fffd}");
    }
}
