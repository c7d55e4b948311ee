//! The `fewshot` binary end to end: train, eval and predict from a checkpoint alone, `--json`
//! output, and bad input that must give a clear error and a non-zero exit, never a panic.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fewshot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fewshot"))
        .args(args)
        .output()
        .expect("running fewshot")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fewshot-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A failed run: non-zero exit, no panic, and every `needles` in its error output.
#[track_caller]
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr:\n{err}"
    );
    assert!(
        !err.contains("panicked"),
        "panicked instead of a clean error:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "error output lacks '{n}':\n{err}");
    }
}

/// Write a PNG of `pixels` (values in [0, 1], square).
fn write_png(path: &Path, pixels: &[f32]) {
    let side = (pixels.len() as f64).sqrt() as u32;
    let img = image::GrayImage::from_fn(side, side, |x, y| {
        image::Luma([(pixels[(y * side + x) as usize] * 255.0) as u8])
    });
    img.save(path).unwrap();
}

/// A tiny training run shared by the tests below.
fn trained_run() -> PathBuf {
    static RUN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let out = temp_dir("train");
        let o = fewshot(&[
            "train",
            "--device",
            "cpu",
            "--episodes",
            "3",
            "--hidden",
            "8",
            "--way",
            "5",
            "--val-every",
            "2",
            "--val-episodes",
            "5",
            "--eval-episodes",
            "20",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "train failed:\n{}", stderr(&o));
        let report: serde_json::Value =
            serde_json::from_slice(&o.stdout).expect("train --json prints one JSON object");
        for key in ["method", "device", "adapter", "episodes", "seconds", "eval"] {
            assert!(
                report.get(key).is_some(),
                "train --json lacks '{key}': {report}"
            );
        }
        assert_eq!(report["method"], "protonet");
        assert_eq!(report["device"], "cpu");
        assert_eq!(report["episodes"], 3);
        let e = &report["eval"][0];
        assert_eq!(
            (
                e["way"].as_u64(),
                e["shot"].as_u64(),
                e["episodes"].as_u64()
            ),
            (Some(5), Some(1), Some(20))
        );
        let acc = e["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "accuracy is a fraction: {acc}");
        assert!(e["ci95"].as_f64().unwrap() >= 0.0);
        for f in ["best.safetensors", "last.safetensors", "metrics.jsonl"] {
            assert!(out.join(f).exists(), "{f} missing");
        }
        out
    })
    .clone()
}

#[test]
fn train_json_then_eval_from_the_checkpoint_alone() {
    let run = trained_run();
    let ck = run.join("best.safetensors");
    let o = fewshot(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--device",
        "cpu",
        "--way",
        "5,20",
        "--shot",
        "1,5",
        "--episodes",
        "10",
        "--json",
    ]);
    assert!(o.status.success(), "eval failed:\n{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("eval --json prints one JSON object");
    let eval = report["eval"].as_array().unwrap();
    let combos: Vec<(u64, u64)> = eval
        .iter()
        .map(|e| (e["way"].as_u64().unwrap(), e["shot"].as_u64().unwrap()))
        .collect();
    assert_eq!(combos, vec![(5, 1), (5, 5), (20, 1), (20, 5)]);
    assert_eq!(
        report["dataset"], "synthetic",
        "the dataset comes from the checkpoint"
    );
    // The same seed gives the same episodes, hence the same numbers.
    let again = fewshot(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--device",
        "cpu",
        "--way",
        "5,20",
        "--shot",
        "1,5",
        "--episodes",
        "10",
        "--json",
    ]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["eval"], report["eval"]);
    // Human output: a table.
    let o = fewshot(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--device",
        "cpu",
        "--way",
        "5",
        "--shot",
        "1",
        "--episodes",
        "5",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("accuracy (95% CI)"));
}

