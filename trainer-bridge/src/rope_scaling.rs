//! RoPE scaling read from a source's config, turned into what a checkpoint stores: Llama 3.x's
//! per-frequency divisors (`rope_freqs.weight`, as llama.cpp's converter computes them). Any
//! other kind is refused by name.

use anyhow::{anyhow, bail};
use serde_json::Value;

/// Llama 3.x's `rope_scaling` parameters (`"rope_type": "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3 {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// The RoPE scaling of a Hugging Face `config.json`'s `rope_scaling` (or transformers 5's
/// `rope_parameters`; `where` names the file in errors): `None` when absent, null or `default`;
/// an error naming any kind but `llama3`.
pub fn from_hf(rope_scaling: Option<&Value>, r#where: &str) -> anyhow::Result<Option<Llama3>> {
    let Some(rs) = rope_scaling.filter(|v| !v.is_null()) else { return Ok(None) };
    // No type and no factor: transformers 5's `rope_parameters` of an unscaled model.
    let untyped = if rs.get("factor").is_some() { "?" } else { "default" };
    let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or(untyped);
    match kind {
        "default" => return Ok(None),
        "llama3" => {}
        other => bail!(
            "{where} sets rope_scaling of type '{other}', which edge-run does not implement (it runs 'llama3'); the model would run with wrong positions"
        ),
    }
    let num = |key: &str| -> anyhow::Result<f64> {
        let v = rs.get(key).ok_or_else(|| anyhow!("{where}: rope_scaling (llama3) lacks '{key}'"))?;
        v.as_f64()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| anyhow!("{where}: rope_scaling '{key}' = {v} is not a positive number"))
    };
    let p = Llama3 {
        factor: num("factor")?,
        low_freq_factor: num("low_freq_factor")?,
        high_freq_factor: num("high_freq_factor")?,
        original_max_position_embeddings: num("original_max_position_embeddings")?,
    };
    if p.high_freq_factor <= p.low_freq_factor {
        bail!(
            "{where}: rope_scaling high_freq_factor {} must exceed low_freq_factor {}",
            p.high_freq_factor,
            p.low_freq_factor
        );
    }
    Ok(Some(p))
}

impl Llama3 {
    /// The divisor of each of the `head_dim/2` frequencies `theta^(-2i/head_dim)`: 1 for short
    /// wavelengths, `factor` for long ones, blended between (Hugging Face's
    /// `_compute_llama3_parameters`, llama.cpp's `rope_freqs`).
    pub fn freq_factors(&self, theta: f64, head_dim: usize) -> Vec<f32> {
        let low_wavelen = self.original_max_position_embeddings / self.low_freq_factor;
        let high_wavelen = self.original_max_position_embeddings / self.high_freq_factor;
        (0..head_dim / 2)
            .map(|i| {
                let freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let divisor = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    self.factor
                } else {
                    let smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - smooth) / self.factor + smooth)
                };
                divisor as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llama3_factors_run_from_one_to_factor() {
        // Llama 3.2's: theta 500000, head_dim 64.
        let rs = json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let p = from_hf(Some(&rs), "x").unwrap().unwrap();
        let f = p.freq_factors(500000.0, 64);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 32.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
        assert!(f.iter().any(|&x| x > 1.0 && x < 32.0), "a blended band: {f:?}");
    }

    #[test]
    fn other_kinds_are_refused_by_name() {
        for kind in ["yarn", "linear", "dynamic", "longrope"] {
            let e = from_hf(Some(&json!({"type": kind, "factor": 2.0})), "'c.json'").unwrap_err().to_string();
            assert!(e.contains(kind) && !e.contains('\n'), "{e}");
        }
        assert!(from_hf(Some(&Value::Null), "x").unwrap().is_none());
        assert!(from_hf(None, "x").unwrap().is_none());
        let e = from_hf(Some(&json!({"rope_type": "llama3", "factor": 8.0})), "x").unwrap_err().to_string();
        assert!(e.contains("low_freq_factor"), "{e}");
    }
}
