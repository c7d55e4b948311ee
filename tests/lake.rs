//! Lake et al.'s one-shot benchmark: the run loader (directory and zip forms, errors) and the
//! scorer. Pure CPU. The fixture in tests/fixtures/lake holds 2 runs of 4 trials made of real
//! Omniglot drawings (see its README); the error tests edit copies of it in temp folders.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use fewshot::data::lake::{load_lake_runs, LakeRun, LakeTrial};
use fewshot::data::{load, DataError, DatasetSource, LoadOptions};
use fewshot::train::eval::{Metric, Rule};
use fewshot::train::lake::{evaluate_lake, LakeReport};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lake");
const OMNIGLOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/omniglot/dir");

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURE).join(rel)
}

fn euclidean() -> Rule {
    Rule {
        metric: Metric::Euclidean,
        prototypes: true,
    }
}

/// A fresh, empty temporary directory unique to this test and process.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fewshot-lake-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the fixture's runs in a temp folder, to be edited.
fn fixture_copy(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    copy_dir(&fixture("dir"), &dir);
    dir
}

/// The files under `dir` as (`/`-separated relative path, bytes), sorted.
fn files_under(dir: &Path, rel: &str, out: &mut Vec<(String, Vec<u8>)>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if entry.path().is_dir() {
            files_under(&entry.path(), &rel, out);
        } else {
            out.push((rel, fs::read(entry.path()).unwrap()));
        }
    }
}

/// Zips the files under `dir` to `zip_path`, each entry named `prefix` + its relative path.
fn write_zip(dir: &Path, prefix: &str, zip_path: &Path) {
    let mut files = Vec::new();
    files_under(dir, "", &mut files);
    let mut w = zip::ZipWriter::new(fs::File::create(zip_path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        w.start_file(format!("{prefix}{name}"), options).unwrap();
        w.write_all(&bytes).unwrap();
    }
    w.finish().unwrap();
}

fn load_err(path: &Path) -> String {
    match load_lake_runs(path, 28) {
        Ok(runs) => panic!(
            "expected an error loading {}, got {} runs",
            path.display(),
            runs.len()
        ),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "error {msg:?} should mention {part:?}");
    }
}

// ---------------------------------------------------------------- loader

#[test]
fn directory_form_parses_runs_training_images_and_answers() {
    let runs = load_lake_runs(&fixture("dir"), 28).unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["run01", "run02"]);
    // Answers from the class_labels.txt files (see the fixture's README).
    let expected_answers = [[2, 0, 3, 1], [1, 3, 0, 2]];
    for (run, answers) in runs.iter().zip(expected_answers) {
        let n = &run.name;
        let training: Vec<String> = (1..=4)
            .map(|k| format!("{n}/training/class{k:02}.png"))
            .collect();
        assert_eq!(run.training_paths, training);
        let tests: Vec<String> = (1..=4)
            .map(|k| format!("{n}/test/item{k:02}.png"))
            .collect();
        let got: Vec<&str> = run.trials.iter().map(|t| t.test_path.as_str()).collect();
        assert_eq!(got, tests);
        let got: Vec<usize> = run.trials.iter().map(|t| t.answer).collect();
        assert_eq!(got, answers, "answers of {n}");
        assert_eq!(run.training.len(), 4);
        let images = run
            .training
            .iter()
            .chain(run.trials.iter().map(|t| &t.test_image));
        for image in images {
            assert_eq!(image.len(), 28 * 28);
            assert!(image.iter().all(|v| (0.0..=1.0).contains(v)));
            // Inverted: strokes are 1 on a 0 background, so the mean is small but not zero.
            let mean = image.iter().sum::<f32>() / image.len() as f32;
            assert!(mean > 0.01 && mean < 0.4, "mean {mean} of an image of {n}");
        }
    }
    // Every image of the fixture is a different drawing.
    let all: Vec<&Vec<f32>> = runs
        .iter()
        .flat_map(|r| {
            r.training
                .iter()
                .chain(r.trials.iter().map(|t| &t.test_image))
        })
        .collect();
    for i in 0..all.len() {
        for j in 0..i {
            assert_ne!(all[i], all[j], "images {i} and {j} are equal");
        }
    }
}

