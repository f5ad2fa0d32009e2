//! The denoising schedule: timesteps `linspace(1, eps, steps + 1)` and how many masked tokens a
//! step commits, `floor(m (1 - s/t))` with (t, s) the step's two timesteps, everything left at
//! the last step. Computed in fp32 as the reference does (the floor is sensitive to rounding:
//! for 768 tokens in 768 steps the first step commits 0 tokens, the last 2).

/// `linspace(1, eps, steps + 1)` in fp32.
pub fn timesteps(steps: i64, eps: f64) -> Vec<f32> {
    let (start, end) = (1.0f32, eps as f32);
    let step = (end - start) / steps as f32;
    // torch.linspace fills the first half from the start and the second half from the end.
    (0..=steps)
        .map(|i| if i < (steps + 1) / 2 { start + step * i as f32 } else { end - step * (steps - i) as f32 })
        .collect()
}

/// The fraction of masked tokens committed at step `i` of `ts.len() - 1` steps: `1 - s/t`, and 1
/// at the last step.
pub fn transfer_ratio(ts: &[f32], i: usize) -> f32 {
    if i + 2 >= ts.len() {
        1.0
    } else {
        1.0 - ts[i + 1] / ts[i]
    }
}

/// Tokens committed at each step by one row that starts with `masked` masks and follows the
/// schedule alone (what the per-row quota gives; for tests and documentation).
pub fn per_step_commits(masked: i64, steps: i64, eps: f64) -> Vec<i64> {
    let ts = timesteps(steps, eps);
    let mut left = masked;
    (0..steps as usize)
        .map(|i| {
            let k = if i + 1 == steps as usize { left } else { ((left as f32) * transfer_ratio(&ts, i)).floor() as i64 };
            let k = k.min(left);
            left -= k;
            k
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_run_from_one_to_eps() {
        let ts = timesteps(4, 1e-3);
        assert_eq!(ts.len(), 5);
        assert_eq!(ts[0], 1.0);
        assert!((ts[4] - 1e-3).abs() < 1e-7);
        assert!(ts.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn every_token_is_committed_exactly_once() {
        for (n, steps) in [(768, 768), (128, 128), (128, 64), (32, 32), (32, 7), (5, 1), (1, 8)] {
            let commits = per_step_commits(n, steps, 1e-3);
            assert_eq!(commits.len(), steps as usize);
            assert_eq!(commits.iter().sum::<i64>(), n, "{n} tokens in {steps} steps");
            assert!(commits.iter().all(|&k| k >= 0));
        }
    }

    #[test]
    fn dream_coder_schedule_shape() {
        // 768 in 768 steps: nothing at the first step, then one per step, two at the end.
        let commits = per_step_commits(768, 768, 1e-3);
        assert_eq!(commits[0], 0);
        assert!(commits[1..767].iter().all(|&k| k == 1), "{:?}", &commits[..10]);
        assert_eq!(commits[767], 2);
        // Half as many steps: about two per step.
        let commits = per_step_commits(128, 64, 1e-3);
        assert!(commits[1..63].iter().all(|&k| (1..=3).contains(&k)), "{commits:?}");
    }
}
