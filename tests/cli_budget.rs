//! `--budget SIZE`: the whole process planned to fit a memory budget (weights from the
//! sensitivity profile, KV format, prefill batch and context), on SmolLM2 packed as q8 with a
//! synthetic profile. The process's own peak RSS (VmHWM, `peak_rss_bytes`) must stay within
//! the budget.

mod common;

use common::*;

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn budget_run(model: &std::path::Path, budget: u64) -> serde_json::Value {
    greedy_json(model, "Once upon a time", 32, &["--budget", &format!("{budget}B")])
}

#[test]
fn budgets_from_the_smallest_run_to_f16_kv_and_8_bit_weights_fit() {
    if !have_models() {
        return;
    }
    let m = smollm_q8_profiled();

    // Below the smallest run: one line naming the minimum.
    let e = run([
        "-m",
        m.to_str().unwrap(),
        "-p",
        "Hi",
        "-n",
        "2",
        "--budget",
        "20MB",
    ])
    .one_line_error();
    assert!(e.contains("is below the smallest run of this model"), "{e}");
    let min: u64 = e.split(" bytes: ").next().unwrap().rsplit('(').next().unwrap().parse().unwrap();

    // A budget no plan needs all of: f16 KV at ctx 2048, batch 64, every unit at 8 bits.
    let full = budget_run(&m, 4 << 30);
    let b = &full["budget"];
    assert_eq!(b["kv"], "f16");
    assert_eq!(u(&b["ctx"]), 2048);
    assert!(b["lowered"].as_array().unwrap().is_empty());
    assert!((full["plan"]["bits_per_weight"].as_f64().unwrap() - 8.5).abs() < 0.2, "{}", full["plan"]);
    let max = u(&b["total_bytes"]);
    assert!(min < max);

    // Startup memory varies a little from run to run: start a few MiB above the minimum.
    let lo = min + (4 << 20);
    let mut last_weights = 0;
    eprintln!("budget       weights      bits/w  KV     ctx   batch  peak RSS");
    for k in 0..=4u64 {
        let budget = lo + k * (max - lo) / 4;
        let v = budget_run(&m, budget);
        let b = &v["budget"];
        let weights = u(&v["weight_bytes"]);
        let peak = u(&v["peak_rss_bytes"]);
        eprintln!(
            "{budget:>11}  {weights:>11}  {:.3}   {:<5}  {:>4}  {:>5}  {peak:>11}",
            v["plan"]["bits_per_weight"].as_f64().unwrap(),
            b["kv"].as_str().unwrap(),
            u(&b["ctx"]),
            u(&b["batch"])
        );
        assert_eq!(v["plan"]["source"], "budget");
        assert_eq!(u(&b["weight_bytes"]), weights);
        assert!(weights <= u(&b["weight_allowance_bytes"]));
        // The plan's predictions are what the built model holds.
        assert_eq!(u(&v["kv_cache_bytes"]), u(&b["kv_bytes"]));
        assert_eq!(u(&v["state_bytes"]), u(&b["state_bytes"]) + u(&b["kv_bytes"]));
        assert_eq!(u(&v["ctx"]), u(&b["ctx"]));
        assert_eq!(u(&v["batch_size"]), u(&b["batch"]));
        assert!(u(&b["total_bytes"]) <= budget);
        assert!(peak <= budget, "peak RSS {peak} over the budget {budget}: {b}");
        assert!(weights >= last_weights, "weights shrank as the budget grew: {b}");
        assert_eq!(u(&v["n_generated"]), 32);
        last_weights = weights;
    }
}

#[test]
fn a_user_ctx_that_cannot_fit_names_the_largest_that_does() {
    if !have_models() {
        return;
    }
    let m = smollm_q8_profiled();
    let e = run(["-m", m.to_str().unwrap(), "-p", "Hi", "-n", "2", "--budget", "140MB", "--ctx", "8192"]).one_line_error();
    assert!(e.contains("the largest context that fits is --ctx "), "{e}");
}

#[test]
fn budget_conflicts_with_the_weight_flags() {
    for flag in [["--bits", "4"], ["--weight-budget", "90MB"], ["--plan", "x.toml"]] {
        let r = run(["-m", "x.edge", "-p", "Hi", "--budget", "150MB", flag[0], flag[1]]);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("cannot be used with"), "{}", r.stderr);
    }
}
