//! JSON with exact integers. serde_json reads an integer literal beyond `i64`/`u64` as the
//! nearest `f64`, and `3**50 + 12345` then equals `3**50`: the expected value of a task must
//! keep every digit. Such literals are read as `{"$int": "digits"}`, the harness's own form of
//! an exact integer (see `harness/values.py`), which the comparators and the sandbox read as
//! the integer it is.

use std::borrow::Cow;

use serde::de::DeserializeOwned;

/// `text` with each integer literal that fits neither `i64` nor `u64` (outside strings)
/// written as `{"$int":"digits"}`; borrowed when there is none.
pub fn exact_integers(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || matches!(bytes[i], b'.' | b'e' | b'E' | b'+' | b'-')) {
                i += 1;
            }
            let token = &text[start..i];
            let integer = token.bytes().enumerate().all(|(k, c)| c.is_ascii_digit() || (k == 0 && c == b'-'));
            if integer && token != "-" && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                let out = out.get_or_insert_with(|| String::with_capacity(text.len() + 16));
                out.push_str(&text[copied..start]);
                out.push_str("{\"$int\":\"");
                out.push_str(token);
                out.push_str("\"}");
                copied = i;
            }
            continue;
        }
        i += 1;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
        }
    }
}

/// `serde_json::from_str`, with big integers kept exact (see [`exact_integers`]).
pub fn from_str<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    serde_json::from_str(&exact_integers(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn integers_beyond_64_bits_keep_their_digits() {
        let v: Value = from_str(r#"{"expected": 717897987691852588770249, "small": -12, "f": 1.5e300, "s": "717897987691852588770249"}"#).unwrap();
        assert_eq!(v["expected"], json!({"$int": "717897987691852588770249"}));
        assert_eq!(v["small"], json!(-12));
        assert_eq!(v["f"], json!(1.5e300));
        assert_eq!(v["s"], json!("717897987691852588770249"), "strings are untouched");
        let v: Value = from_str(r#"[18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809, "a\"1234567890123456789012"]"#).unwrap();
        assert_eq!(v, json!([u64::MAX, {"$int": "18446744073709551616"}, i64::MIN, {"$int": "-9223372036854775809"}, "a\"1234567890123456789012"]));
        assert!(matches!(exact_integers("[1, 2.5, -3e4]"), Cow::Borrowed(_)));
    }
}
