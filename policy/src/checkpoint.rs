//! Hugging Face checkpoints in and out: safetensors, single-file or sharded
//! (`model.safetensors.index.json`), by tensor name.
//!
//! Loading memory-maps each shard and copies every tensor straight from the mapping into the
//! model's storage (which converts dtype and moves to the device in one `copy_`), so a 15 GB
//! checkpoint never sits in host memory twice. Every tensor the model expects must be found and
//! every tensor in the files must be expected, else the error lists the names.
//!
//! Saving writes shards of at most `max_shard_bytes` named `model-00001-of-00004.safetensors`
//! plus the index (one shard: `model.safetensors`, no index), with `{"format": "pt"}` metadata,
//! as `save_pretrained` does; then `config.json`, `generation_config.json` and the tokenizer and
//! remote-code files of the source checkpoint, so the folder loads in transformers unchanged.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{io_error, read_json, PolicyError, Result};
use crate::model::DreamModel;

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// Files copied through from the source checkpoint on save: tokenizer and remote code.
const PASSTHROUGH: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
];

fn checkpoint_error(path: &Path, reason: String) -> PolicyError {
    PolicyError::Checkpoint { path: path.into(), reason }
}

/// The safetensors files of a checkpoint folder, from the index when there is one.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let parsed: Index = read_json(&index)?;
        let mut files: Vec<PathBuf> = parsed.weight_map.values().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(checkpoint_error(dir, format!("neither {SINGLE_FILE} nor {INDEX_FILE} is here")))
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Copies the tensors of `files` into `targets` by name. Names in the files that `skip` accepts
/// are ignored (a tied `lm_head.weight`); anything else unknown, any missing name and any shape
/// mismatch is an error naming the tensors.
pub fn load_named(files: &[PathBuf], targets: &HashMap<String, Tensor>, skip: &dyn Fn(&str) -> bool) -> Result<()> {
    let origin = files.first().and_then(|f| f.parent()).unwrap_or(Path::new("."));
    let mut loaded = std::collections::HashSet::new();
    let mut unexpected = Vec::new();
    let _guard = tch::no_grad_guard();
    for file in files {
        let handle = std::fs::File::open(file).map_err(io_error(file))?;
        // SAFETY: the mapping is read-only and outlives every tensor made from it below (each is
        // dropped after its copy_). A concurrent writer truncating the file would be UB for any
        // mmap reader; checkpoints are not rewritten in place by this program.
        let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(io_error(file))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| checkpoint_error(file, format!("not a safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let Some(target) = targets.get(&name) else {
                if !skip(&name) {
                    unexpected.push(name);
                }
                continue;
            };
            // Two copies would load last-wins, whichever the index names.
            if loaded.contains(&name) {
                return Err(checkpoint_error(file, format!("`{name}` is also in an earlier file of this checkpoint")));
            }
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != target.size() {
                return Err(checkpoint_error(file, format!("`{name}` has shape {shape:?}, the model expects {:?}", target.size())));
            }
            let kind = kind_of(view.dtype())
                .ok_or_else(|| checkpoint_error(file, format!("`{name}` has unsupported dtype {:?}", view.dtype())))?;
            let data = view.data();
            if data.len() != shape.iter().product::<i64>() as usize * kind.elt_size_in_bytes() {
                return Err(checkpoint_error(file, format!("`{name}`: data length does not match its shape")));
            }
            // SAFETY: `data` is `numel * elt_size` bytes inside the live mapping; the tensor
            // borrowing it is dropped at the end of this iteration, before `map`.
            let source = unsafe { Tensor::f_from_blob(data.as_ptr(), &shape, &[], kind, Device::Cpu)? };
            target.shallow_clone().f_copy_(&source)?;
            loaded.insert(name);
        }
    }
    let mut missing: Vec<&String> = targets.keys().filter(|n| !loaded.contains(*n)).collect();
    missing.sort();
    unexpected.sort();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(checkpoint_error(
            origin,
            format!("{} missing tensor(s) {}; {} unexpected tensor(s) {}", missing.len(), preview(&missing), unexpected.len(), preview(&unexpected)),
        ));
    }
    Ok(())
}

