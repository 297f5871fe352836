//! The small part of Elasticsearch's `query_string` syntax the GMS emulator's scroll interprets,
//! honestly: `*`, `field:value`, `field:"quoted value"` (`\"` and `\\` escapes), `_exists_:field`,
//! `AND` / `&&`, `OR` / `||`, `NOT` / `!` and parentheses, with NOT binding tighter than AND,
//! and AND tighter than OR. Values match keyword fields exactly. Anything else (ranges,
//! wildcards in values, implicit operators between terms) is an error, answered with 400, so a
//! query the emulator cannot judge never passes silently.

use std::collections::BTreeMap;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    All,
    Term(String, String),
    Exists(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Not,
    And,
    Or,
    Atom(Expr),
}

fn tokenize(q: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                tokens.push(Token::Open);
                i += 1;
                continue;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
                continue;
            }
            '!' => {
                tokens.push(Token::Not);
                i += 1;
                continue;
            }
            _ => {}
        }
        // A word: up to whitespace or a parenthesis; a `:` followed by `"` starts a quoted value.
        let start = i;
        let mut field = None;
        let mut value = String::new();
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '(' && chars[i] != ')' {
            if chars[i] == ':' && field.is_none() {
                field = Some(chars[start..i].iter().collect::<String>());
                i += 1;
                if i < chars.len() && chars[i] == '"' {
                    i += 1;
                    let mut closed = false;
                    while i < chars.len() {
                        match chars[i] {
                            '\\' if i + 1 < chars.len() => {
                                value.push(chars[i + 1]);
                                i += 2;
                            }
                            '"' => {
                                closed = true;
                                i += 1;
                                break;
                            }
                            other => {
                                value.push(other);
                                i += 1;
                            }
                        }
                    }
                    if !closed {
                        return Err(format!("unclosed quote in {q:?}"));
                    }
                    break;
                }
                continue;
            }
            if field.is_some() {
                value.push(chars[i]);
            }
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let token = match (field, word.as_str()) {
            (None, "AND" | "&&") => Token::And,
            (None, "OR" | "||") => Token::Or,
            (None, "NOT") => Token::Not,
            (None, "*") => Token::Atom(Expr::All),
            (None, w) => return Err(format!("free text {w:?} is not supported by the GMS emulator's query parser")),
            (Some(f), _) if f.is_empty() => return Err(format!("empty field name in {word:?}")),
            (Some(_), _) if value.is_empty() => {
                return Err(format!("{word:?} has no value (ranges like `field: >1` are not supported)"));
            }
            (Some(f), _) if f == "_exists_" => Token::Atom(Expr::Exists(value)),
            (Some(_), _) if value.starts_with(['>', '<', '[', '{']) || value.contains(['*', '?']) => {
                return Err(format!("{word:?}: ranges and wildcards are not supported by the GMS emulator"));
            }
            (Some(f), _) => Token::Atom(Expr::Term(f, value)),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        let token = self.tokens.get(self.pos).cloned().ok_or("the query ends too early")?;
        self.pos += 1;
        match token {
            Token::Not => Ok(Expr::Not(Box::new(self.unary()?))),
            Token::Open => {
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err("missing `)`".into());
                }
                self.pos += 1;
                Ok(inner)
            }
            Token::Atom(e) => Ok(e),
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

/// Parses a query.
pub fn parse(q: &str) -> Result<Expr, String> {
    let tokens = tokenize(q)?;
    if tokens.is_empty() {
        return Ok(Expr::All);
    }
    let mut p = Parser { tokens, pos: 0 };
    let e = p.or()?;
    match p.peek() {
        None => Ok(e),
        Some(t) => Err(format!("unexpected {t:?} (implicit operators between terms are not supported)")),
    }
}

/// Whether a document (keyword field → value) matches.
pub fn matches(e: &Expr, doc: &BTreeMap<String, String>) -> bool {
    match e {
        Expr::All => true,
        Expr::Term(f, v) => doc.get(f) == Some(v),
        Expr::Exists(f) => doc.contains_key(f),
        Expr::Not(x) => !matches(x, doc),
        Expr::And(a, b) => matches(a, doc) && matches(b, doc),
        Expr::Or(a, b) => matches(a, doc) || matches(b, doc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_relays_query_and_the_sweepers() {
        let q =
            parse(r#"executorId:"remote" AND ((NOT _exists_:executionResultStatus) OR executionResultStatus:RUNNING)"#)
                .expect("parses");
        assert!(matches(&q, &doc(&[("executorId", "remote")])));
        assert!(matches(&q, &doc(&[("executorId", "remote"), ("executionResultStatus", "RUNNING")])));
        assert!(!matches(&q, &doc(&[("executorId", "remote"), ("executionResultStatus", "SUCCESS")])));
        assert!(!matches(&q, &doc(&[("executorId", "other")])));
        let q = parse("(!(_exists_:executionResultStatus)) || executionResultStatus:RUNNING").expect("parses");
        assert!(matches(&q, &doc(&[])));
        let q = parse(r#"executorId:"a \"b\" c""#).expect("escapes");
        assert!(matches(&q, &doc(&[("executorId", r#"a "b" c"#)])));
        assert!(matches(&parse("*").expect("all"), &doc(&[])));
    }

    #[test]
    fn what_it_cannot_judge_is_an_error() {
        for q in ["requestTimeMs: >1727740800000", "a:1 b:2", "hello", "a:\"open", "(a:1", "a:x*", "AND"] {
            assert!(parse(q).is_err(), "{q}");
        }
    }
}
