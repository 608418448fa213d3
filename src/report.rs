//! How results and errors are written, the same in every command: JSON of a model's config
//! and of f32 values, and messages collapsed to one line.

use edge_runtime::Config;
use serde_json::json;

/// A model's config as every command's JSON reports it.
pub fn config_json(c: &Config) -> serde_json::Value {
    json!({
        "dim": c.dim,
        "hidden_dim": c.hidden_dim,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "context_length": c.max_seq_len,
        "norm_eps": f32_json(c.norm_eps),
        "rope_theta": f32_json(c.rope_theta),
        "tied_embeddings": c.tied_embeddings,
        "rope_freq_factors": c.rope_freq_factors,
    })
}

/// An f32 as the shortest decimal that reads back to it (1e-5, not 9.999999747378752e-6).
pub fn f32_json(v: f32) -> serde_json::Value {
    v.to_string().parse::<f64>().map(|f| json!(f)).unwrap_or(serde_json::Value::Null)
}

/// Collapse a possibly multi-line message to one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::new();
    for l in s.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') || out.ends_with(';') { " " } else { "; " });
        }
        // Other control characters (from a file's metadata, say) are shown escaped, never sent
        // to the terminal.
        for ch in l.chars() {
            if ch.is_control() {
                out.extend(ch.escape_default());
            } else {
                out.push(ch);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n\n  b:\n  c\r\n"), "a; b: c");
    }

    #[test]
    fn one_line_escapes_control_characters() {
        assert_eq!(one_line("architecture 'x\u{1b}[31my\u{7}' is not supported"), "architecture 'x\\u{1b}[31my\\u{7}' is not supported");
    }

    #[test]
    fn f32_as_its_shortest_decimal() {
        assert_eq!(f32_json(1e-5).to_string(), "0.00001");
        assert_eq!(f32_json(0.8).to_string(), "0.8");
    }
}