fn preview<T: std::fmt::Display>(names: &[T]) -> String {
    let shown: Vec<String> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 {
        format!("[{} and {more} more]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// Loads a checkpoint folder into the weights of `vs` (named as in Hugging Face).
pub fn load_weights(dir: &Path, vs: &nn::VarStore) -> Result<()> {
    let files = weight_files(dir)?;
    let targets = vs.variables();
    let tied = !targets.contains_key("lm_head.weight");
    load_named(&files, &targets, &|name| tied && name == "lm_head.weight")
}

/// A host copy of one tensor, in the form the safetensors writer wants.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostTensor {
    fn new(tensor: &Tensor, kind: Kind) -> Result<Self> {
        let host = tensor.f_to_kind(kind)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let dtype = dtype_of(kind).ok_or_else(|| PolicyError::Invalid(format!("cannot save dtype {kind:?}")))?;
        let numel = host.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        host.f_copy_data_u8(&mut bytes, numel)?;
        Ok(HostTensor { dtype, shape: host.size().iter().map(|&d| d as usize).collect(), bytes })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn write_file(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), path)
        .map_err(|e| checkpoint_error(path, format!("cannot write: {e}")))?;
    give_the_usual_mode(path)
}

/// safetensors writes through a temporary file, created private (0600), and renames it: the
/// weights would be the one file of a checkpoint that others cannot read. This gives `path` the
/// mode a file created here gets (0666 less the umask), as `config.json` beside it has. The
/// umask is read from a probe file because setting it to read it would race other threads.
#[cfg(unix)]
fn give_the_usual_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let probe = path.with_extension("mode-probe");
    let created = std::fs::File::create(&probe).and_then(|f| f.metadata()).map_err(io_error(&probe));
    let _ = std::fs::remove_file(&probe);
    let mode = created?.permissions().mode() & 0o777;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error(path))
}

#[cfg(not(unix))]
fn give_the_usual_mode(_: &Path) -> Result<()> {
    Ok(())
}

/// Writes named tensors as Hugging Face safetensors shards (+ index) in `dtype`.
/// Tensors are copied to the host one shard at a time.
pub fn save_tensors(dir: &Path, named: &[(String, Tensor)], kind: Kind, max_shard_bytes: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut sorted: Vec<&(String, Tensor)> = named.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let size_of = |t: &Tensor| t.numel() * kind.elt_size_in_bytes();
    let mut shards: Vec<Vec<&(String, Tensor)>> = vec![Vec::new()];
    let mut current = 0usize;
    for entry in sorted {
        let bytes = size_of(&entry.1);
        if current > 0 && current + bytes > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += bytes;
        if let Some(last) = shards.last_mut() {
            last.push(entry);
        }
    }
    // Everything is written into a folder beside the old files first: a failure (a full disk)
    // leaves the checkpoint that was there whole, and only renames remain once all is written.
    let staging = tempfile::Builder::new().prefix(".dllm-rl-saving-").tempdir_in(dir).map_err(io_error(dir))?;
    let total: usize = named.iter().map(|(_, t)| size_of(t)).sum();
    let parameters: i64 = named.iter().map(|(_, t)| t.numel() as i64).sum();
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if count == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{count:05}.safetensors", i + 1) };
        let host = shard
            .iter()
            .map(|(n, t)| Ok((n.clone(), HostTensor::new(t, kind)?)))
            .collect::<Result<Vec<_>>>()?;
        write_file(&staging.path().join(&file), &host)?;
        for (name, _) in shard.iter() {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    if count > 1 {
        let index = serde_json::json!({
            "metadata": {"total_parameters": parameters, "total_size": total},
            "weight_map": weight_map,
        });
        write_json(&staging.path().join(INDEX_FILE), &index)?;
    }
    // No file of the old layout stays beside the new one: a loader that globs `*.safetensors`
    // would read stale shards (15 GB of them for a 7B model).
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == SINGLE_FILE || name == INDEX_FILE || is_shard_name(&name) {
            std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
        }
    }
    for entry in std::fs::read_dir(staging.path()).map_err(io_error(staging.path()))?.flatten() {
        let target = dir.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(io_error(&target))?;
    }
    Ok(())
}

/// `model-00001-of-00004.safetensors`: a shard of the Hugging Face sharded layout.
fn is_shard_name(name: &str) -> bool {
    let Some(stem) = name.strip_prefix("model-").and_then(|n| n.strip_suffix(".safetensors")) else { return false };
    let mut parts = stem.split("-of-");
    matches!((parts.next(), parts.next(), parts.next()), (Some(i), Some(n), None)
        if !i.is_empty() && !n.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes named tensors into one safetensors file (adapters, optimizer state).
pub fn save_tensors_file(path: &Path, named: &[(String, Tensor)], kind: Kind) -> Result<()> {
    let host = named.iter().map(|(n, t)| Ok((n.clone(), HostTensor::new(t, kind)?))).collect::<Result<Vec<_>>>()?;
    write_file(path, &host)
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| PolicyError::Json { path: path.into(), source })?;
    std::fs::write(path, text + "\n").map_err(io_error(path))
}

/// How [`DreamModel::save_pretrained`] writes a checkpoint.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// dtype of the saved weights (Hugging Face checkpoints of 7B models are bf16).
    pub kind: Kind,
    /// Largest shard; transformers' default is 5 GB.
    pub max_shard_bytes: usize,
    /// Checkpoint folder whose tokenizer and remote-code files are copied through.
    pub copy_from: Option<PathBuf>,
    /// Fold LoRA adapters into the base weights (`W + scale·B·A`) instead of leaving them out.
    pub merge_lora: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { kind: Kind::BFloat16, max_shard_bytes: 5_000_000_000, copy_from: None, merge_lora: false }
    }
}

