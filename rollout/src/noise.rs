//! Explicit randomness: every random choice of a row at a step comes from a ChaCha8 stream
//! seeded by (the row's seed, the step), drawn for every position of the canvas whether masked
//! or not. So a row's rollout depends on its seed alone: not on the other rows of its batch, on
//! the batch size, on the device, or on libtorch's global generator. Replaying a seed replays
//! the rollout (up to floating-point differences between devices).

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use tch::{Device, Tensor};

/// A seed for one (run, step, prompt, sample): distinct inputs give unrelated streams.
pub fn rollout_seed(run_seed: u64, step: u64, prompt: u64, sample: u64) -> u64 {
    dllm_policy::mask_seed(dllm_policy::mask_seed(run_seed, step, prompt), sample, 0x726f_6c6c)
}

/// Uniforms in the open interval (0, 1) for one step: (token draws, position draws), each
/// (B, L) fp32 on `device`. `steps[b]` is row b's own step count (rows of one batch may be at
/// different steps: threshold decoding finishes blocks at different times).
pub fn step_uniforms(seeds: &[u64], steps: &[u64], len: i64, device: Device) -> (Tensor, Tensor) {
    let mut tokens = Vec::with_capacity(seeds.len() * len as usize);
    let mut positions = Vec::with_capacity(seeds.len() * len as usize);
    for (&seed, &step) in seeds.iter().zip(steps) {
        let mut rng = ChaCha8Rng::seed_from_u64(dllm_policy::mask_seed(seed, step, 0x7374_6570));
        for _ in 0..len {
            tokens.push(open_uniform(&mut rng));
        }
        for _ in 0..len {
            positions.push(open_uniform(&mut rng));
        }
    }
    let b = seeds.len() as i64;
    let to = |v: Vec<f32>| Tensor::from_slice(&v).view([b, len]).to_device(device);
    (to(tokens), to(positions))
}

fn open_uniform(rng: &mut ChaCha8Rng) -> f32 {
    ((rng.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_draws_do_not_depend_on_its_batch() {
        let (alone, _) = step_uniforms(&[42], &[3], 10, Device::Cpu);
        let (batched, _) = step_uniforms(&[7, 42, 9], &[0, 3, 5], 10, Device::Cpu);
        assert!(alone.get(0).equal(&batched.get(1)));
        let (next_step, _) = step_uniforms(&[42], &[4], 10, Device::Cpu);
        assert!(!alone.equal(&next_step));
        assert_ne!(rollout_seed(1, 2, 3, 4), rollout_seed(1, 2, 4, 3));
    }
}
