//! Writing `checkpoints/step-N/`: every rank writes its part into `step-N.tmp` (rank 0 the
//! weights, the trainer state and a whole optimizer; each rank its optimizer shard under
//! ZeRO-2), the ranks agree that all parts were written, and rank 0 renames the folder. A crash
//! or a failed rank never leaves a complete-looking checkpoint with a part missing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use dllm_dist::World;
use dllm_policy::{DreamModel, ParallelAdamW, SaveOptions};

use super::{absolute, TrainerState};

/// Writes `run_dir/checkpoints/step-N/` (N = `state.step`): adapters (PEFT) or the model
/// (Hugging Face, tokenizer copied from `base`), the optimizer state and `trainer.json`. Every
/// rank calls it; it returns the folder on every rank once all parts are in place.
pub fn write_checkpoint(world: &World, run_dir: &Path, base: &Path, model: &DreamModel, optimizer: &ParallelAdamW, state: &TrainerState) -> anyhow::Result<PathBuf> {
    let dir = run_dir.join("checkpoints");
    let final_dir = dir.join(format!("step-{}", state.step));
    let tmp = dir.join(format!("step-{}.tmp", state.step));
    let prepared = if world.is_main() {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))
    } else {
        Ok(())
    };
    agree(world, prepared, "could not create the checkpoint folder")?;

    let written = (|| -> anyhow::Result<()> {
        if world.is_main() {
            match &model.lora {
                // An absolute base path: PEFT's AutoPeftModelForCausalLM resolves a relative one
                // against the hub, not against the adapter's folder.
                Some(_) => model.save_lora(&tmp.join("adapter"), Some(&absolute(base).display().to_string()))?,
                None => {
                    let options = SaveOptions { kind: model.placement.param_kind, copy_from: Some(base.to_path_buf()), ..SaveOptions::default() };
                    model.save_pretrained(&tmp.join("model"), &options)?;
                }
            }
            std::fs::write(tmp.join("trainer.json"), serde_json::to_string_pretty(state)?)?;
        }
        optimizer.save(&tmp, world).with_context(|| format!("rank {}: writing its optimizer state into {}", world.rank, tmp.display()))?;
        Ok(())
    })();
    agree(world, written, "could not write its part of the checkpoint")?;

    let renamed = if world.is_main() {
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))
    } else {
        Ok(())
    };
    agree(world, renamed, "could not rename the checkpoint folder")?;
    Ok(final_dir)
}

/// Every rank learns whether every rank succeeded: this rank's own error, or one naming how
/// many others failed (their own logs say why).
fn agree(world: &World, outcome: anyhow::Result<()>, what: &str) -> anyhow::Result<()> {
    let mut failed = [f64::from(u8::from(outcome.is_err()))];
    world.sum_f64(&mut failed).context("agreeing on the checkpoint across ranks")?;
    outcome?;
    if failed[0] > 0.0 {
        bail!("{} other rank(s) {what} (their logs say why): the checkpoint is left incomplete, as step-N.tmp", failed[0]);
    }
    Ok(())
}
