//! Writes the nested 8-bit contract's test vectors (`runtime/src/blocks.rs`) as JSON, for the
//! Python trainer's tests (`trainer-bridge/python/tests/test_contract.py`) to check against bit
//! for bit. The committed copy is `trainer-bridge/python/tests/data/contract_vectors.json`;
//! `tests/contract_vectors.rs` regenerates it and fails if the Rust side drifted.
//!
//! ```text
//! cargo run -p edge-pack --example contract_vectors -- trainer-bridge/python/tests/data/contract_vectors.json
//! ```
//!
//! Each case is a tensor `[rows, cols]` quantized in groups of `group_size` along a row (rows
//! padded to whole groups) with the packer's min/max parameters (`quant::covering_params`) and
//! the contract's codes (`blocks::nested8_quantize`), then reconstructed by the runtime's
//! reference `dequant_nested8` at every view. Floats travel as their bit patterns (f32 as u32,
//! f16 as u16); every NaN is written as 0x7fc00000. Cases with `"params": "super"` hold
//! super-block parameters instead (`--params super`: `d`, `dmin` per block of 8 groups, `s`, `m`
//! per group), chosen by the packer from the same min/max spans (`quant::super_blocks`).

use edge_pack::quant::{quantize_group, quantize_nested, NestedCoding, NestedObjective, NestedParams, ParamLayout};
use edge_runtime::blocks::{dequant_nested8, pack_nested8_planes, GroupParams, ParamsRef, NESTED8_VIEWS};
use half::f16;

/// xorshift64: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f32 {
        ((-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()) as f32
    }
}

fn bits32(x: f32) -> u32 {
    if x.is_nan() {
        0x7fc0_0000
    } else {
        x.to_bits()
    }
}

/// One case as a compact JSON object (one line).
fn case(name: &str, rows: usize, cols: usize, group: usize, w: &[f32]) -> String {
    assert_eq!(w.len(), rows * cols);
    let padded = cols.div_ceil(group) * group;
    let mut params = Vec::new();
    let mut codes = vec![0u8; rows * padded];
    for (r, wrow) in w.chunks(cols).enumerate() {
        for (g, wg) in wrow.chunks(group).enumerate() {
            let at = r * padded + g * group;
            params.push(quantize_group(wg, NestedObjective::MinMax, &mut codes[at..at + wg.len()]));
        }
    }
    let planes = pack_nested8_planes(&codes);
    let refs: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
    let mut recon = serde_json::Map::new();
    for &v in &NESTED8_VIEWS {
        let mut out = vec![0f32; rows * padded];
        dequant_nested8(&params, &refs, group, v, 0, &mut out);
        recon.insert(v.to_string(), out.iter().map(|&x| bits32(x)).collect::<Vec<_>>().into());
    }
    let p16 = |f: fn(&GroupParams) -> f16| params.iter().map(|p| f(p).to_bits()).collect::<Vec<_>>();
    serde_json::json!({
        "name": name, "rows": rows, "cols": cols, "group_size": group,
        "weights": w.iter().map(|&x| bits32(x)).collect::<Vec<_>>(),
        "scale": p16(|p| p.scale), "min": p16(|p| p.min),
        "codes": codes, "recon": recon,
    })
    .to_string()
}

/// One case with super-block parameters (min/max spans, `quant::quantize_nested`).
fn case_super(name: &str, rows: usize, cols: usize, group: usize, w: &[f32]) -> String {
    let coding = NestedCoding { objective: NestedObjective::MinMax, layout: ParamLayout::Super };
    let (NestedParams::Super { blocks: supers, groups_per_row: gpr }, codes) = quantize_nested(name, w, cols, group, coding).expect("finite weights") else {
        unreachable!("super-block layout asked")
    };
    let planes = pack_nested8_planes(&codes);
    let refs: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
    let padded = cols.div_ceil(group) * group;
    let mut recon = serde_json::Map::new();
    for &v in &NESTED8_VIEWS {
        let mut out = vec![0f32; rows * padded];
        dequant_nested8(ParamsRef::Super { blocks: &supers, groups_per_row: gpr }, &refs, group, v, 0, &mut out);
        recon.insert(v.to_string(), out.iter().map(|&x| bits32(x)).collect::<Vec<_>>().into());
    }
    let groups = rows * padded / group;
    serde_json::json!({
        "name": name, "rows": rows, "cols": cols, "group_size": group, "params": "super",
        "weights": w.iter().map(|&x| bits32(x)).collect::<Vec<_>>(),
        "d": supers.iter().map(|b| b.d.to_bits()).collect::<Vec<_>>(),
        "dmin": supers.iter().map(|b| b.dmin.to_bits()).collect::<Vec<_>>(),
        "s": (0..groups).map(|g| supers[g / gpr * gpr.div_ceil(8) + g % gpr / 8].s(g % gpr % 8)).collect::<Vec<_>>(),
        "m": (0..groups).map(|g| supers[g / gpr * gpr.div_ceil(8) + g % gpr / 8].m(g % gpr % 8)).collect::<Vec<_>>(),
        "codes": codes, "recon": recon,
    })
    .to_string()
}

