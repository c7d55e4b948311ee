//! `fewshot bench --device cpu --quick --json` runs end to end and reports every section.

use std::process::Command;

#[test]
fn bench_quick_cpu_reports_every_step_config() {
    let start = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_fewshot"))
        .args([
            "bench", "--device", "cpu", "--quick", "--json", "--steps", "1",
        ])
        .output()
        .expect("run fewshot bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fewshot bench failed:\n{stderr}");
    eprintln!("{stderr}");
    eprintln!("bench --quick took {:.1} s", start.elapsed().as_secs_f64());
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("stdout is one JSON object");

    assert!(report["machine"]["cpu_threads"].as_u64().unwrap_or(0) >= 1);
    assert!(
        report["machine"]["adapter"].is_null(),
        "--device cpu measured a GPU"
    );

    let steps = report["steps"].as_array().expect("steps array");
    for config in [
        "protonet-60w5s5q",
        "protonet-60w1s5q",
        "protonet-20w1s15q",
        "protonet-5w1s15q",
        "siamese-128",
    ] {
        let row = steps
            .iter()
            .find(|s| s["config"] == config)
            .unwrap_or_else(|| panic!("no step row for {config}: {steps:?}"));
        assert_eq!(row["device"], "cpu");
        let ms = row["median_ms"].as_f64().expect("median_ms");
        assert!(ms > 0.0 && ms.is_finite(), "{config}: median_ms {ms}");
        assert!(row["images_per_step"].as_u64().unwrap_or(0) > 0);
        assert!(
            row["last_loss"].as_f64().is_some_and(f64::is_finite),
            "{config}: loss {}",
            row["last_loss"]
        );
    }
    assert_eq!(steps.len(), 5);

    // Both ceilings, and every kernel row with a positive time and a throughput.
    let ceilings = report["ceilings"].as_array().expect("ceilings");
    for kind in ["copy", "matmul"] {
        let c = ceilings
            .iter()
            .find(|c| c["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} ceiling"));
        let rate = c["gflops"].as_f64().or(c["gbps"].as_f64()).unwrap_or(0.0);
        assert!(rate > 0.0, "{kind} ceiling {rate}");
    }
    let kernels = report["kernels"].as_array().expect("kernels");
    for k in [
        "conv2d_forward",
        "conv2d_backward_input",
        "conv2d_backward_weight",
        "batch_norm_train",
        "batch_norm_backward",
        "max_pool_forward",
        "max_pool_backward",
    ] {
        let layers = kernels.iter().filter(|r| r["kernel"] == k).count();
        assert_eq!(layers, 4, "{k}: one row per Conv-4 block");
    }
    for k in [
        "pairwise_sq_dist",
        "prototypes",
        "softmax_xent",
        "adam",
        "gather",
    ] {
        assert!(kernels.iter().any(|r| r["kernel"] == k), "no {k} row");
    }
    for r in kernels {
        assert!(r["median_ms"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert!(
            r["fraction_of_ceiling"].as_f64().unwrap_or(0.0) > 0.0,
            "{r}"
        );
    }
    let inference = report["inference"].as_array().expect("inference");
    assert_eq!(inference.len(), 1);
    assert!(inference[0]["images_per_s"].as_f64().unwrap_or(0.0) > 0.0);
}

/// `--config` picks step configurations and `--reference` adds the PyTorch peer's figures and
/// the ratios; an unknown config or an unusable reference file is a clear error.
#[test]
fn bench_reference_adds_ratios_and_config_selects_steps() {
    let dir = std::env::temp_dir().join(format!("fewshot-bench-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The peer's suite format: a koch record and an 84x84 record have no counterpart.
    let suite = serde_json::json!({"results": [
        {"kind": "train_step", "device": "cpu", "method": "protonet", "channels": 1, "size": 28,
         "way": 5, "shot": 1, "query": 15, "median_s": 0.25},
        {"kind": "train_step", "device": "cpu", "method": "siamese", "loss": "koch",
         "channels": 1, "size": 28, "pairs": 128, "median_s": 9.0},
        {"kind": "train_step", "device": "cpu", "method": "protonet", "channels": 3, "size": 84,
         "way": 5, "shot": 1, "query": 15, "median_s": 9.0},
        {"kind": "inference", "device": "cpu", "images": 1000, "channels": 1, "size": 28,
         "images_per_s": 1000.0},
    ]});
    let file = dir.join("torch.json");
    std::fs::write(&file, suite.to_string()).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["bench", "--device", "cpu", "--quick", "--steps", "1"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_fewshot"))
            .args(&args)
            .output()
            .expect("run fewshot bench")
    };
    let out = run(&[
        "--only",
        "steps,inference",
        "--config",
        "protonet-5w1s15q",
        "--reference",
        file.to_str().unwrap(),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fewshot bench failed:\n{stderr}");
    assert!(stderr.contains("reference 250.00 ms, ratio"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    let s = &steps[0];
    assert_eq!(s["config"], "protonet-5w1s15q");
    assert_eq!(s["reference_ms"], 250.0);
    let ratio = s["ratio_to_reference"].as_f64().unwrap();
    let want = s["median_ms"].as_f64().unwrap() / 250.0;
    assert!((ratio - want).abs() < 1e-12, "{ratio} vs {want}");
    let inf = &report["inference"][0];
    assert_eq!(inf["reference_images_per_s"], 1000.0);
    let want = 1000.0 / inf["images_per_s"].as_f64().unwrap();
    assert!((inf["ratio_to_reference"].as_f64().unwrap() - want).abs() < 1e-12);

    let out = run(&["--only", "steps", "--config", "protonet-7w1s1q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("protonet-7w1s1q"),
        "{stderr}"
    );
    assert!(stderr.contains("protonet-5w1s15q") && !stderr.contains("panicked"));
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"hello\": 1}").unwrap();
    let out = run(&["--only", "steps", "--reference", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("bad.json"),
        "{stderr}"
    );
    assert!(stderr.contains("no training-step"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The peer's CUDA records are matched to fewshot's GPU rows, its CPU records to the CPU rows.
#[test]
fn reference_records_are_keyed_by_device_kind() {
    use fewshot::bench::Reference;
    let records: Vec<serde_json::Value> = serde_json::from_str(
        r#"[
        {"kind": "train_step", "device": "cuda", "method": "protonet", "channels": 1, "size": 28,
         "way": 60, "shot": 5, "query": 5, "median_s": 0.004},
        {"kind": "train_step", "device": "cpu", "method": "siamese", "loss": "contrastive",
         "channels": 1, "size": 28, "pairs": 128, "median_s": 0.25},
        {"kind": "inference", "device": "cuda", "images": 1000, "channels": 1, "size": 28,
         "images_per_s": 50000.0},
        {"kind": "micro", "device": "cpu"}
    ]"#,
    )
    .unwrap();
    let r = Reference::from_records("test", &records);
    assert_eq!(
        r.steps,
        vec![
            (("gpu".to_string(), "protonet-60w5s5q".to_string()), 4.0),
            (("cpu".to_string(), "siamese-128".to_string()), 250.0),
        ]
    );
    assert_eq!(r.inference, vec![("gpu".to_string(), 50000.0)]);
}
