//! Comparators, run in the trusted parent on what the sandbox produced.
//!
//! Returned values arrive as the harness's type-tagged JSON (`{"$tuple": [...]}`,
//! `{"$dict": [[k, v], ...]}`, `{"$int": "123..."}`, ...); expected values are plain JSON, with
//! integers beyond 64 bits as `{"$int": "..."}` (see `exact_json`).
//! Nothing here can be influenced by candidate code beyond the data it produced: there is no
//! `__eq__` to override.

use serde_json::Value;

use crate::task::{TextComparator, ValueComparator};

/// Compares program output with the expected output.
pub fn text_matches(actual: &[u8], expected: &str, cmp: TextComparator) -> bool {
    let Ok(actual) = std::str::from_utf8(actual) else { return false };
    match cmp {
        TextComparator::Exact => actual == expected,
        TextComparator::Lines => normalized_lines(actual) == normalized_lines(expected),
        TextComparator::UnorderedLines => {
            let (mut a, mut e) = (normalized_lines(actual), normalized_lines(expected));
            a.sort_unstable();
            e.sort_unstable();
            a == e
        }
        TextComparator::Tokens { abs, rel } => {
            let (a, e): (Vec<_>, Vec<_>) = (actual.split_whitespace().collect(), expected.split_whitespace().collect());
            a.len() == e.len() && a.iter().zip(&e).all(|(a, e)| a == e || numbers_close(a, e, abs, rel))
        }
    }
}

fn normalized_lines(text: &str) -> Vec<String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

fn numbers_close(a: &str, e: &str, abs: f64, rel: f64) -> bool {
    match (a.parse::<f64>(), e.parse::<f64>()) {
        (Ok(a), Ok(e)) if a.is_finite() && e.is_finite() => {
            let diff = (a - e).abs();
            diff <= abs || diff <= rel * e.abs()
        }
        _ => false,
    }
}

/// Compares a returned value (tagged JSON) with the expected plain JSON value.
pub fn value_matches(actual: &Value, expected: &Value, cmp: ValueComparator) -> bool {
    let tol = match cmp {
        ValueComparator::Close { abs, rel } => Some((abs, rel)),
        _ => None,
    };
    if cmp == ValueComparator::Unordered {
        if let (Some(a), Value::Array(e)) = (sequence(actual), expected) {
            return unordered_eq(a, e, tol);
        }
    }
    eq(actual, expected, tol)
}

fn sequence(v: &Value) -> Option<&Vec<Value>> {
    match v {
        Value::Array(items) => Some(items),
        Value::Object(o) => match o.get("$tuple") {
            Some(Value::Array(items)) if o.len() == 1 => Some(items),
            _ => None,
        },
        _ => None,
    }
}

fn unordered_eq(actual: &[Value], expected: &[Value], tol: Option<(f64, f64)>) -> bool {
    if actual.len() != expected.len() {
        return false;
    }
    let mut used = vec![false; expected.len()];
    actual.iter().all(|a| {
        let hit = expected.iter().enumerate().position(|(i, e)| !used[i] && eq(a, e, tol));
        hit.map(|i| used[i] = true).is_some()
    })
}

/// A number in tagged JSON: exact integers are kept apart from floats so that big integers
/// compare exactly, as Python compares them (`10**30 == 1e30` is exact there, and false).
enum Number {
    Int(i128),
    /// Decimal digits (an optional `-`, no leading zeros) of an integer beyond `i128`.
    BigInt(String),
    Float(f64),
}

fn number(v: &Value) -> Option<Number> {
    match v {
        Value::Number(n) => Some(if let Some(i) = n.as_i64() {
            Number::Int(i.into())
        } else if let Some(u) = n.as_u64() {
            Number::Int(u.into())
        } else {
            Number::Float(n.as_f64()?)
        }),
        Value::Object(o) if o.len() == 1 => match (o.get("$int"), o.get("$float")) {
            (Some(Value::String(s)), _) => big_integer(s),
            (_, Some(Value::String(s))) => Some(Number::Float(match s.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                _ => f64::NAN,
            })),
            _ => None,
        },
        _ => None,
    }
}

fn big_integer(text: &str) -> Option<Number> {
    let (sign, digits) = text.strip_prefix('-').map_or(("", text), |d| ("-", d));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(Number::Int(0));
    }
    let text = format!("{sign}{digits}");
    Some(text.parse::<i128>().map_or(Number::BigInt(text), Number::Int))
}

/// The exact decimal digits of an integer, or of a float that holds an integer.
fn exact_digits(n: &Number) -> Option<String> {
    match n {
        Number::Int(i) => Some(i.to_string()),
        Number::BigInt(s) => Some(s.clone()),
        // Rust prints a float's exact value: 1e30 is 1000000000000000019884624838656.
        Number::Float(f) if f.is_finite() && f.fract() == 0.0 => {
            let digits = format!("{f:.0}");
            Some(if digits == "-0" { "0".into() } else { digits })
        }
        Number::Float(_) => None,
    }
}

