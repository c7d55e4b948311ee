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
