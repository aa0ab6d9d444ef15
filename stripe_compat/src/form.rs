//! `application/x-www-form-urlencoded` with Stripe's bracket notation, as the official SDKs
//! encode it: `metadata[order_no]=7`, `expand[]=x` or `expand[0]=x`, nested as deep as
//! [`MAX_DEPTH`]. Decoding is strict: a bad percent escape, invalid UTF-8, a parameter given
//! twice or both as a value and as a hash is refused with an error naming it, never guessed.

use crate::error::StripeError;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Most `name=value` pairs a body or query may hold.
pub const MAX_PAIRS: usize = 1_000;
/// Most bracket levels below a parameter's name (`a[b][c]` is 2).
pub const MAX_DEPTH: usize = 4;
/// Longest list a parameter may hold (`expand[]`, …).
pub const MAX_LIST_LEN: usize = 100;

/// A decoded parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Str(String),
    Map(BTreeMap<String, Value>),
    List(Vec<Value>),
}

/// All parameters of one request, read (and removed) one by one; [`Params::finish`] refuses
/// what no reader took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    root: BTreeMap<String, Value>,
}

/// One segment of a parameter name: `name`, `[key]`, `[]`, `[3]`.
enum Segment<'a> {
    Key(&'a str),
    Append,
    Index(usize),
}

fn invalid(param: &str, message: impl Into<String>) -> StripeError {
    StripeError::invalid_param(param, message)
}

/// Percent-decodes `raw` (`+` is a space); refuses a broken escape and invalid UTF-8.
fn unescape(raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => out.push(byte),
                    None => return Err("a malformed percent escape".into()),
                }
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "bytes that are not UTF-8".to_string())
}

