//! Next-token samplers: greedy, temperature, top-k, top-p (nucleus), seeded.

use alloc::vec::Vec;

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.0, top_k: 40, top_p: 0.95, seed: 0x5eed }
    }
}

/// A sampler owning its scratch space (allocated once, sized to the vocabulary).
#[derive(Debug)]
pub struct Sampler {
    pub config: SamplerConfig,
    rng: u64,
    candidates: Vec<(f32, u32)>, // (vocab) probability, token id
}

/// Index of the largest value (the first one on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(config: SamplerConfig, vocab_size: usize) -> Self {
        Sampler { config, rng: config.seed ^ 0x9E37_79B9_7F4A_7C15, candidates: Vec::with_capacity(vocab_size) }
    }

    /// xorshift64* (as in llama2.c): a uniform float in [0, 1).
    fn random_f32(&mut self) -> f32 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Pick the next token from `logits` (not modified).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let cfg = self.config;
        if cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        // Softmax at temperature into the candidate list.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.candidates.clear();
        let mut sum = 0.0f32;
        for (i, &l) in logits.iter().enumerate() {
            let p = libm::expf((l - max) / cfg.temperature);
            sum += p;
            self.candidates.push((p, i as u32));
        }
        for c in self.candidates.iter_mut() {
            c.0 /= sum;
        }
        // Most likely first; only the top-k (or all) need ordering.
        let by_prob = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = if cfg.top_k == 0 { self.candidates.len() } else { cfg.top_k.min(self.candidates.len()) };
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_prob);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_prob);
        // Nucleus: the shortest prefix reaching top_p.
        let mut cum = 0.0;
        let mut keep = self.candidates.len();
        if cfg.top_p < 1.0 {
            for (i, c) in self.candidates.iter().enumerate() {
                cum += c.0;
                if cum >= cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = self.candidates[..keep].iter().map(|c| c.0).sum();
        let r = self.random_f32() * total;
        let kept = &self.candidates[..keep];
        let mut acc = 0.0;
        for c in kept {
            acc += c.0;
            if r < acc {
                return c.1;
            }
        }
        kept[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() }, 4);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_repeats() {
        let logits = [0.5f32, 1.0, 0.9, 0.2, 0.95];
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 1, top_p: 1.0, seed: 7 }, 5);
        for _ in 0..20 {
            assert_eq!(s.sample(&logits), 1);
        }
        let cfg = SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 42 };
        let draw = |cfg| {
            let mut s = Sampler::new(cfg, 5);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(cfg), draw(cfg));
        assert_ne!(draw(cfg), draw(SamplerConfig { seed: 43, ..cfg }));
        // With every token allowed, more than one token is drawn.
        let d = draw(cfg);
        assert!(d.iter().any(|&t| t != d[0]));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ≈ [0.867, 0.117, 0.016]: top_p 0.5 keeps only token 0.
        let logits = [4.0f32, 2.0, 0.0];
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 1 }, 3);
        for _ in 0..100 {
            assert_eq!(s.sample(&logits), 0);
        }
    }
}