/// The class `name`'s drawing `index` (in file-name order) from the Omniglot loader.
fn omniglot_image(d: &fewshot::data::Dataset, name: &str, index: usize) -> Vec<f32> {
    for set in [&d.train, &d.val, &d.test] {
        if let Some(c) = set.classes.iter().find(|c| c.name == name) {
            return set.image(c.start + index).to_vec();
        }
    }
    panic!("class {name} not in the Omniglot fixture");
}

#[test]
fn images_are_preprocessed_exactly_like_omniglot() {
    for size in [28, 105] {
        let runs = load_lake_runs(&fixture("dir"), size).unwrap();
        let opts = LoadOptions {
            image_size: size,
            rotations: false,
            ..Default::default()
        };
        let omniglot = load(&DatasetSource::Omniglot(OMNIGLOT.into()), &opts).unwrap();
        // run01/training/class01.png is Greek/character01/0394_01.png; run02/test/item02.png
        // is Korean/character03/0645_03.png (the third drawing).
        let pairs = [
            (&runs[0].training[0], "Greek/character01", 0),
            (&runs[0].training[3], "Latin/character01", 0),
            (&runs[0].trials[2].test_image, "Latin/character01", 1),
            (&runs[1].trials[1].test_image, "Korean/character03", 2),
        ];
        for (lake, class, index) in pairs {
            let expected = omniglot_image(&omniglot, class, index);
            let same_bits = lake
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                lake.len() == expected.len() && same_bits,
                "size {size}: {class} drawing {index} differs from the Omniglot loader's"
            );
        }
    }
}

#[test]
fn zip_forms_load_the_same_runs_as_the_directory() {
    let dir = load_lake_runs(&fixture("dir"), 28).unwrap();
    // The committed zip: entries under one top folder `all_runs/`, with folder entries.
    let committed = load_lake_runs(&fixture("all_runs.zip"), 28).unwrap();
    assert_eq!(committed, dir, "all_runs.zip (top folder all_runs/)");

    // Built now: entries `runNN/...` at the top, no folder entries.
    let tmp = temp_dir("zip-forms");
    let flat = tmp.join("flat.zip");
    write_zip(&fixture("dir"), "", &flat);
    assert_eq!(
        load_lake_runs(&flat, 28).unwrap(),
        dir,
        "zip without a top folder"
    );

    // A folder holding all_runs.zip, and a folder holding the extracted all_runs/.
    let holder = tmp.join("holder");
    fs::create_dir_all(&holder).unwrap();
    fs::copy(fixture("all_runs.zip"), holder.join("all_runs.zip")).unwrap();
    assert_eq!(
        load_lake_runs(&holder, 28).unwrap(),
        dir,
        "folder with all_runs.zip"
    );
    let extracted = tmp.join("extracted");
    copy_dir(&fixture("dir"), &extracted.join("all_runs"));
    assert_eq!(
        load_lake_runs(&extracted, 28).unwrap(),
        dir,
        "folder with all_runs/"
    );
    let _ = fs::remove_dir_all(&tmp);
}

// ---------------------------------------------------------------- scoring

/// A run whose "images" are 2-D points, so an identity `embed` puts them where we say.
fn point_run(name: &str, training: &[[f32; 2]], trials: &[([f32; 2], usize)]) -> LakeRun {
    LakeRun {
        name: name.to_string(),
        training_paths: (0..training.len())
            .map(|k| format!("{name}/training/class{:02}.png", k + 1))
            .collect(),
        training: training.iter().map(|p| p.to_vec()).collect(),
        trials: trials
            .iter()
            .enumerate()
            .map(|(t, (p, answer))| LakeTrial {
                test_path: format!("{name}/test/item{:02}.png", t + 1),
                test_image: p.to_vec(),
                answer: *answer,
            })
            .collect(),
    }
}

