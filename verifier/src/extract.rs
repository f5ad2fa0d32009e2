//! Finding the code in a model's answer.
//!
//! A fenced block (```` ```python ````, ```` ```py ````, or an untagged ```` ``` ````) wins; with
//! several, the Python-tagged ones are joined in order (models often split a solution into a
//! helper block and a main block), else the first untagged. An opened fence that never closes
//! (a truncated generation) is taken to the end. Without fences the whole text is code.

use serde::{Deserialize, Serialize};

/// Where the code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSource {
    /// One or more closed fenced blocks.
    Fenced,
    /// A fence was opened but never closed.
    UnclosedFence,
    /// No fence: the raw text.
    Raw,
}

/// Code extracted from a completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub code: String,
    pub source: CodeSource,
}

/// Extracts the code, or `None` when there is none (empty or blank text, empty blocks).
pub fn extract_code(text: &str) -> Option<Extracted> {
    let mut python = Vec::new();
    let mut untagged = Vec::new();
    let mut other = Vec::new();
    let mut lines = text.split_inclusive('\n');
    let mut unclosed = None;
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else { continue };
        let lang = info.trim().to_ascii_lowercase();
        let mut body = String::new();
        let mut closed = false;
        for inner in lines.by_ref() {
            if inner.trim() == "```" {
                closed = true;
                break;
            }
            body.push_str(inner);
        }
        let bucket = match lang.as_str() {
            "python" | "py" | "python3" => &mut python,
            "" => &mut untagged,
            _ => &mut other,
        };
        if closed {
            bucket.push(body);
        } else {
            unclosed = Some(body);
        }
    }
    let fenced = if !python.is_empty() {
        Some(python.join("\n"))
    } else {
        untagged.into_iter().next().or_else(|| other.into_iter().next())
    };
    let (code, source) = match (fenced, unclosed) {
        (Some(code), _) => (code, CodeSource::Fenced),
        (None, Some(code)) => (code, CodeSource::UnclosedFence),
        (None, None) => (text.to_owned(), CodeSource::Raw),
    };
    (!code.trim().is_empty()).then_some(Extracted { code, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_python_block() {
        let text = "Here:\n```python\ndef f():\n    return 1\n```\nDone.";
        let e = extract_code(text).unwrap();
        assert_eq!(e.code, "def f():\n    return 1\n");
        assert_eq!(e.source, CodeSource::Fenced);
    }

    #[test]
    fn joins_python_blocks_and_ignores_others() {
        let text = "```bash\npip install x\n```\n```python\na = 1\n```\ntext\n```py\nprint(a)\n```\n";
        assert_eq!(extract_code(text).unwrap().code, "a = 1\n\nprint(a)\n");
    }

    #[test]
    fn raw_text_without_fences() {
        let e = extract_code("print(1)\n").unwrap();
        assert_eq!((e.code.as_str(), e.source), ("print(1)\n", CodeSource::Raw));
    }

    #[test]
    fn an_unclosed_fence_runs_to_the_end() {
        let e = extract_code("```python\nprint(1)\nprint(2)").unwrap();
        assert_eq!((e.code.as_str(), e.source), ("print(1)\nprint(2)", CodeSource::UnclosedFence));
    }

    #[test]
    fn no_code_at_all() {
        assert_eq!(extract_code(""), None);
        assert_eq!(extract_code("  \n\t"), None);
        assert_eq!(extract_code("```python\n```"), None);
    }
}