/// Groups of `group` weights that stress the contract's corners, one group per row.
fn edge_rows(group: usize) -> Vec<(&'static str, Vec<f32>)> {
    let fill = |f: &dyn Fn(usize) -> f32| (0..group).map(f).collect::<Vec<f32>>();
    vec![
        ("zeros", fill(&|_| 0.0)),
        ("constant", fill(&|_| 0.3)),
        ("constant negative", fill(&|_| -1234.5)),
        // min 0, scale 1: every odd weight lies exactly half way between two codes.
        ("ties", fill(&|i| if i == 0 { 0.0 } else if i == 1 { 255.0 } else { (i * 37 % 250) as f32 + 0.5 })),
        // min -1, scale 1/32 (exact in f16): ties at quarter-code multiples too.
        ("ties scaled", fill(&|i| if i == 0 { -1.0 } else if i == 1 { 6.96875 } else { -1.0 + (i * 11 % 255) as f32 / 32.0 + 1.0 / 64.0 })),
        ("negative zero", fill(&|i| if i % 3 == 0 { -0.0 } else { i as f32 * 0.01 })),
        ("tiny subnormal range", fill(&|i| 1e-8 + i as f32 * 1e-10)),
        ("tiny around zero", fill(&|i| (i as f32 - group as f32 / 2.0) * 3e-9)),
        ("f16 edge", fill(&|i| if i % 2 == 0 { -65504.0 } else { 65504.0 * (i as f32 / group as f32) })),
        ("f16 overflow of min", fill(&|i| if i == 0 { -65519.0 } else { i as f32 })),
        ("beyond f16", fill(&|i| if i == 0 { -1e6 } else { 1e6 * i as f32 / group as f32 })),
        ("min rounds up", fill(&|i| if i == 0 { 0.1 } else { 0.1 + i as f32 * 1e-3 })),
    ]
}

/// The whole vector file: random tensors at several group sizes (row lengths not multiples of
/// the group), then the edge-case groups.
pub fn vectors_json() -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cases = Vec::new();
    for (group, rows, cols) in [(8usize, 3usize, 21usize), (32, 4, 70), (64, 3, 172), (128, 2, 300)] {
        // Row scales from 1e-4 to 10, one row shifted off zero.
        let mut w = Vec::new();
        for r in 0..rows {
            let s = 10f32.powi(r as i32 * 5 / rows as i32 - 4 + (group == 128) as i32 * 3);
            let shift = if r == 1 { 3.0 * s } else { 0.0 };
            w.extend((0..cols).map(|_| rng.gauss() * s + shift));
        }
        cases.push(case(&format!("random g{group}"), rows, cols, group, &w));
    }
    let group = 32;
    let edges = edge_rows(group);
    for (name, w) in &edges {
        cases.push(case(name, 1, group, group, w));
    }
    // A partial last group: 13 weights in a group of 32.
    let w: Vec<f32> = (0..45).map(|i| (i as f32 * 0.37).sin()).collect();
    cases.push(case("partial last group", 1, 45, group, &w));
    // Super-block parameters: rows of 5 and 10 groups (a partial block ending each row), a partial last block,
    // groups of very different spans in one block, and the edge rows stacked into one tensor.
    for (group, rows, cols) in [(32usize, 3usize, 160usize), (8, 3, 76), (64, 2, 136)] {
        let w: Vec<f32> = (0..rows * cols).map(|i| rng.gauss() * 10f32.powi((i / group % 5) as i32 - 3) + if i % 7 == 0 { 0.01 } else { 0.0 }).collect();
        cases.push(case_super(&format!("super g{group}"), rows, cols, group, &w));
    }
    let finite: Vec<f32> = edges.iter().filter(|(n, _)| !n.contains("beyond") && !n.contains("edge") && !n.contains("overflow")).flat_map(|(_, w)| w.clone()).collect();
    cases.push(case_super("super edge rows", finite.len() / group, group, group, &finite));
    format!(
        "{{\"format\": \"edge-run nested8 contract vectors\", \"version\": 1, \"views\": [2, 3, 4, 5, 6, 8],\n\"cases\": [\n{}\n]}}\n",
        cases.join(",\n")
    )
}

#[allow(dead_code)]
fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: contract_vectors OUT.json");
        std::process::exit(2);
    };
    if let Err(e) = std::fs::write(&out, vectors_json()) {
        eprintln!("contract_vectors: error: cannot write {out}: {e}");
        std::process::exit(1);
    }
}