#[test]
fn scoring_matches_hand_checked_accuracy() {
    let runs = [
        // Corners of a square; the nearest corner is the prediction.
        point_run(
            "run01",
            &[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]],
            &[
                ([1.0, 0.0], 0), // nearest 0: right
                ([9.0, 1.0], 1), // nearest 1: right
                ([1.0, 9.0], 2), // nearest 2: right
                ([1.0, 1.0], 3), // nearest 0: wrong
            ],
        ),
        // Three points on a line.
        point_run(
            "run02",
            &[[0.0, 0.0], [5.0, 0.0], [10.0, 0.0]],
            &[
                ([4.0, 0.0], 1), // nearest 1: right
                ([9.0, 0.0], 0), // nearest 2: wrong
                ([0.5, 0.0], 0), // nearest 0: right
                ([6.0, 0.0], 2), // nearest 1: wrong
            ],
        ),
    ];
    let mut calls = Vec::new();
    let report = evaluate_lake(&runs, &euclidean(), &mut |images, count| {
        calls.push((images.to_vec(), count));
        Ok(images.to_vec())
    })
    .unwrap();
    // One embed call per run: the training images, then the test images.
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1, 8);
    assert_eq!(calls[1].1, 7);
    assert_eq!(&calls[1].0[..6], &[0.0, 0.0, 5.0, 0.0, 10.0, 0.0]);
    assert_eq!(&calls[1].0[6..], &[4.0, 0.0, 9.0, 0.0, 0.5, 0.0, 6.0, 0.0]);

    println!("{report}");
    assert_eq!((report.correct, report.trials), (5, 8));
    assert_eq!(report.accuracy, 0.625);
    let per_run: Vec<(&str, usize, usize, f64)> = report
        .per_run
        .iter()
        .map(|r| (r.run.as_str(), r.correct, r.trials, r.accuracy))
        .collect();
    assert_eq!(per_run, [("run01", 3, 4, 0.75), ("run02", 2, 4, 0.5)]);
    assert!(report
        .to_string()
        .contains("62.50% (5/8 trials, error 37.50%) over 2 runs"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["accuracy"], 0.625);
    assert_eq!(json["per_run"][1]["run"], "run02");
    assert_eq!(json["per_run"][1]["accuracy"], 0.5);

    // Embeddings of another dimension than the images: only the embeddings count. Mapping
    // (x, y) to (x, 0, 0) moves run01's trial 3 to the nearest of 0 and 2 (tie, the first
    // wins: 0) and trial 2 to 1 (right) -> run01 gets trials 1 and 2 only.
    let report = evaluate_lake(&runs, &euclidean(), &mut |images, _| {
        Ok(images.chunks(2).flat_map(|p| [p[0], 0.0, 0.0]).collect())
    })
    .unwrap();
    assert_eq!(report.per_run[0].correct, 2);
    assert_eq!(report.per_run[1].correct, 2);
    assert_eq!(report.accuracy, 0.5);
}

#[test]
fn scoring_loaded_runs_uses_the_answers() {
    let runs = load_lake_runs(&fixture("dir"), 28).unwrap();
    let find = |image: &[f32]| -> [f32; 4] {
        // One-hot of the answer: a training image's own index, a test image's answer.
        for run in &runs {
            if let Some(k) = run.training.iter().position(|t| t == image) {
                let mut v = [0.0; 4];
                v[k] = 1.0;
                return v;
            }
            if let Some(t) = run.trials.iter().find(|t| t.test_image == image) {
                let mut v = [0.0; 4];
                v[t.answer] = 1.0;
                return v;
            }
        }
        panic!("embed got an image that is not in the runs");
    };
    let image_len = 28 * 28;
    let oracle = evaluate_lake(&runs, &euclidean(), &mut |images, count| {
        assert_eq!(images.len(), count * image_len);
        Ok(images.chunks(image_len).flat_map(find).collect())
    })
    .unwrap();
    assert_eq!(
        (oracle.correct, oracle.trials, oracle.accuracy),
        (8, 8, 1.0)
    );
    // Shift every test embedding to the next class: nothing is right.
    let wrong = evaluate_lake(&runs, &euclidean(), &mut |images, _| {
        Ok(images
            .chunks(image_len)
            .enumerate()
            .flat_map(|(i, im)| {
                let mut v = find(im);
                if i >= 4 {
                    v.rotate_right(1);
                }
                v
            })
            .collect())
    })
    .unwrap();
    assert_eq!((wrong.correct, wrong.trials, wrong.accuracy), (0, 8, 0.0));
    // Raw pixels as embeddings (nearest neighbour in pixel space): just a well-formed report.
    let pixels = evaluate_lake(&runs, &euclidean(), &mut |images, _| Ok(images.to_vec())).unwrap();
    // An embedding failure (a lost device) is the report's error.
    let err = evaluate_lake(&runs, &euclidean(), &mut |_, _| {
        anyhow::bail!("device lost")
    })
    .expect_err("embedding failure");
    assert!(err.to_string().contains("device lost"), "{err}");
    println!("pixel nearest neighbour on the fixture: {pixels}");
    assert_eq!(pixels.trials, 8);
    assert_eq!(pixels.per_run.len(), 2);
    assert!(pixels
        .per_run
        .iter()
        .all(|r| r.trials == 4 && r.correct <= 4));
}

