//! Text in and out: the checkpoint's Hugging Face `tokenizer.json` through the `tokenizers`
//! crate, the Qwen2.5 chat template for instruct prompts, and cutting a completion at its end.
//!
//! Checkpoints that ship only the slow tokenizer files (Dream's `vocab.json` + `merges.txt` +
//! `tokenizer_config.json`, read in Python by `tokenization_dream.py`) are rebuilt into the
//! fast tokenizer transformers converts them to: NFC, Qwen2's split regex, byte-level BPE, and
//! the added tokens at the ids `added_tokens_decoder` gives.
//!
//! Special-token ids come from the checkpoint (the tokenizer's added tokens and the model
//! config), never from constants: Dream-Coder's are mask 151666, pad = eos 151643 and
//! `<|im_end|>` 151645, but a tiny test model's are whatever its tokenizer assigned.

use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::error::{PolicyError, Result};

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
/// Qwen2.5's system prompt when the caller gives none.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// One turn of a chat.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A checkpoint's tokenizer and the special tokens generation stops at.
pub struct ChatTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Ids that end a completion: eos/pad from the config, and `<|im_end|>` when the vocabulary
    /// has it.
    pub stop_ids: Vec<i64>,
}

impl ChatTokenizer {
    /// Loads a checkpoint folder's tokenizer: `tokenizer.json`, or else the slow files
    /// (`vocab.json` + `merges.txt` + `tokenizer_config.json`). Stop ids from `config`.
    pub fn from_dir(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let fast = dir.join("tokenizer.json");
        if fast.exists() || !dir.join("vocab.json").exists() {
            return Self::from_file(&fast, config);
        }
        let inner = slow_qwen2_tokenizer(dir)?;
        Self::new(inner, dir.join("vocab.json"), config)
    }

    pub fn from_file(path: &Path, config: &ModelConfig) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| PolicyError::Tokenizer { path: path.into(), reason: e.to_string() })?;
        Self::new(inner, path.into(), config)
    }

    fn new(inner: tokenizers::Tokenizer, path: PathBuf, config: &ModelConfig) -> Result<Self> {
        let mut stop_ids: Vec<i64> = config.tokens.eos.iter().copied().chain(config.tokens.pad).collect();
        if let Some(id) = inner.token_to_id(IM_END) {
            stop_ids.push(id as i64);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let tok = ChatTokenizer { inner, path, stop_ids };
        if let Some(mask) = config.tokens.mask {
            if mask as usize >= tok.inner.get_vocab_size(true).max(config.vocab_size as usize) {
                return Err(tok.error(format!("mask_token_id {mask} is outside the vocabulary")));
            }
        }
        Ok(tok)
    }

    fn error(&self, reason: String) -> PolicyError {
        PolicyError::Tokenizer { path: self.path.clone(), reason }
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| self.error(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// Text of `ids`; with `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&id| u32::try_from(id).map_err(|_| self.error(format!("token id {id} is negative or too large"))))
            .collect::<Result<_>>()?;
        self.inner.decode(&ids, skip_special).map_err(|e| self.error(e.to_string()))
    }

    /// The text of each token on its own (a token holding part of a multi-byte character shows
    /// as U+FFFD), for showing the order a diffusion model wrote a completion in.
    pub fn pieces(&self, ids: &[i64]) -> Vec<String> {
        ids.iter().map(|&id| self.decode(&[id], false).unwrap_or_else(|_| "\u{fffd}".into())).collect()
    }

    /// The generated ids up to (not including) the first stop id.
    pub fn completion_ids<'a>(&self, ids: &'a [i64]) -> &'a [i64] {
        let end = ids.iter().position(|id| self.stop_ids.contains(id)).unwrap_or(ids.len());
        &ids[..end]
    }

    /// The completion's text: cut at the first stop id, special tokens skipped.
    pub fn decode_completion(&self, ids: &[i64]) -> Result<String> {
        self.decode(self.completion_ids(ids), true)
    }
}

/// The special tokens of [`byte_level_tokenizer_json`], at ids 256.. in this order.
pub const BYTE_LEVEL_SPECIALS: [&str; 4] = ["<|endoftext|>", IM_START, IM_END, "<|mask|>"];