fn approximately(n: &Number) -> f64 {
    match n {
        Number::Int(i) => *i as f64,
        Number::BigInt(s) => s.parse().unwrap_or(f64::NAN),
        Number::Float(f) => *f,
    }
}

fn numbers_eq(a: Number, e: Number, tol: Option<(f64, f64)>) -> bool {
    match (&a, &e) {
        (Number::Int(x), Number::Int(y)) => return x == y,
        (Number::Float(x), Number::Float(y)) if x == y => return true,
        (Number::Float(_), Number::Float(_)) => {}
        _ => {
            if let (Some(x), Some(y)) = (exact_digits(&a), exact_digits(&e)) {
                if x == y {
                    return true;
                }
            }
            // Integers on both sides are equal only exactly; a float only within the declared
            // tolerance.
            if !matches!(a, Number::Float(_)) && !matches!(e, Number::Float(_)) {
                return false;
            }
        }
    }
    let (a, e) = (approximately(&a), approximately(&e));
    match tol {
        Some((abs, rel)) if a.is_finite() && e.is_finite() => {
            let diff = (a - e).abs();
            diff <= abs || diff <= rel * e.abs()
        }
        _ => false,
    }
}

/// The pairs of a returned dict: a plain `$dict`, or one of the dict types Python compares
/// equal to a dict (`Counter`, `OrderedDict`, `defaultdict`).
fn dict_pairs(actual: &Value) -> Option<&Vec<Value>> {
    let o = actual.as_object()?;
    let Some(Value::Array(pairs)) = o.get("$dict") else { return None };
    let dict_type = match o.get("type") {
        None => true,
        Some(Value::String(t)) => matches!(t.as_str(), "Counter" | "OrderedDict" | "defaultdict"),
        Some(_) => false,
    };
    let known = o.keys().all(|k| matches!(k.as_str(), "$dict" | "type" | "factory"));
    (dict_type && known).then_some(pairs)
}