/// Splits `a[b][]` into its segments.
fn segments(name: &str) -> Result<Vec<Segment<'_>>, String> {
    let (root, mut rest) = match name.find('[') {
        Some(at) => (&name[..at], &name[at..]),
        None => (name, ""),
    };
    if root.is_empty() {
        return Err("a parameter name is empty".into());
    }
    let mut out = vec![Segment::Key(root)];
    while !rest.is_empty() {
        let inner = rest
            .strip_prefix('[')
            .and_then(|r| r.find(']').map(|end| (&r[..end], &r[end + 1..])));
        let Some((inner, after)) = inner else {
            return Err(format!("`{name}` has unbalanced brackets"));
        };
        if inner.contains('[') {
            return Err(format!("`{name}` has unbalanced brackets"));
        }
        out.push(if inner.is_empty() {
            Segment::Append
        } else if inner.bytes().all(|b| b.is_ascii_digit()) && inner.len() <= 4 {
            Segment::Index(inner.parse().unwrap_or(usize::MAX))
        } else {
            Segment::Key(inner)
        });
        rest = after;
    }
    if out.len() > MAX_DEPTH + 1 {
        return Err(format!("`{name}` is nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(out)
}

/// An empty container of the kind `segment` indexes.
fn container_for(segment: &Segment<'_>) -> Value {
    match segment {
        Segment::Key(_) => Value::Map(BTreeMap::new()),
        Segment::Append | Segment::Index(_) => Value::List(Vec::new()),
    }
}

/// Puts `value` at `path` below `slot` (`slot` itself when `path` is empty).
fn insert(slot: &mut Value, path: &[Segment<'_>], value: String, name: &str) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Err(format!("`{name}` is given more than once"));
    };
    let conflict = || format!("`{name}` is given both as a value and as a hash or list");
    let child: &mut Value = match (slot, first) {
        (Value::Map(map), Segment::Key(key)) => {
            if rest.is_empty() {
                if map.contains_key(*key) {
                    return Err(format!("`{name}` is given more than once"));
                }
                map.insert((*key).to_string(), Value::Str(value));
                return Ok(());
            }
            map.entry((*key).to_string())
                .or_insert_with(|| container_for(&rest[0]))
        }
        (Value::List(list), Segment::Append | Segment::Index(_)) => {
            let at = match first {
                Segment::Index(i) => *i,
                _ => list.len(),
            };
            if at > list.len() || at >= MAX_LIST_LEN {
                return Err(format!(
                    "`{name}`: list indexes must count up from 0, at most {}",
                    MAX_LIST_LEN - 1
                ));
            }
            if at == list.len() {
                if rest.is_empty() {
                    list.push(Value::Str(value));
                    return Ok(());
                }
                list.push(container_for(&rest[0]));
            } else if rest.is_empty() {
                return Err(format!("`{name}` is given more than once"));
            }
            &mut list[at]
        }
        _ => return Err(conflict()),
    };
    if matches!(child, Value::Str(_)) {
        return Err(conflict());
    }
    insert(child, rest, value, name)
}

impl Params {
    /// Decodes a body or a query string (without the `?`).
    pub fn decode(input: &[u8]) -> Result<Self, StripeError> {
        let mut root = Value::Map(BTreeMap::new());
        let mut pairs = 0;
        for pair in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            pairs += 1;
            if pairs > MAX_PAIRS {
                return Err(StripeError::invalid(format!(
                    "The request has more than {MAX_PAIRS} parameters"
                )));
            }
            let (raw_name, raw_value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &pair[..0]),
            };
            let name = unescape(raw_name)
                .map_err(|e| StripeError::invalid(format!("A parameter name contains {e}")))?;
            let value = unescape(raw_value)
                .map_err(|e| invalid(&name, format!("The value of `{name}` contains {e}")))?;
            let path = segments(&name).map_err(|e| invalid(&name, e))?;
            insert(&mut root, &path, value, &name).map_err(|e| invalid(&name, e))?;
        }
        match root {
            Value::Map(root) => Ok(Self { root }),
            _ => Err(StripeError::invalid("The request could not be decoded")),
        }
    }

    /// The decoded tree (for tests and logs of parameter names).
    pub fn tree(&self) -> &BTreeMap<String, Value> {
        &self.root
    }

    /// SHA-256 (hex) of the parameters in a canonical form (keys sorted), prefixed with
    /// `scope`: two requests with the same parameters have the same fingerprint, in any order.
    pub fn fingerprint(&self, scope: &str) -> String {
        let canonical = serde_json::to_string(&self.root).unwrap_or_default();
        hex::encode(Sha256::digest(format!("{scope}\n{canonical}").as_bytes()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.root.contains_key(name)
    }

    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.root.remove(name)
    }

    /// A string parameter.
    pub fn string(&mut self, name: &str) -> Result<Option<String>, StripeError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(
                name,
                format!("Invalid string: `{name}` must be a single value"),
            )),
        }
    }

    /// A required string parameter.
    pub fn required_string(&mut self, name: &str) -> Result<String, StripeError> {
        self.string(name)?
            .ok_or_else(|| StripeError::missing_param(name))
    }

    /// An integer parameter: an optional `-` and decimal digits, nothing else (no fractions,
    /// no exponent, no spaces): amounts are integers in minor units.
    pub fn integer(&mut self, name: &str) -> Result<Option<i64>, StripeError> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => parse_integer(&s)
                .map(Some)
                .ok_or_else(|| invalid(name, format!("Invalid integer: {}", shown(&s)))),
        }
    }

    /// A boolean parameter: `true` or `false`.
    pub fn boolean(&mut self, name: &str) -> Result<Option<bool>, StripeError> {
        match self.string(name)?.as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(invalid(name, format!("Invalid boolean: {}", shown(other)))),
        }
    }

    /// A hash of strings (`metadata[k]=v`). An empty value (`metadata=`) is an empty hash,
    /// as in Stripe.
    pub fn string_map(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, StripeError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Str(s)) if s.is_empty() => Ok(Some(BTreeMap::new())),
            Some(Value::Map(map)) => map
                .into_iter()
                .map(|(k, v)| match v {
                    Value::Str(v) => Ok((k, v)),
                    _ => Err(invalid(
                        &format!("{name}[{k}]"),
                        format!("Invalid value: `{name}[{k}]` must be a string"),
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(invalid(
                name,
                format!("Invalid hash: `{name}` must be a hash"),
            )),
        }
    }

    /// A list of strings (`expand[]=a&expand[]=b`).
    pub fn string_list(&mut self, name: &str) -> Result<Vec<String>, StripeError> {
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::List(list)) => list
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Str(v) => Ok(v),
                    _ => Err(invalid(
                        &format!("{name}[{i}]"),
                        format!("Invalid value: `{name}[{i}]` must be a string"),
                    )),
                })
                .collect(),
            Some(_) => Err(invalid(
                name,
                format!("Invalid array: `{name}` must be a list"),
            )),
        }
    }

    /// A range filter as Stripe's lists take it: `created=<t>` or `created[gte|gt|lte|lt]=<t>`.
    /// Returns inclusive bounds.
    pub fn range(&mut self, name: &str) -> Result<(Option<i64>, Option<i64>), StripeError> {
        let bound = |key: &str, value: Value| match value {
            Value::Str(s) => parse_integer(&s).ok_or_else(|| {
                invalid(
                    &format!("{name}[{key}]"),
                    format!("Invalid integer: {}", shown(&s)),
                )
            }),
            _ => Err(invalid(&format!("{name}[{key}]"), "Invalid integer")),
        };
        match self.take(name) {
            None => Ok((None, None)),
            Some(Value::Str(s)) => {
                let at = parse_integer(&s)
                    .ok_or_else(|| invalid(name, format!("Invalid integer: {}", shown(&s))))?;
                Ok((Some(at), Some(at)))
            }
            Some(Value::Map(map)) => {
                let (mut low, mut high) = (None::<i64>, None::<i64>);
                for (key, value) in map {
                    let at = bound(&key, value)?;
                    let (slot, at) = match key.as_str() {
                        "gte" => (&mut low, Some(at)),
                        "gt" => (&mut low, at.checked_add(1)),
                        "lte" => (&mut high, Some(at)),
                        "lt" => (&mut high, at.checked_sub(1)),
                        _ => {
                            return Err(invalid(
                                &format!("{name}[{key}]"),
                                format!("Received unknown parameter: {name}[{key}]"),
                            ))
                        }
                    };
                    let at =
                        at.ok_or_else(|| invalid(&format!("{name}[{key}]"), "Out of range"))?;
                    *slot = Some(match (*slot, key.starts_with("gt")) {
                        (Some(old), true) => old.max(at),
                        (Some(old), false) => old.min(at),
                        (None, _) => at,
                    });
                }
                Ok((low, high))
            }
            Some(Value::List(_)) => Err(invalid(name, format!("Invalid hash: `{name}`"))),
        }
    }

    /// Refuses the first parameter no reader took, as Stripe does.
    pub fn finish(self) -> Result<(), StripeError> {
        match self.root.into_iter().next() {
            None => Ok(()),
            Some((name, Value::Map(map))) if !map.is_empty() => {
                let first = map.keys().next().cloned().unwrap_or_default();
                Err(StripeError::unknown_param(&format!("{name}[{first}]")))
            }
            Some((name, _)) => Err(StripeError::unknown_param(&name)),
        }
    }
}

/// A client's value as an error message may show it: at most 40 visible characters.
fn shown(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(40).collect()
}

fn parse_integer(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests;