/// GPT-2's map from bytes to printable characters (what byte-level BPE vocabularies spell).
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// A tokenizer with no merges: byte b is token b, then `<|endoftext|>` 256, `<|im_start|>` 257,
/// `<|im_end|>` 258, `<|mask|>` 259. Any text round-trips. For tiny models trained from scratch
/// (tests, the quickstart); `dllm-rl model init --byte-tokenizer` writes it.
pub fn byte_level_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> =
        byte_chars().into_iter().enumerate().map(|(i, c)| (c.to_string(), (i as u64).into())).collect();
    let added: Vec<serde_json::Value> = BYTE_LEVEL_SPECIALS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": 256 + i, "content": t, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// Qwen2's pre-tokenizer pattern (as transformers' slow-to-fast conversion writes it).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The fast tokenizer equivalent to Qwen2's slow one, from `vocab.json`, `merges.txt` and the
/// added tokens of `tokenizer_config.json`.
fn slow_qwen2_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    use tokenizers::pre_tokenizers::{byte_level::ByteLevel, sequence::Sequence, split::Split};
    use tokenizers::{AddedToken, SplitDelimiterBehavior};

    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    let fail = |path: &Path, reason: String| PolicyError::Tokenizer { path: path.into(), reason };
    let bpe = tokenizers::models::bpe::BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| fail(&vocab, e.to_string()))?;
    let split = Split::new(tokenizers::pre_tokenizers::split::SplitPattern::Regex(QWEN2_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| fail(&vocab, e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(tokenizers::normalizers::unicode::NFC)).map_err(|e| fail(&vocab, e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()])));
    tokenizer.with_decoder(Some(ByteLevel::default()));

    let config_path = dir.join("tokenizer_config.json");
    if !config_path.exists() {
        return Ok(tokenizer);
    }
    let config: serde_json::Value = crate::error::read_json(&config_path)?;
    let mut added: Vec<(u32, String, bool)> = Vec::new();
    if let Some(decoder) = config.get("added_tokens_decoder").and_then(|d| d.as_object()) {
        for (id, token) in decoder {
            let id: u32 = id.parse().map_err(|_| fail(&config_path, format!("added_tokens_decoder: `{id}` is not a token id")))?;
            let content = token
                .get("content")
                .and_then(|c| c.as_str())
                .ok_or_else(|| fail(&config_path, format!("added_tokens_decoder.{id}.content is missing")))?;
            let special = token.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
            added.push((id, content.to_string(), special));
        }
    }
    added.sort();
    for (id, content, special) in &added {
        let token = AddedToken::from(content.clone(), *special);
        let added = if *special { tokenizer.add_special_tokens([token]) } else { tokenizer.add_tokens([token]) };
        added.map_err(|e| fail(&config_path, format!("added token `{content}`: {e}")))?;
        // Added tokens take the next free id; the file's ids must agree, or every id after
        // would silently shift.
        if tokenizer.token_to_id(content) != Some(*id) {
            return Err(fail(
                &config_path,
                format!("added token `{content}` should have id {id} but lands at {:?}", tokenizer.token_to_id(content)),
            ));
        }
    }
    Ok(tokenizer)
}