pub(crate) fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

impl DreamModel {
    /// The base weights by Hugging Face name (the tied head appears once, as the embedding).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// Saves the model as a Hugging Face checkpoint folder.
    pub fn save_pretrained(&self, dir: &Path, options: &SaveOptions) -> Result<()> {
        let named = if options.merge_lora { self.merged_weights()? } else { self.named_weights() };
        save_tensors(dir, &named, options.kind, options.max_shard_bytes)?;
        write_json(&dir.join("config.json"), &self.config.to_json(dtype_name(options.kind)))?;
        let generation = match &self.config.generation_config {
            Some(map) => serde_json::Value::Object(map.clone()),
            None => {
                let t = &self.config.tokens;
                let mut map = serde_json::Map::new();
                for (key, id) in [("bos_token_id", t.bos), ("pad_token_id", t.pad), ("mask_token_id", t.mask)] {
                    if let Some(id) = id {
                        map.insert(key.into(), id.into());
                    }
                }
                if !t.eos.is_empty() {
                    map.insert("eos_token_id".into(), t.eos.clone().into());
                }
                serde_json::Value::Object(map)
            }
        };
        write_json(&dir.join("generation_config.json"), &generation)?;
        if let Some(source) = &options.copy_from {
            copy_passthrough(source, dir)?;
        }
        Ok(())
    }
}

/// Copies tokenizer files and remote code (`*.py`) from `source` to `dir`.
pub fn copy_passthrough(source: &Path, dir: &Path) -> Result<()> {
    if source.canonicalize().ok() == dir.canonicalize().ok() {
        return Ok(());
    }
    let entries = std::fs::read_dir(source).map_err(io_error(source))?;
    for entry in entries {
        let entry = entry.map_err(io_error(source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if PASSTHROUGH.contains(&name.as_str()) || name.ends_with(".py") {
            std::fs::copy(entry.path(), dir.join(&name)).map_err(io_error(entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_tensor_file_gets_the_mode_of_any_other_file_written_here() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        save_tensors_file(&path, &[("x".into(), Tensor::ones([2], (Kind::Float, Device::Cpu)))], Kind::Float).unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let mode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("optimizer.safetensors"), mode("config.json"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the probe file is removed");
    }

    fn weights(value: f64) -> Vec<(String, Tensor)> {
        (0..4).map(|i| (format!("w{i}"), Tensor::full([64], value, (Kind::Float, Device::Cpu)))).collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        names
    }

    fn load(dir: &Path) -> Result<Vec<f64>> {
        let targets: HashMap<String, Tensor> = weights(0.0).into_iter().collect();
        let listed = if dir.join(INDEX_FILE).exists() {
            let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap()).unwrap();
            let mut shards: Vec<String> =
                index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_owned()).collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|f| dir.join(f)).collect()
        } else {
            vec![dir.join(SINGLE_FILE)]
        };
        load_named(&listed, &targets, &|_| false)?;
        Ok((0..4).map(|i| targets[&format!("w{i}")].double_value(&[0])).collect())
    }

    #[test]
    fn a_new_layout_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        save_tensors(dir.path(), &weights(1.0), Kind::Float, 300).unwrap();
        assert_eq!(files(dir.path()).len(), 5, "four shards and the index: {:?}", files(dir.path()));
        save_tensors(dir.path(), &weights(2.0), Kind::Float, 1 << 20).unwrap();
        assert_eq!(files(dir.path()), [SINGLE_FILE], "no stale shard is left beside the single file");
        assert_eq!(load(dir.path()).unwrap(), [2.0; 4]);
    }

    #[test]
    fn a_failed_save_leaves_the_checkpoint_that_was_there() {
        let dir = tempfile::tempdir().unwrap();
        save_tensors(dir.path(), &weights(1.0), Kind::Float, 300).unwrap();
        let before = files(dir.path());
        assert!(save_tensors(dir.path(), &weights(2.0), Kind::ComplexFloat, 300).is_err());
        assert_eq!(files(dir.path()), before, "nothing removed, nothing half-written left");
        assert_eq!(load(dir.path()).unwrap(), [1.0; 4]);
    }

    #[test]
    fn a_tensor_in_two_files_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let host = |v: f64| vec![("w0".to_string(), HostTensor::new(&Tensor::full([64], v, (Kind::Float, Device::Cpu)), Kind::Float).unwrap())];
        write_file(&dir.path().join("a.safetensors"), &host(1.0)).unwrap();
        write_file(&dir.path().join("b.safetensors"), &host(7.0)).unwrap();
        let targets: HashMap<String, Tensor> = weights(0.0).into_iter().take(1).collect();
        let files = [dir.path().join("a.safetensors"), dir.path().join("b.safetensors")];
        let err = load_named(&files, &targets, &|_| false).unwrap_err().to_string();
        assert!(err.contains("`w0` is also in an earlier file"), "{err}");
    }
}
