//! Approximate key/value caching for diffusion decoding (Fast-dLLM).
//!
//! A diffusion LM attends bidirectionally, so no key or value is ever final: every committed
//! token changes every other position's keys. Fast-dLLM's approximation: run one full forward
//! (the *refresh*) and keep every layer's keys and values; then, for a while, recompute only a
//! region (the block being decoded, plus everything after it in prefix mode) and reuse the
//! cached keys and values outside it. The cached ones are stale by whatever was committed since
//! the refresh; the sampler refreshes once per block.
//!
//! [`DreamModel::forward_filling_cache`] is the refresh; [`DreamModel::forward_region`] the
//! cheap pass, which writes the region's fresh keys and values into the cache in place (so the
//! next region pass sees them, as Fast-dLLM's `replace_position` does).

use tch::{Kind, Tensor};

use crate::error::{PolicyError, Result};
use crate::model::{DreamModel, KvUse, Pass};

/// Every layer's keys and values (B, nkv, L, D), after the rotary embedding.
pub struct KvCache {
    pub layers: Vec<(Tensor, Tensor)>,
    /// The padding mask of the sequence the cache was filled from.
    attention: Option<Tensor>,
}

impl KvCache {
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |(k, _)| k.size()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DreamModel {
    /// A full forward (as [`DreamModel::forward`]) that also returns every layer's keys and
    /// values.
    pub fn forward_filling_cache(&self, input_ids: &Tensor, attention: Option<&Tensor>, pass: Pass) -> (Tensor, KvCache) {
        let rope = self.rotary.tables(input_ids.size()[1], self.placement.compute_kind);
        let mask = Self::attention_mask(attention);
        let mut x = self.embed(input_ids);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let mut slot = None;
            x = layer.forward_kv(&x, &rope, mask.as_ref(), pass, KvUse::Record(&mut slot));
            if let Some(kv) = slot {
                layers.push(kv);
            }
        }
        let cache = KvCache { layers, attention: attention.map(|a| a.shallow_clone()) };
        (self.norm.forward(&x), cache)
    }

    /// Hidden states (B, R, H) of the region `offset..offset + R` of the cached sequence, given
    /// its current ids `region_ids` (B, R); keys and values outside the region come from the
    /// cache, the region's own are written into it.
    pub fn forward_region(&self, region_ids: &Tensor, offset: i64, cache: &KvCache, pass: Pass) -> Result<Tensor> {
        let (b, r) = (region_ids.size()[0], region_ids.size()[1]);
        if cache.layers.len() != self.layers.len() || offset < 0 || offset + r > cache.len() {
            return Err(PolicyError::Invalid(format!(
                "region {offset}..{} does not fit a cache of {} positions and {} layers",
                offset + r,
                cache.len(),
                cache.layers.len()
            )));
        }
        let rope = self.rotary.tables_from(offset, r, self.placement.compute_kind);
        // Region queries are never padding; keys are masked where the sequence is padded.
        let mask = cache.attention.as_ref().map(|a| {
            let keys = a.to_kind(Kind::Bool).view([b, 1, 1, cache.len()]);
            keys.expand([b, 1, r, cache.len()], false)
        });
        let mut x = self.embed(region_ids);
        for (layer, (keys, values)) in self.layers.iter().zip(&cache.layers) {
            x = layer.forward_kv(&x, &rope, mask.as_ref(), pass, KvUse::Region { keys, values, offset });
        }
        Ok(self.norm.forward(&x))
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use crate::model::testing::tiny_model;
    use crate::model::Pass;

    #[test]
    fn a_region_pass_on_a_fresh_cache_equals_the_full_forward() {
        let model = tiny_model(false, 7);
        let ids = Tensor::randint_low(1, 39, [2, 14], (Kind::Int64, Device::Cpu));
        tch::no_grad(|| {
            let (full, cache) = model.forward_filling_cache(&ids, None, Pass::EVAL);
            assert!(full.allclose(&model.forward(&ids, None, Pass::EVAL), 1e-6, 1e-6, false));
            // Nothing changed since the refresh: the region's hidden states are exact.
            let region = model.forward_region(&ids.narrow(1, 5, 6), 5, &cache, Pass::EVAL).unwrap();
            assert!(region.allclose(&full.narrow(1, 5, 6), 1e-5, 1e-6, false));
            // After a change inside the region, the region sees it (its keys are fresh) while
            // the positions outside keep their stale keys: close to, not equal to, a full pass.
            let changed = ids.copy();
            let _ = changed.narrow(1, 7, 1).fill_(3);
            let region = model.forward_region(&changed.narrow(1, 5, 9), 5, &cache, Pass::EVAL).unwrap();
            let exact = model.forward(&changed, None, Pass::EVAL).narrow(1, 5, 9);
            assert!(!region.allclose(&full.narrow(1, 5, 9), 1e-4, 1e-4, false));
            assert!(!region.allclose(&exact, 1e-6, 1e-6, false));
        });
    }

    #[test]
    fn region_passes_respect_left_padding() {
        let model = tiny_model(false, 8);
        let ids = Tensor::randint_low(1, 39, [1, 12], (Kind::Int64, Device::Cpu));
        let attention = Tensor::ones([1, 12], (Kind::Int64, Device::Cpu));
        let _ = attention.narrow(1, 0, 3).fill_(0);
        tch::no_grad(|| {
            let (full, cache) = model.forward_filling_cache(&ids, Some(&attention), Pass::EVAL);
            let region = model.forward_region(&ids.narrow(1, 8, 4), 8, &cache, Pass::EVAL).unwrap();
            assert!(region.allclose(&full.narrow(1, 8, 4), 1e-5, 1e-6, false));
            // Equal to the unpadded sequence's tail: the pads are invisible.
            let alone = model.forward(&ids.narrow(1, 3, 9), None, Pass::EVAL).narrow(1, 5, 4);
            assert!(region.allclose(&alone, 1e-5, 1e-6, false));
        });
    }

    #[test]
    fn a_region_outside_the_cache_is_refused() {
        let model = tiny_model(false, 9);
        let ids = Tensor::randint_low(1, 39, [1, 6], (Kind::Int64, Device::Cpu));
        let (_, cache) = tch::no_grad(|| model.forward_filling_cache(&ids, None, Pass::EVAL));
        assert!(model.forward_region(&ids.narrow(1, 2, 4), 4, &cache, Pass::EVAL).is_err());
    }
}