fn eq(actual: &Value, expected: &Value, tol: Option<(f64, f64)>) -> bool {
    if let Some(e) = number(expected) {
        return match number(actual) {
            Some(a) => numbers_eq(a, e, tol),
            None => false,
        };
    }
    match expected {
        Value::Null => actual.is_null(),
        Value::Bool(e) => actual.as_bool() == Some(*e),
        Value::String(e) => actual.as_str() == Some(e.as_str()),
        Value::Number(_) => false,
        Value::Array(e) => match sequence(actual) {
            Some(a) => a.len() == e.len() && a.iter().zip(e).all(|(a, e)| eq(a, e, tol)),
            None => false,
        },
        Value::Object(e) => {
            let Some(pairs) = dict_pairs(actual) else { return false };
            // Each expected key exactly once: a forged `$dict` repeating one known pair must not
            // stand for a dict whose other keys it cannot guess.
            let mut seen = std::collections::HashSet::with_capacity(pairs.len());
            pairs.len() == e.len()
                && pairs.iter().all(|pair| match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), v]) => seen.insert(k) && e.get(k).is_some_and(|ev| eq(v, ev, tol)),
                    _ => false,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_follow_livecodebench() {
        let cmp = TextComparator::Lines;
        assert!(text_matches(b"1 2\n3\n", "1  2\n3", cmp));
        assert!(text_matches(b"\n1\r\n2\n\n", "1\n2\n", cmp));
        assert!(!text_matches(b"1\n2\n", "1 2\n", cmp));
        assert!(!text_matches(b"NO\n", "YES\n", cmp));
        assert!(!text_matches(b"no\n", "NO\n", cmp), "strict: no lower-casing");
        assert!(!text_matches(b"1.0\n", "1\n", cmp), "numbers only with a declared tolerance");
        assert!(!text_matches(b"1\n", "1\n2\n", cmp));
        assert!(!text_matches(b"\xff\n", "1\n", cmp));
    }

    #[test]
    fn exact_is_byte_equality() {
        assert!(text_matches(b"a\n", "a\n", TextComparator::Exact));
        assert!(!text_matches(b"a", "a\n", TextComparator::Exact));
    }

    #[test]
    fn tokens_with_declared_tolerance() {
        let cmp = TextComparator::Tokens { abs: 1e-6, rel: 0.0 };
        assert!(text_matches(b"0.3333333 x\n", "0.33333331 x", cmp));
        assert!(!text_matches(b"0.334 x", "0.333 x", cmp));
        assert!(!text_matches(b"YES", "NO", cmp), "non-numeric tokens are never lenient");
        assert!(!text_matches(b"1 2 3", "1 2", cmp));
        let rel = TextComparator::Tokens { abs: 0.0, rel: 1e-3 };
        assert!(text_matches(b"1000.5", "1000", rel));
        assert!(!text_matches(b"nan", "1", rel));
        assert!(!text_matches(b"inf", "1e308", rel), "infinities are never close");
    }

    #[test]
    fn unordered_lines_only_when_declared() {
        assert!(text_matches(b"b\na\n", "a\nb", TextComparator::UnorderedLines));
        assert!(!text_matches(b"b\na\n", "a\nb", TextComparator::Lines));
        assert!(!text_matches(b"a\na\n", "a\nb", TextComparator::UnorderedLines));
    }

    #[test]
    fn values_compare_like_python_but_strictly_typed() {
        let exact = ValueComparator::Exact;
        assert!(value_matches(&json!(1.0), &json!(1), exact));
        assert!(value_matches(&json!({"$tuple": [1, 2]}), &json!([1, 2]), exact));
        assert!(!value_matches(&json!(true), &json!(1), exact), "bools are not numbers");
        assert!(!value_matches(&json!("1"), &json!(1), exact));
        assert!(value_matches(&json!({"$dict": [["a", [1]]]}), &json!({"a": [1]}), exact));
        assert!(!value_matches(&json!({"$dict": [[1, [1]]]}), &json!({"1": [1]}), exact));
        assert!(
            !value_matches(&json!({"$dict": [["a", 2], ["a", 2]]}), &json!({"a": 2, "b": 1}), exact),
            "a repeated key stands for one key"
        );
        assert!(!value_matches(&json!({"$set": [1, 2]}), &json!([1, 2]), exact));
        assert!(!value_matches(&json!({"$object": "Eq", "attrs": []}), &json!(3), exact));
        assert!(value_matches(&json!({"$int": "9007199254740993"}), &json!(9007199254740993i64), exact));
        assert!(!value_matches(&json!({"$int": "9007199254740993"}), &json!(9007199254740992i64), exact));
        assert!(!value_matches(&json!({"$float": "nan"}), &json!(1.0), exact));
    }

    #[test]
    fn integers_compare_exactly_at_any_size() {
        let exact = ValueComparator::Exact;
        let big = json!({"$int": "717897987691852588770249"}); // 3**50
        assert!(value_matches(&big, &big, exact));
        assert!(!value_matches(&json!({"$int": "717897987691852588782594"}), &big, exact), "3**50 + 12345");
        assert!(!value_matches(&json!(7.178979876918526e23), &big, exact), "the nearest float is another number");
        assert!(value_matches(&json!(1e30), &json!({"$int": "1000000000000000019884624838656"}), exact), "a float equal to the integer");
        assert!(!value_matches(&json!({"$int": "9007199254740993"}), &json!(9007199254740992.0), exact), "2**53 + 1 is not 2**53");
        assert!(!value_matches(&json!(9007199254740992.0), &json!(9007199254740993i64), exact));
        assert!(value_matches(&json!({"$int": "-00"}), &json!(0), exact));
        assert!(!value_matches(&json!({"$int": "12x"}), &json!(12), exact));
        let close = ValueComparator::Close { abs: 0.0, rel: 1e-9 };
        assert!(value_matches(&json!(7.178979876918526e23), &big, close), "floats within a declared tolerance");
        assert!(!value_matches(&json!({"$int": "717897987691852588782594"}), &big, close), "integers stay exact");
    }

    #[test]
    fn dict_types_python_compares_equal_to_a_dict() {
        let exact = ValueComparator::Exact;
        let e = json!({"a": 2, "b": 1});
        for t in ["Counter", "OrderedDict", "defaultdict"] {
            assert!(value_matches(&json!({"$dict": [["a", 2], ["b", 1]], "type": t}), &e, exact), "{t}");
        }
        assert!(!value_matches(&json!({"$dict": [["a", 2], ["b", 1]], "type": "Other"}), &e, exact));
        assert!(!value_matches(&json!({"$dict": [["a", 2], ["b", 1]], "secret": 1}), &e, exact));
    }

    #[test]
    fn close_and_unordered_values() {
        let close = ValueComparator::Close { abs: 1e-6, rel: 0.0 };
        assert!(value_matches(&json!([0.1000000001]), &json!([0.1]), close));
        assert!(!value_matches(&json!([0.11]), &json!([0.1]), close));
        let un = ValueComparator::Unordered;
        assert!(value_matches(&json!([[2, 1], [1]]), &json!([[1], [2, 1]]), un));
        assert!(!value_matches(&json!([[1, 2], [1]]), &json!([[1], [2, 1]]), un), "only the top level is unordered");
        assert!(!value_matches(&json!([1, 1]), &json!([1, 2]), un));
    }
}
