//! Reading LiveCodeBench's private tests, stored as base64(zlib(pickle(dict of strings))).
//!
//! `pickle.loads` on a dataset field runs whatever the field says (pickle can call any
//! function); this reader understands only the opcodes that build a dict of strings and refuses
//! everything else, so a hostile row is an error, never code.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;

/// What a decoded field held.
#[derive(Debug, Clone, PartialEq)]
pub enum Pickled {
    Dict(BTreeMap<String, Option<String>>),
    Str(String),
}

/// Decodes a base64(zlib(pickle)) field holding a dict of strings.
pub fn decode_field(text: &str) -> Result<BTreeMap<String, Option<String>>, String> {
    match decode_any(text)? {
        Pickled::Dict(d) => Ok(d),
        Pickled::Str(_) => Err("the pickle holds a string, not a dict".into()),
    }
}

/// Decodes a base64(zlib(pickle)) field holding a dict of strings or one string (raw
/// LiveCodeBench rows pickle the JSON text of their private tests).
pub fn decode_any(text: &str) -> Result<Pickled, String> {
    let compressed = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|e| format!("not base64: {e}"))?;
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(1 << 30)
        .read_to_end(&mut raw)
        .map_err(|e| format!("not zlib: {e}"))?;
    unpickle(&raw)
}

#[derive(Debug, Clone)]
enum Item {
    Mark,
    Dict(BTreeMap<String, Option<String>>),
    Str(String),
    None,
}

/// A pickle holding a dict of strings or a single string.
pub fn unpickle(data: &[u8]) -> Result<Pickled, String> {
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: Vec<Item> = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = at.checked_add(n).filter(|&e| e <= data.len()).ok_or("truncated pickle")?;
        let bytes = &data[*at..end];
        *at = end;
        Ok(bytes)
    };
    let length = |bytes: &[u8]| bytes.iter().rev().fold(0usize, |acc, &b| acc << 8 | b as usize);
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string());
    loop {
        let op = *take(&mut at, 1)?.first().ok_or("truncated pickle")?;
        match op {
            0x80 => {
                take(&mut at, 1)?; // PROTO
            }
            0x95 => {
                take(&mut at, 8)?; // FRAME
            }
            b'}' => stack.push(Item::Dict(BTreeMap::new())),
            b'(' => stack.push(Item::Mark),
            b'N' => stack.push(Item::None),
            0x8c => {
                let n = length(take(&mut at, 1)?);
                stack.push(Item::Str(text(take(&mut at, n)?)?));
            }
            b'X' => {
                let n = length(take(&mut at, 4)?);
                stack.push(Item::Str(text(take(&mut at, n)?)?));
            }
            0x8d => {
                let n = length(take(&mut at, 8)?);
                stack.push(Item::Str(text(take(&mut at, n)?)?));
            }
            0x94 => memo.push(stack.last().cloned().ok_or("MEMOIZE on an empty stack")?),
            b'q' | b'r' => {
                take(&mut at, if op == b'q' { 1 } else { 4 })?; // BINPUT: the memo is only read by GETs we refuse
            }
            b's' | b'u' => {
                let mut pairs = Vec::new();
                if op == b's' {
                    let value = stack.pop().ok_or("SETITEM without a value")?;
                    let key = stack.pop().ok_or("SETITEM without a key")?;
                    pairs.push((key, value));
                } else {
                    while let Some(item) = stack.pop() {
                        if matches!(item, Item::Mark) {
                            break;
                        }
                        let key = stack.pop().ok_or("SETITEMS with an odd number of items")?;
                        pairs.push((key, item));
                    }
                }
                let Some(Item::Dict(dict)) = stack.last_mut() else { return Err("SETITEM outside a dict".into()) };
                for (key, value) in pairs {
                    let Item::Str(key) = key else { return Err("a dict key is not a string".into()) };
                    let value = match value {
                        Item::Str(s) => Some(s),
                        Item::None => None,
                        _ => return Err(format!("the value of `{key}` is not a string")),
                    };
                    dict.insert(key, value);
                }
            }
            b'.' => {
                return match stack.pop() {
                    Some(Item::Dict(dict)) => Ok(Pickled::Dict(dict)),
                    Some(Item::Str(s)) => Ok(Pickled::Str(s)),
                    _ => Err("the pickle holds neither a dict of strings nor a string".into()),
                };
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x} (only a dict of strings is read)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // pickle.dumps({"input_output": "{\"inputs\": []}", "x": None}, protocol=4)
    const PICKLED: &[u8] = b"\x80\x04\x95*\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x0cinput_output\x94\x8c\x0e{\"inputs\": []}\x94\x8c\x01x\x94Nu.";

    #[test]
    fn reads_a_dict_of_strings() {
        let Pickled::Dict(d) = unpickle(PICKLED).unwrap() else { panic!("a dict") };
        assert_eq!(d["input_output"].as_deref(), Some("{\"inputs\": []}"));
        assert_eq!(d["x"], None);
    }

    #[test]
    fn refuses_anything_that_could_run_code() {
        // pickle.dumps of os.system("echo hi") via __reduce__: GLOBAL / STACK_GLOBAL + REDUCE.
        let hostile = b"\x80\x04\x95\"\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x07echo hi\x94\x85\x94R\x94.";
        let err = unpickle(hostile).unwrap_err();
        assert!(err.contains("unsupported pickle opcode 0x93"), "{err}");
        assert!(unpickle(&PICKLED[..20]).is_err());
        // pickle.dumps("[1, 2]", protocol=4)
        assert_eq!(unpickle(b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00\x8c\x06[1, 2]\x94.").unwrap(), Pickled::Str("[1, 2]".into()));
    }
}
