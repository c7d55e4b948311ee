//! `fewshot compare` end to end on the CPU with a tiny budget: the table, compare.json,
//! compare.png, and that every method is scored on the very same test episodes.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fewshot::compare::{episode_fingerprint, EVAL_CONFIGS, PLOT_SIZE};
use fewshot::data::synthetic::{generate, SyntheticConfig};
use serde_json::Value;

const METHODS: [(&str, &str, &str); 3] = [
    ("protonet", "protonet", "prototypical"),
    ("contrastive", "siamese", "contrastive"),
    ("koch", "siamese", "koch"),
];
const EPISODES: u64 = 6;
const VAL_EVERY: u64 = 2;
const EVAL_EPISODES: u64 = 20;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fewshot-compare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Default synthetic set, hidden width 8, 6 steps of 5-way ProtoNet episodes (30 images) or
/// 16 pairs (32 images) per method.
fn run_compare(out: &Path, extra: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_fewshot"))
        .args(["compare", "--device", "cpu", "--hidden", "8", "--way", "5"])
        .args(["--pairs", "16", "--val-episodes", "10"])
        .args(["--episodes", &EPISODES.to_string()])
        .args(["--val-every", &VAL_EVERY.to_string()])
        .args(["--eval-episodes", &EVAL_EPISODES.to_string()])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("running fewshot compare");
    assert!(
        output.status.success(),
        "fewshot compare failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Checks compare.json's structure and values; returns the fingerprints per method.
fn check_report(report: &Value) -> Vec<Vec<String>> {
    assert_eq!(report["dataset"], "synthetic");
    assert_eq!(report["device"], "cpu");
    assert!(report["adapter"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(report["seed"], 0);
    assert_eq!(report["budget"]["episodes"], EPISODES);
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), METHODS.len());
    let mut fingerprints = Vec::new();
    for (r, (name, method, loss)) in results.iter().zip(METHODS) {
        assert_eq!(r["name"], name);
        assert_eq!(r["method"], method);
        assert_eq!(r["loss"], loss);
        assert_eq!(r["episodes"], EPISODES);
        let per_step = if method == "protonet" {
            5 * (1 + 5)
        } else {
            2 * 16
        };
        assert_eq!(r["images_seen"], EPISODES * per_step);
        assert!(r["seconds"].as_f64().is_some_and(|s| s > 0.0));
        let eval = r["eval"].as_array().expect("eval");
        assert_eq!(eval.len(), EVAL_CONFIGS.len());
        let mut fp = Vec::new();
        for (e, (way, shot)) in eval.iter().zip(EVAL_CONFIGS) {
            assert_eq!(
                (e["way"].as_u64(), e["shot"].as_u64()),
                (Some(way as u64), Some(shot as u64))
            );
            assert_eq!(e["query"], 15);
            assert_eq!(e["episodes"], EVAL_EPISODES);
            let acc = e["accuracy"].as_f64().expect("accuracy");
            assert!((0.0..=1.0).contains(&acc), "{name}: accuracy {acc}");
            assert!(e["ci95"].as_f64().is_some_and(|c| c >= 0.0));
            fp.push(e["fingerprint"].as_str().expect("fingerprint").to_string());
        }
        fingerprints.push(fp);

        let curve = report["curves"][name].as_array().expect("curve");
        assert_eq!(
            curve.len() as u64,
            EPISODES / VAL_EVERY,
            "{name}: curve points"
        );
        let mut last = 0.0;
        for p in curve {
            let (s, a) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            assert!(s >= last, "{name}: curve seconds not increasing");
            assert!((0.0..=1.0).contains(&a));
            last = s;
        }
        assert!(r["seconds"].as_f64().unwrap() >= last);
    }
    fingerprints
}

fn assert_same_episodes(fingerprints: &[Vec<String>]) {
    for (m, fp) in fingerprints.iter().enumerate().skip(1) {
        assert_eq!(
            fp, &fingerprints[0],
            "{} was scored on other episodes than {}",
            METHODS[m].0, METHODS[0].0
        );
    }
    // Each (way, shot) has its own episodes.
    for i in 0..EVAL_CONFIGS.len() {
        for j in 0..i {
            assert_ne!(fingerprints[0][i], fingerprints[0][j]);
        }
    }
}

#[test]
fn compare_prints_a_table_and_writes_json_and_png() {
    let out = out_dir("table");
    let output = run_compare(&out, &[]);
    let stdout = String::from_utf8(output.stdout).expect("utf-8 table");
    eprintln!("{stdout}");

    let header = stdout
        .lines()
        .find(|l| l.starts_with("method"))
        .expect("table header");
    for col in [
        "loss",
        "images seen",
        "train s",
        "5w1s",
        "5w5s",
        "20w1s",
        "20w5s",
    ] {
        assert!(header.contains(col), "header lacks {col}: {header}");
    }
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| METHODS.iter().any(|(_, m, _)| l.starts_with(m)))
        .collect();
    assert_eq!(rows.len(), METHODS.len(), "one row per method:\n{stdout}");
    for (row, (_, method, loss)) in rows.iter().zip(METHODS) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[..2], &[method, loss], "row {row}");
        assert_eq!(
            cells[2],
            (EPISODES * if method == "protonet" { 30 } else { 32 }).to_string()
        );
        assert_eq!(row.matches('%').count(), EVAL_CONFIGS.len(), "row {row}");
    }

    let json = std::fs::read_to_string(out.join("compare.json")).expect("compare.json");
    let report: Value = serde_json::from_str(&json).expect("compare.json parses");
    let fingerprints = check_report(&report);
    assert_same_episodes(&fingerprints);

    let png = image::open(out.join("compare.png")).expect("compare.png decodes");
    assert_eq!((png.width(), png.height()), PLOT_SIZE);
    let rgb = png.to_rgb8();
    // The curves and markers are drawn in the methods' colours (blue, red, green).
    for colour in [[31u8, 119, 180], [214, 39, 40], [44, 160, 44]] {
        let n = rgb.pixels().filter(|p| p.0 == colour).count();
        assert!(n > 50, "{n} pixels of colour {colour:?}");
    }
    // Text (black) was rendered: the axes alone are a few thousand pixels, labels add more.
    let dark = rgb.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
    assert!(dark > 3000, "{dark} dark pixels");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn compare_json_prints_one_object_with_the_same_episodes() {
    let out = out_dir("json");
    let output = run_compare(&out, &["--json", "--seed", "0"]);
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one line of JSON: {stdout}"
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("stdout parses");
    let fingerprints = check_report(&report);
    assert_same_episodes(&fingerprints);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(file, report, "stdout and compare.json differ");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn fingerprint_changes_with_the_episodes() {
    let data = generate(&SyntheticConfig {
        seed: 3,
        alphabets: 10,
        characters_per_alphabet: 5,
        drawings: 8,
        ..Default::default()
    });
    let set = &data.train;
    let fp =
        |way, shot, episodes, seed| episode_fingerprint(set, way, shot, 3, episodes, seed).unwrap();
    let base = fp(5, 1, 50, 7);
    assert_eq!(base, fp(5, 1, 50, 7), "same arguments, same episodes");
    assert_ne!(base, fp(5, 1, 50, 8), "another seed");
    assert_ne!(base, fp(5, 1, 49, 7), "fewer episodes");
    assert_ne!(base, fp(5, 2, 50, 7), "another shot");
    assert_ne!(base, fp(6, 1, 50, 7), "another way");
}

#[test]
fn compare_rejects_a_method_listed_twice() {
    let output = Command::new(env!("CARGO_BIN_EXE_fewshot"))
        .args([
            "compare",
            "--device",
            "cpu",
            "--methods",
            "koch,protonet,koch",
        ])
        .arg("--out")
        .arg(out_dir("twice"))
        .output()
        .expect("running fewshot compare");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("koch twice"), "{stderr}");
}
