//! `edge-run inspect` of a GGUF file (llama.cpp's format): its tensors by type, and the bytes
//! one decoded token reads, the figure a decode roofline divides by (`benches/llama-compare.sh`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use edge_pack::gguf::GgufFile;
use edge_runtime::arch::Role;
use serde_json::json;

use crate::stats::human_bytes;

#[derive(Default)]
struct Totals {
    tensors: usize,
    params: u64,
    bytes: u64,
}

pub fn run(path: &Path, json: bool) -> Result<()> {
    let g = GgufFile::open(path).map_err(|e| anyhow!("{e:#}"))?;
    let arch_name = g.get_str("general.architecture").ok().flatten().unwrap_or("unknown").to_string();
    let arch = edge_runtime::arch::by_name(&arch_name).ok();
    let role = |name: &str| arch.and_then(|a| a.locate(name)).map(|(_, s)| s.role);
    let mut types: BTreeMap<String, Totals> = BTreeMap::new();
    // Types edge-pack cannot read have no known size here: their tensors count, their bytes not.
    let mut unknown = Vec::new();
    let (mut embedding, mut head) = (None, false);
    for t in &g.tensors {
        let e = types.entry(t.ty.name()).or_default();
        e.tensors += 1;
        e.params += t.n_elements();
        match t.n_bytes() {
            Some(b) => e.bytes += b,
            None => unknown.push(t.name.clone()),
        }
        match role(&t.name) {
            Some(Role::Embedding) => embedding = t.n_bytes(),
            Some(Role::Head) => head = true,
            _ => {}
        }
    }
    let params: u64 = types.values().map(|t| t.params).sum();
    let bytes: u64 = types.values().map(|t| t.bytes).sum();
    // A token reads every tensor once, except an untied token embedding, of which it reads one
    // row; a tied one is read whole, as the head. Unknown without the architecture's tensors.
    let decode_bytes = match (arch, unknown.is_empty(), head, embedding) {
        (Some(_), true, true, Some(e)) => Some(bytes - e),
        (Some(_), true, false, _) => Some(bytes),
        _ => None,
    };
    let file = path.display().to_string();
    if json {
        let by_type: serde_json::Map<String, serde_json::Value> = types
            .iter()
            .map(|(k, t)| (k.clone(), json!({"tensors": t.tensors, "params": t.params, "bytes": t.bytes})))
            .collect();
        let doc = json!({
            "file": file,
            "format": "gguf",
            "version": g.version,
            "architecture": arch_name,
            "supported_architecture": arch.is_some(),
            "tensors": g.tensors.len(),
            "params": params,
            "bytes": bytes,
            "unknown_size_tensors": unknown,
            "tied_embeddings": arch.map(|_| !head),
            "decode_bytes": decode_bytes,
            "types": by_type,
        });
        println!("{doc}");
        return Ok(());
    }
    println!("{file}: GGUF version {}, architecture {arch_name}{}", g.version, if arch.is_some() { "" } else { " (not one edge-run runs)" });
    println!("  {} tensors, {:.3} B parameters, {} of tensor data", g.tensors.len(), params as f64 / 1e9, human_bytes(bytes));
    println!("  by type:");
    for (k, t) in &types {
        let bits = if t.params > 0 { t.bytes as f64 * 8.0 / t.params as f64 } else { 0.0 };
        println!("    {k:<8} {:>5} tensors {:>14} params {:>12} {bits:>6.2} bits/weight", t.tensors, t.params, human_bytes(t.bytes));
    }
    if !unknown.is_empty() {
        println!("  {} tensor(s) of a type edge-pack cannot read, sizes not counted (first: {})", unknown.len(), unknown[0]);
    }
    match decode_bytes {
        Some(d) if head => println!("  read per decoded token: {} (all but the untied token embedding, of which a token reads one row)", human_bytes(d)),
        Some(d) => println!("  read per decoded token: {} (every tensor; the embedding is tied to the head)", human_bytes(d)),
        None => println!("  read per decoded token: unknown (an architecture edge-run does not know, or tensors of unknown size)"),
    }
    Ok(())
}
