//! Prompt rendering: the instruction the policy sees for a task, before the chat template.
//!
//! The task's statement, then a format instruction by kind: programs that read stdin and write
//! stdout, or code that defines the function the tests call (named when known). One
//! ```` ```python ```` block is asked for, because that is what the verifier extracts and the
//! `format` reward checks. Everything is configurable, globally and per source (a TOML
//! `[prompts.render]` section).

use std::collections::BTreeMap;

use dllm_verifier::{Task, TestSpec};
use serde::{Deserialize, Serialize};

pub const STDIO_INSTRUCTION: &str = "Read the input from standard input and write the answer to standard output. \
Answer with a complete Python 3 program in a single ```python code block.";
pub const FUNCTION_INSTRUCTION: &str = "Answer with Python 3 code in a single ```python code block that defines {entry_point}.";
pub const CODE_INSTRUCTION: &str = "Answer with Python 3 code in a single ```python code block.";

/// What can be changed for one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderOverride {
    pub system: Option<String>,
    pub stdio_instruction: Option<String>,
    pub function_instruction: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderConfig {
    /// The system turn; `None` leaves the chat template's default.
    pub system: Option<String>,
    pub stdio_instruction: String,
    /// `{entry_point}` is replaced by the name the tests call (e.g. `` `two_sum` ``).
    pub function_instruction: String,
    /// Overrides by task `source`.
    pub per_source: BTreeMap<String, RenderOverride>,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            system: None,
            stdio_instruction: STDIO_INSTRUCTION.into(),
            function_instruction: FUNCTION_INSTRUCTION.into(),
            per_source: BTreeMap::new(),
        }
    }
}

/// A rendered prompt: an optional system turn and the user turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendered {
    pub system: Option<String>,
    pub user: String,
}

#[derive(Debug, thiserror::Error)]
#[error("task {task}: no `prompt` to render")]
pub struct MissingPrompt {
    pub task: String,
}

/// The name the tests call, as the instruction shows it.
fn entry_point(task: &Task) -> Option<String> {
    match &task.spec {
        TestSpec::Stdio { .. } => None,
        TestSpec::Call { entry_point, class_name, .. } => Some(match class_name {
            Some(class) => format!("the class `{class}` with the method `{entry_point}`"),
            None => format!("the function `{entry_point}`"),
        }),
        TestSpec::Assert { entry_points, class_names, .. } => match class_names.first() {
            Some(class) => Some(format!("the class `{class}`")),
            None => entry_points.iter().find(|e| e.as_str() != "candidate").map(|e| format!("the function `{e}`")),
        },
        TestSpec::Pytest { entry_points, .. } => entry_points.first().map(|e| format!("`{e}`")),
    }
}

impl RenderConfig {
    pub fn render(&self, task: &Task) -> Result<Rendered, MissingPrompt> {
        let statement = task.prompt.as_deref().filter(|p| !p.trim().is_empty()).ok_or_else(|| MissingPrompt { task: task.id.clone() })?;
        let over = task.source.as_ref().and_then(|s| self.per_source.get(s));
        let pick = |local: Option<&Option<String>>, global: &String| local.and_then(|o| o.clone()).unwrap_or_else(|| global.clone());
        let instruction = match &task.spec {
            TestSpec::Stdio { .. } => pick(over.map(|o| &o.stdio_instruction), &self.stdio_instruction),
            _ => {
                let template = pick(over.map(|o| &o.function_instruction), &self.function_instruction);
                match entry_point(task) {
                    Some(name) => template.replace("{entry_point}", &name),
                    None if template.contains("{entry_point}") => CODE_INSTRUCTION.to_string(),
                    None => template,
                }
            }
        };
        let system = over.and_then(|o| o.system.clone()).or_else(|| self.system.clone());
        Ok(Rendered { system, user: format!("{}\n\n{instruction}", statement.trim_end()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: serde_json::Value) -> Task {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn instruction_by_kind_with_the_entry_point_named() {
        let cfg = RenderConfig::default();
        let stdio = task(serde_json::json!({"id": "a", "prompt": "Sum two numbers.", "kind": "stdio", "tests": [{"stdin": "1 2\n", "stdout": "3\n"}]}));
        let r = cfg.render(&stdio).unwrap();
        assert_eq!(r.user, format!("Sum two numbers.\n\n{STDIO_INSTRUCTION}"));
        let call = task(serde_json::json!({"id": "b", "prompt": "Add.", "kind": "call", "entry_point": "add", "tests": []}));
        assert!(cfg.render(&call).unwrap().user.ends_with("that defines the function `add`."));
        let leet = task(serde_json::json!({"id": "c", "prompt": "Two sum.", "kind": "call", "entry_point": "twoSum", "class_name": "Solution", "tests": []}));
        assert!(cfg.render(&leet).unwrap().user.contains("the class `Solution` with the method `twoSum`"));
        let asserts = task(serde_json::json!({"id": "d", "prompt": "Reverse.", "kind": "assert", "entry_points": ["candidate", "rev"], "test_code": "assert rev('ab') == 'ba'"}));
        assert!(cfg.render(&asserts).unwrap().user.contains("the function `rev`"));
    }

    #[test]
    fn per_source_overrides_and_missing_prompts() {
        let mut cfg = RenderConfig::default();
        cfg.per_source.insert("mbpp".into(), RenderOverride { system: Some("Be brief.".into()), function_instruction: Some("Write {entry_point}.".into()), ..Default::default() });
        let t = task(serde_json::json!({"id": "e", "source": "mbpp", "prompt": "Square.", "kind": "call", "entry_point": "sq", "tests": []}));
        let r = cfg.render(&t).unwrap();
        assert_eq!((r.system.as_deref(), r.user.as_str()), (Some("Be brief."), "Square.\n\nWrite the function `sq`."));
        let none = task(serde_json::json!({"id": "f", "kind": "call", "entry_point": "g", "tests": []}));
        assert_eq!(cfg.render(&none).unwrap_err().to_string(), "task f: no `prompt` to render");
    }
}