#[test]
fn predict_classifies_images_given_a_support_folder() {
    let run = trained_run();
    let dir = temp_dir("predict");
    // Support: two classes of synthetic characters; queries: further drawings of each.
    let data = fewshot::data::synthetic::generate(&fewshot::data::synthetic::SyntheticConfig {
        seed: 9,
        alphabets: 5,
        characters_per_alphabet: 2,
        ..Default::default()
    });
    let classes = &data.test.classes[..2];
    let mut queries = Vec::new();
    for (ci, c) in classes.iter().enumerate() {
        let class_dir = dir.join("support").join(format!("class{ci}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        for k in 0..3 {
            write_png(
                &class_dir.join(format!("{k}.png")),
                data.test.image(c.start + k),
            );
        }
        let q = dir.join(format!("query{ci}.png"));
        write_png(&q, data.test.image(c.start + 5));
        queries.push(q);
    }
    let ck = run.join("best.safetensors");
    let support = dir.join("support");
    let mut args = vec![
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--support",
        support.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ];
    args.extend(queries.iter().map(|q| q.to_str().unwrap()));
    let o = fewshot(&args);
    assert!(o.status.success(), "predict failed:\n{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["classes"], serde_json::json!(["class0", "class1"]));
    let preds = report["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    for p in preds {
        let d = p["distances"].as_array().unwrap();
        assert_eq!(d.len(), 2, "one distance per class");
        let best = if d[0].as_f64() <= d[1].as_f64() {
            "class0"
        } else {
            "class1"
        };
        assert_eq!(p["class"], best, "the predicted class is the nearest");
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = temp_dir("bad");
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    // Missing dataset path.
    let o = fewshot(&[
        "train",
        "--device",
        "cpu",
        "--dataset",
        "folder:/nonexistent/fewshot-data",
        "--out",
        out,
    ]);
    assert_clean_error(&o, &["/nonexistent/fewshot-data"]);
    // An empty dataset folder, in both layouts.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for kind in ["folder", "omniglot"] {
        let ds = format!("{kind}:{}", empty.display());
        let o = fewshot(&["train", "--device", "cpu", "--dataset", &ds, "--out", out]);
        assert_clean_error(&o, &[empty.to_str().unwrap(), "found"]);
    }
    // Unknown dataset kind.
    let o = fewshot(&[
        "train",
        "--device",
        "cpu",
        "--dataset",
        "imagenet",
        "--out",
        out,
    ]);
    assert_clean_error(&o, &["imagenet"]);
    // A corrupt image names the file.
    let folder = dir.join("folder");
    for c in 0..6 {
        let cd = folder.join(format!("c{c}"));
        std::fs::create_dir_all(&cd).unwrap();
        for k in 0..4 {
            write_png(&cd.join(format!("{k}.png")), &vec![0.5; 28 * 28]);
        }
    }
    std::fs::write(
        folder.join("c3").join("broken.png"),
        b"\x89PNG\r\n\x1a\nthis is not really a png",
    )
    .unwrap();
    let ds = format!("folder:{}", folder.display());
    let o = fewshot(&["train", "--device", "cpu", "--dataset", &ds, "--out", out]);
    assert_clean_error(&o, &["broken.png"]);
    // Too few classes for the way. Files that are not images in class folders (and at the
    // top) are ignored, counted in one warning.
    std::fs::remove_file(folder.join("c3").join("broken.png")).unwrap();
    std::fs::write(folder.join("c1").join("notes.txt"), "not an image").unwrap();
    std::fs::write(folder.join("README"), "not a class").unwrap();
    let o = fewshot(&[
        "train",
        "--device",
        "cpu",
        "--dataset",
        &ds,
        "--way",
        "20",
        "--out",
        out,
    ]);
    assert_clean_error(&o, &["20-way episodes need 20 classes", "of the 4 classes"]);
    let err = stderr(&o);
    assert_eq!(
        err.matches("ignored 2 entries").count(),
        1,
        "one warning counting the two non-image files:\n{err}"
    );
    // Shot + query above the images per class (4 here): every class is left out, and the
    // error says how many have enough.
    let o = fewshot(&[
        "train",
        "--device",
        "cpu",
        "--dataset",
        &ds,
        "--way",
        "3",
        "--shot",
        "3",
        "--query",
        "2",
        "--out",
        out,
    ]);
    assert_clean_error(&o, &["shot + query = 5 images", "only 0 of the 4 classes"]);
    // Invalid flag combinations.
    let o = fewshot(&["train", "--device", "cpu", "--loss", "koch", "--out", out]);
    assert_clean_error(&o, &["--loss"]);
    let o = fewshot(&["train", "--device", "cpu", "--shot", "0", "--out", out]);
    assert_clean_error(&o, &["--shot"]);
    // A checkpoint that is not one.
    let fake = dir.join("fake.safetensors");
    std::fs::write(&fake, b"hello").unwrap();
    let o = fewshot(&[
        "eval",
        "--checkpoint",
        fake.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_clean_error(&o, &["fake.safetensors"]);
    let o = fewshot(&[
        "eval",
        "--checkpoint",
        "/nonexistent/model.safetensors",
        "--device",
        "cpu",
    ]);
    assert_clean_error(&o, &["/nonexistent/model.safetensors"]);
    // An adapter name that matches nothing.
    let o = fewshot(&[
        "train",
        "--device",
        "gpu",
        "--adapter",
        "no-such-adapter-xyz",
        "--episodes",
        "1",
        "--out",
        out,
    ]);
    assert_clean_error(&o, &["no-such-adapter-xyz"]);
}

#[test]
fn eval_lake_runs_reports_accuracy_trials_and_per_run_for_dir_and_zip() {
    let run = trained_run();
    let ck = run.join("best.safetensors");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lake");
    let mut reports = Vec::new();
    for form in [fixtures.join("dir"), fixtures.join("all_runs.zip")] {
        let o = fewshot(&[
            "eval",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--lake-runs",
            form.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ]);
        assert!(
            o.status.success(),
            "eval --lake-runs {} failed:\n{}",
            form.display(),
            stderr(&o)
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
        assert_eq!(r["trials"], 8, "the fixture has 2 runs of 4 trials");
        let per_run = r["per_run"].as_array().unwrap();
        assert_eq!(per_run.len(), 2);
        let correct: u64 = per_run.iter().map(|p| p["correct"].as_u64().unwrap()).sum();
        let acc = r["accuracy"].as_f64().unwrap();
        assert!(
            (acc - correct as f64 / 8.0).abs() < 1e-12,
            "accuracy is the fraction over all trials"
        );
        reports.push(r);
    }
    assert_eq!(
        reports[0]["per_run"], reports[1]["per_run"],
        "zip and folder forms score the same"
    );
    // A malformed class_labels.txt: the error names the file and the line.
    let bad = temp_dir("lake-bad");
    let run01 = bad.join("run01");
    std::fs::create_dir_all(run01.join("training")).unwrap();
    std::fs::write(run01.join("class_labels.txt"), "run01/test/item01.png\n").unwrap();
    let o = fewshot(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--lake-runs",
        bad.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_clean_error(&o, &["class_labels.txt:1"]);
}

#[test]
fn no_adapter_auto_falls_back_to_the_cpu_and_gpu_says_how_to_get_one() {
    // On Linux no adapter exists for the Metal backend: this is "a machine without any adapter".
    if !cfg!(target_os = "linux") {
        return;
    }
    let out = temp_dir("noadapter");
    let run = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_fewshot"))
            .args([
                "train",
                "--device",
                device,
                "--episodes",
                "1",
                "--hidden",
                "4",
                "--way",
                "5",
                "--val-every",
                "0",
                "--eval-episodes",
                "2",
            ])
            .args(["--out", out.to_str().unwrap()])
            .env("WGPU_BACKEND", "metal")
            .output()
            .unwrap()
    };
    let auto = run("auto");
    assert!(
        auto.status.success(),
        "auto without adapter failed:\n{}",
        stderr(&auto)
    );
    let err = stderr(&auto);
    assert!(
        err.contains("training on the CPU") && err.contains("device: cpu"),
        "no fallback notice:\n{err}"
    );
    let gpu = run("gpu");
    assert_clean_error(&gpu, &["mesa-vulkan-drivers", "--device cpu"]);
}

#[test]
fn checkpoints_for_another_architecture_or_input_are_refused_naming_both() {
    let run = trained_run();
    // Resuming with another width: both architectures are named.
    let copy = temp_dir("arch");
    std::fs::copy(run.join("last.safetensors"), copy.join("last.safetensors")).unwrap();
    let o = fewshot(&[
        "train",
        "--device",
        "cpu",
        "--hidden",
        "16",
        "--way",
        "5",
        "--episodes",
        "5",
        "--resume",
        copy.to_str().unwrap(),
        "--out",
        copy.to_str().unwrap(),
    ]);
    assert_clean_error(&o, &["hidden: 8", "hidden: 16"]);
    // Evaluating a 1-channel model on RGB images: both channel counts are named.
    let folder = copy.join("rgb");
    for c in 0..6 {
        let cd = folder.join(format!("c{c}"));
        std::fs::create_dir_all(&cd).unwrap();
        for k in 0..4 {
            let img = image::RgbImage::from_fn(28, 28, |x, y| {
                image::Rgb([(x * 9) as u8, (y * 9) as u8, (c * 40 + k) as u8])
            });
            img.save(cd.join(format!("{k}.png"))).unwrap();
        }
    }
    let ck = run.join("best.safetensors");
    let ds = format!("folder:{}", folder.display());
    let o = fewshot(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--dataset",
        &ds,
        "--device",
        "cpu",
        "--way",
        "2",
        "--shot",
        "1",
        "--episodes",
        "2",
    ]);
    assert_clean_error(&o, &["1-channel", "3 channels"]);
}

/// `last.safetensors` is refreshed at least once a minute unless the user asks otherwise: the
/// default of `--checkpoint-every` (the SIGKILL test in tests/kill.rs checks that the refresh
/// happens, with a short interval).
#[test]
fn last_checkpoint_is_refreshed_every_minute_by_default() {
    use clap::Parser;
    #[derive(Parser)]
    struct Train {
        #[command(flatten)]
        args: fewshot::cli::TrainArgs,
    }
    let t = Train::try_parse_from(["train"]).expect("parse");
    assert_eq!(t.args.checkpoint_every, 60.0);
}
