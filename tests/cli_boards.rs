//! `edge-run boards` and `--board`: the built-in board files, errors for unknown names and bad
//! files, and the board's default thread count in a run.

mod common;
use common::*;

const KNOWN: [&str; 7] = ["rpi4-4gb", "rpi4-8gb", "rpi5-4gb", "rpi5-8gb", "rpi5-16gb", "jetson-orin-nano", "jetson-orin-nx"];

#[test]
fn every_built_in_board_is_listed_and_valid() {
    let v = run(["boards", "--json"]).json();
    let boards = v["boards"].as_array().expect("boards");
    let names: Vec<&str> = boards.iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, KNOWN);
    for b in boards {
        let cores = b["cores"].as_u64().unwrap();
        assert!(cores > 0);
        assert!(b["big_cores"].as_array().unwrap().iter().all(|c| c.as_u64().unwrap() < cores), "{b}");
        let f = b["default_budget_fraction"].as_f64().unwrap();
        assert!(f > 0.0 && f <= 1.0, "{b}");
        assert!(b["memory_bytes"].as_u64().unwrap() > b["margin_bytes"].as_u64().unwrap(), "{b}");
        let table = b["kernel_table"].as_str().unwrap();
        let want = if b["name"].as_str().unwrap().starts_with("rpi4") { "neon" } else { "neon+dotprod" };
        assert_eq!(table, want, "{b}");
    }
    // The text listing has one line per board.
    let text = run(["boards"]).ok().stdout.clone();
    for name in KNOWN {
        assert_eq!(text.lines().filter(|l| l.split_whitespace().any(|w| w == name)).count(), 1, "{text}");
    }
}

#[test]
fn an_unknown_board_lists_the_known_ones() {
    let e = run(["-m", "model.edge", "-p", "hi", "--board", "rpi9"]).one_line_error();
    assert!(e.contains("unknown board 'rpi9'"), "{e}");
    for name in KNOWN {
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn a_bad_board_file_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/board-configs/rpi5-8gb.toml")).unwrap();
    let cases = [
        ("wrong-type.toml", good.replace("\ncores = 4\n", "\ncores = \"four\"\n"), "`cores`"),
        ("unknown-field.toml", good.replace("\ncores = 4\n", "\ncpu_cores = 4\n"), "`cpu_cores`"),
        ("fraction.toml", good.replace("default_budget_fraction = 0.8", "default_budget_fraction = 1.5"), "`default_budget_fraction`"),
        ("table.toml", good.replace("\"neon+dotprod\"", "\"sve2\""), "`kernel_table`"),
        ("big-cores.toml", good.replace("[0, 1, 2, 3]", "[0, 1, 2, 4]"), "`big_cores`"),
        ("hold.toml", good.replace("[power]\n", "[power]\nhold = \"VDD_NOPE\"\n"), "`power.hold`"),
    ];
    for (file, text, field) in cases {
        assert_ne!(text, good, "{file}: the replacement did not apply");
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let e = run(["-m".as_ref(), "model.edge".as_ref(), "-p".as_ref(), "hi".as_ref(), "--board".as_ref(), path.as_os_str()])
            .one_line_error();
        assert!(e.contains(&path.display().to_string()) && e.contains(field), "{file}: {e}");
    }
}

#[test]
fn the_board_sets_the_default_thread_count() {
    if !stories_bin().is_file() && std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some() {
        eprintln!("SKIP: models not found");
        return;
    }
    let gen = |extra: &[&str]| {
        let mut args = vec!["-m", stories_bin().to_str().unwrap(), "--prompt-ids", "1", "-n", "2", "--temp", "0", "--json"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        run(args).json()
    };
    let v = gen(&["--board", "rpi5-8gb"]);
    assert_eq!(v["threads"], 4, "{v}");
    assert_eq!(v["board"]["name"], "rpi5-8gb");
    assert_eq!(v["board"]["kernel_table"], "neon+dotprod");
    assert_eq!(v["n_generated"], 2);
    // A board file of another thread count, and -t over the board.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/board-configs/jetson-orin-nano.toml")).unwrap();
    std::fs::write(&path, text.replace("default_threads = 6", "default_threads = 3")).unwrap();
    assert_eq!(gen(&["--board", path.to_str().unwrap()])["threads"], 3);
    let v = gen(&["--board", "rpi5-8gb", "-t", "2"]);
    assert_eq!(v["threads"], 2);
    assert!(gen(&[])["board"].is_null());
}