// ---------------------------------------------------------------- errors

/// Replaces line `line` (1-based) of `run`'s class_labels.txt under `dir`.
fn set_label_line(dir: &Path, run: &str, line: usize, text: &str) {
    let path = dir.join(run).join("class_labels.txt");
    let old = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = old.lines().map(str::to_string).collect();
    lines[line - 1] = text.to_string();
    fs::write(&path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn malformed_label_lines_are_errors_naming_file_and_line() {
    let cases: [(&str, usize, &str, &[&str]); 8] = [
        (
            "run01",
            2,
            "run01/test/item02.png",
            &["expected 2 fields", "found 1"],
        ),
        (
            "run01",
            3,
            "run01/test/item03.png run01/training/class04.png extra",
            &["expected 2 fields", "found 3"],
        ),
        (
            "run02",
            3,
            "run01/test/item03.png run02/training/class01.png",
            &["\"run01/test/item03.png\"", "not inside this run"],
        ),
        (
            "run01",
            4,
            "run01/test/../../run02/test/item04.png run01/training/class02.png",
            &["not inside this run"],
        ),
        (
            "run01",
            1,
            "/etc/item01.png run01/training/class03.png",
            &["\"/etc/item01.png\"", "not inside this run"],
        ),
        (
            "run01",
            2,
            "run01/test/item02.png run01/training/class09.png",
            &[
                "\"run01/training/class09.png\"",
                "not one of the run's training images",
                "class04.png",
            ],
        ),
        (
            "run01",
            4,
            "run01/test/item01.png run01/training/class02.png",
            &[
                "duplicate test image \"run01/test/item01.png\"",
                "first on line 1",
            ],
        ),
        (
            "run02",
            2,
            "run02/test/item09.png run02/training/class04.png",
            &[
                "test image \"run02/test/item09.png\" not found",
                "item09.png does not exist",
            ],
        ),
    ];
    for (i, (run, line, text, parts)) in cases.into_iter().enumerate() {
        let dir = fixture_copy(&format!("bad-line-{i}"));
        set_label_line(&dir, run, line, text);
        let msg = load_err(&dir);
        let file = dir.join(run).join("class_labels.txt");
        let at = format!("{}:{line}: ", file.display());
        assert!(
            msg.starts_with(&at),
            "case {i}: error {msg:?} should start with {at:?}"
        );
        assert_mentions(&msg, parts);
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn missing_and_corrupt_files_are_errors_naming_them() {
    // A training image that is gone is no longer a training image: the line naming it fails.
    let dir = fixture_copy("missing-training");
    fs::remove_file(dir.join("run01/training/class04.png")).unwrap();
    let msg = load_err(&dir);
    assert_mentions(
        &msg,
        &[
            &format!("{}:3: ", dir.join("run01/class_labels.txt").display()),
            "\"run01/training/class04.png\" is not one of the run's training images",
        ],
    );

    let dir = fixture_copy("missing-test");
    fs::remove_file(dir.join("run02/test/item03.png")).unwrap();
    let msg = load_err(&dir);
    assert_mentions(
        &msg,
        &[
            &format!("{}:3: ", dir.join("run02/class_labels.txt").display()),
            &dir.join("run02/test/item03.png").display().to_string(),
        ],
    );

    let dir = fixture_copy("missing-labels");
    fs::remove_file(dir.join("run02/class_labels.txt")).unwrap();
    let msg = load_err(&dir);
    assert_mentions(
        &msg,
        &[
            &dir.join("run02/class_labels.txt").display().to_string(),
            "missing",
        ],
    );

    let dir = fixture_copy("empty-labels");
    fs::write(dir.join("run01/class_labels.txt"), "\n  \n").unwrap();
    let msg = load_err(&dir);
    assert_mentions(
        &msg,
        &[
            &dir.join("run01/class_labels.txt").display().to_string(),
            "no trials",
        ],
    );

    let dir = fixture_copy("corrupt-image");
    fs::write(dir.join("run02/test/item04.png"), b"not a png at all").unwrap();
    let msg = load_err(&dir);
    assert_mentions(
        &msg,
        &[
            &dir.join("run02/test/item04.png").display().to_string(),
            "cannot decode",
        ],
    );

    let dir = temp_dir("no-runs");
    fs::create_dir_all(dir.join("training")).unwrap();
    fs::create_dir_all(dir.join("runs")).unwrap();
    let msg = load_err(&dir);
    assert_mentions(&msg, &[&dir.display().to_string(), "no runNN folders"]);

    let gone = dir.join("does-not-exist");
    let msg = load_err(&gone);
    assert_mentions(&msg, &[&gone.display().to_string()]);

    let err = load_lake_runs(&fixture("dir"), 0).unwrap_err();
    assert!(matches!(err, DataError::Options(_)), "{err}");

    for name in [
        "missing-training",
        "missing-test",
        "missing-labels",
        "empty-labels",
        "corrupt-image",
        "no-runs",
    ] {
        let _ = fs::remove_dir_all(temp_dir(name));
    }
}

#[test]
fn zip_errors_name_the_archive_and_entry() {
    let tmp = temp_dir("zip-errors");
    // A bad line inside the zip: the error names zip:entry and the line.
    let runs = tmp.join("runs");
    copy_dir(&fixture("dir"), &runs);
    set_label_line(&runs, "run02", 2, "run02/test/item02.png");
    let zip = tmp.join("all_runs.zip");
    write_zip(&runs, "all_runs/", &zip);
    let msg = match load_lake_runs(&zip, 28) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let at = format!("{}:all_runs/run02/class_labels.txt:2: ", zip.display());
    assert!(
        msg.starts_with(&at),
        "error {msg:?} should start with {at:?}"
    );

    // A zip without runs.
    let empty = tmp.join("empty.zip");
    let mut w = zip::ZipWriter::new(fs::File::create(&empty).unwrap());
    w.start_file("readme.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"hello").unwrap();
    w.finish().unwrap();
    let msg = load_err(&empty);
    assert_mentions(&msg, &[&empty.display().to_string(), "no runNN folders"]);

    // An entry escaping the archive is refused.
    let evil = tmp.join("evil.zip");
    let mut w = zip::ZipWriter::new(fs::File::create(&evil).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("run01/class_labels.txt", options).unwrap();
    w.write_all(b"run01/test/item01.png run01/training/class01.png\n")
        .unwrap();
    w.start_file("../run01/test/item01.png", options).unwrap();
    w.write_all(b"x").unwrap();
    w.finish().unwrap();
    let err = load_lake_runs(&evil, 28).unwrap_err();
    assert!(matches!(err, DataError::UnsafeZipEntry { .. }), "{err}");
    assert_mentions(
        &err.to_string(),
        &[&evil.display().to_string(), "../run01/test/item01.png"],
    );

    // Not a zip at all.
    let junk = tmp.join("junk.zip");
    fs::write(&junk, b"PK but not really").unwrap();
    assert_mentions(&load_err(&junk), &[&junk.display().to_string(), "zip"]);
    let _ = fs::remove_dir_all(&tmp);
}

#[test]
fn report_serialises_with_the_documented_fields() {
    let report = LakeReport {
        accuracy: 0.5,
        trials: 2,
        correct: 1,
        per_run: Vec::new(),
    };
    let json = serde_json::to_value(&report).unwrap();
    for key in ["accuracy", "trials", "correct", "per_run"] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
}