/// Renders messages with the Qwen2.5 chat template and opens the assistant's turn:
/// `<|im_start|>system\n…<|im_end|>\n<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n`.
/// A system turn with [`DEFAULT_SYSTEM`] is added when the messages have none, as Qwen2.5's
/// template does.
pub fn chat_prompt(messages: &[ChatMessage]) -> String {
    let mut out = String::new();
    if messages.first().is_none_or(|m| m.role != "system") {
        out.push_str(&format!("{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n"));
    }
    for m in messages {
        out.push_str(&format!("{IM_START}{}\n{}{IM_END}\n", m.role, m.content));
    }
    out.push_str(&format!("{IM_START}assistant\n"));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, Tokenizer};

    pub const SPECIAL: [&str; 4] = ["<|endoftext|>", IM_START, IM_END, "<|mask|>"];

    /// Trains a byte-level BPE of `vocab` tokens on a few lines of Python; the four special
    /// tokens get ids 0..4. Written as `tokenizer.json` into `dir`.
    pub fn tiny_tokenizer(dir: &Path, vocab: usize) -> PathBuf {
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(SPECIAL.iter().map(|s| AddedToken::from(*s, true)).collect())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let corpus = [
            "def add(a, b):\n    return a + b\n",
            "print(sum(int(x) for x in input().split()))\n",
            "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n",
            "Write a function that returns the sum of two numbers.",
        ];
        let mut trainer = tokenizers::models::TrainerWrapper::from(trainer);
        tokenizer.train(&mut trainer, corpus.iter().map(|s| s.to_string())).expect("training a BPE on fixed text");
        let path = dir.join("tokenizer.json");
        tokenizer.save(&path, false).expect("writing tokenizer.json");
        path
    }

    fn config_with_tokens() -> ModelConfig {
        let json = serde_json::json!({
            "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "vocab_size": 300,
            "eos_token_id": 0, "pad_token_id": 0, "mask_token_id": 3
        });
        let serde_json::Value::Object(map) = json else { unreachable!() };
        ModelConfig::from_map(map, Path::new("config.json")).unwrap()
    }

    #[test]
    fn round_trip_chat_and_completion_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_tokenizer(dir.path(), 300);
        let tok = ChatTokenizer::from_file(&path, &config_with_tokens()).unwrap();
        assert_eq!(tok.token_id(IM_END), Some(2));
        assert_eq!(tok.stop_ids, vec![0, 2]);

        let prompt = chat_prompt(&[ChatMessage::new("user", "Add two numbers.")]);
        assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"));
        assert!(prompt.ends_with("<|im_end|>\n<|im_start|>assistant\n"));
        let ids = tok.encode(&prompt).unwrap();
        assert_eq!(ids[0], 1, "<|im_start|> is one special token");
        assert_eq!(tok.decode(&ids, false).unwrap(), prompt);

        let answer = "def add(a, b):\n    return a + b\n";
        let mut generated = tok.encode(answer).unwrap();
        generated.extend([2, 0, 0, 3]);
        assert_eq!(tok.decode_completion(&generated).unwrap(), answer);
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = ChatTokenizer::from_file(Path::new("/nonexistent/tokenizer.json"), &config_with_tokens()).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/tokenizer.json"), "{err}");
    }

    /// Dream's layout: `vocab.json` + `merges.txt` + `tokenizer_config.json`, no tokenizer.json.
    fn slow_files(dir: &Path, added: serde_json::Value) {
        use tokenizers::Model;
        let fast = tempfile::tempdir().unwrap();
        let tok = Tokenizer::from_file(tiny_tokenizer(fast.path(), 300)).unwrap();
        tok.get_model().save(dir, None).unwrap();
        let config = serde_json::json!({"added_tokens_decoder": added, "tokenizer_class": "DreamTokenizer"});
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    }

    #[test]
    fn slow_tokenizer_files_are_rebuilt_into_a_fast_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let added: serde_json::Map<String, serde_json::Value> = SPECIAL
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), serde_json::json!({"content": s, "special": true})))
            .collect();
        slow_files(dir.path(), serde_json::Value::Object(added));
        assert!(!dir.path().join("tokenizer.json").exists());
        let tok = ChatTokenizer::from_dir(dir.path(), &config_with_tokens()).unwrap();
        assert_eq!(tok.token_id(IM_END), Some(2));
        let prompt = chat_prompt(&[ChatMessage::new("user", "def add(a, b):\n    return a + b\n")]);
        let ids = tok.encode(&prompt).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(tok.decode(&ids, false).unwrap(), prompt);
        // Qwen2's split keeps digits apart: "123" is three pieces whatever the merges.
        assert_eq!(tok.encode("123").unwrap().len(), 3);
    }

    #[test]
    fn added_token_ids_that_disagree_with_the_vocabulary_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        slow_files(dir.path(), serde_json::json!({"0": {"content": "<|endoftext|>", "special": true}, "7": {"content": "<|im_end|>", "special": true}}));
        let err = ChatTokenizer::from_dir(dir.path(), &config_with_tokens()).err().unwrap();
        assert!(err.to_string().contains("tokenizer_config.json") && err.to_string().contains("should have id 7"), "{err}");
    }

    #[test]
    fn byte_level_tokenizer_round_trips_any_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, byte_level_tokenizer_json()).unwrap();
        let mut config = config_with_tokens();
        config.tokens.eos = vec![256];
        config.tokens.pad = Some(256);
        config.tokens.mask = Some(259);
        config.vocab_size = 512;
        let tok = ChatTokenizer::from_file(&path, &config).unwrap();
        let text = "déf f(x):\n\treturn x ** 2  # ünïcode ✓\n";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.len(), "one token per byte");
        assert_eq!(ids[0], b'd' as i64);
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!((tok.token_id(IM_START), tok.token_id(IM_END), tok.token_id("<|mask|>")), (Some(257), Some(258), Some(259)));
        assert_eq!(tok.stop_ids, vec![256, 258]);
        let prompt = chat_prompt(&[ChatMessage::new("user", "hi")]);
        assert_eq!(tok.decode(&tok.encode(&prompt).unwrap(), false).unwrap(), prompt);
    }
}
