//! Lake et al.'s 20-way within-alphabet one-shot benchmark (Science 2015), the task behind
//! Koch et al.'s 92.0 % Siamese result.
//!
//! Layout (`DIR` is what [`load_lake_runs`] is given):
//! - `DIR/runNN/class_labels.txt`: one trial a line, `TEST_IMAGE TRAINING_IMAGE`, both paths
//!   relative to `DIR` (`run01/test/item01.png run01/training/class08.png`): a test image and
//!   the one training image of its class. Blank lines are skipped.
//! - `DIR/runNN/training/*.png`: the run's training images, one per class; every one of them
//!   is a candidate for every trial (the official runs have 20, each the answer of one trial).
//! - `DIR/runNN/test/*.png`: the test images.
//!
//! The official set has 20 runs of 20 trials. `DIR` may also be the official `all_runs.zip`
//! (read in place; its entries are `runNN/...`, possibly under one top folder), a folder
//! holding `all_runs.zip`, or a folder holding the extracted `all_runs/`.
//!
//! Runs are in name order, training images in file-name order (`class01` .. `class20`;
//! [`LakeTrial::answer`] indexes them), trials in file order. Images are preprocessed exactly
//! like Omniglot's (see [`super::omniglot`]): decoded under the limits of [`super::decode`],
//! inverted so strokes are 1, area-resized to `image_size x image_size`.
//!
//! Errors name what is wrong: a malformed `class_labels.txt` line gives a
//! [`DataError::SplitFile`] naming the file and line (wrong number of fields, a path outside
//! the run, a training image that is not one of the run's training images, a missing or
//! duplicate test image); a missing `class_labels.txt`, a folder without `runNN` folders and
//! an undecodable image name the file or folder.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use super::decode::{read_file, read_limited};
use super::omniglot::preprocess;
use super::{sorted_entries, DataError, MAX_IMAGE_SIZE};

/// The labels file of every run.
pub const LABELS_FILE: &str = "class_labels.txt";

/// One trial: a test image and the index of its class's training image.
#[derive(Clone, Debug, PartialEq)]
pub struct LakeTrial {
    /// From `class_labels.txt`: relative to `DIR`, `/`-separated (`run01/test/item01.png`).
    pub test_path: String,
    /// `image_size * image_size` floats in `[0, 1]`, strokes = 1.
    pub test_image: Vec<f32>,
    /// Index into [`LakeRun::training`] of the training image of this trial's class.
    pub answer: usize,
}

/// One run: the training images (one per class) and the trials to classify against them.
#[derive(Clone, Debug, PartialEq)]
pub struct LakeRun {
    /// The run's folder name (`run01`).
    pub name: String,
    /// `runNN/training/<file>`, relative to `DIR`, in file-name order.
    pub training_paths: Vec<String>,
    /// The training images, in the order of `training_paths`.
    pub training: Vec<Vec<f32>>,
    pub trials: Vec<LakeTrial>,
}

/// `run` followed by one or more ASCII digits.
fn is_run_name(name: &str) -> bool {
    name.strip_prefix("run")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg")
}

/// Where the runs are read from. Files are addressed by their `/`-separated path relative to
/// `DIR` (`run01/test/item01.png`).
enum Store {
    Dir {
        root: PathBuf,
    },
    Zip {
        /// The zip's path, as errors show it.
        shown: String,
        archive: zip::ZipArchive<fs::File>,
        /// Relative path (top folder stripped) -> entry index, files only.
        files: BTreeMap<String, usize>,
    },
}

impl Store {
    fn open(path: &Path) -> Result<Store, DataError> {
        let meta = fs::metadata(path).map_err(|e| DataError::io(path.display(), e))?;
        if meta.is_file() {
            return Store::open_zip(path);
        }
        let has_runs = |dir: &Path| -> Result<bool, DataError> {
            Ok(sorted_entries(dir)?
                .iter()
                .any(|(name, _, is_dir)| *is_dir && is_run_name(name)))
        };
        if has_runs(path)? {
            return Ok(Store::Dir {
                root: path.to_path_buf(),
            });
        }
        let extracted = path.join("all_runs");
        if extracted.is_dir() && has_runs(&extracted)? {
            return Ok(Store::Dir { root: extracted });
        }
        let zip = path.join("all_runs.zip");
        if zip.is_file() {
            return Store::open_zip(&zip);
        }
        Err(no_runs(path.display()))
    }

    fn open_zip(path: &Path) -> Result<Store, DataError> {
        let shown = path.display().to_string();
        let zip_err = |source| DataError::Zip {
            path: shown.clone(),
            cause: source,
        };
        let file = fs::File::open(path).map_err(|e| DataError::io(&shown, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
        // (components, index) of every file entry.
        let mut entries: Vec<(Vec<String>, usize)> = Vec::new();
        for i in 0..archive.len() {
            let entry = archive.by_index(i).map_err(zip_err)?;
            let Some(enclosed) = entry.enclosed_name() else {
                return Err(DataError::UnsafeZipEntry {
                    zip: shown.clone(),
                    entry: entry.name().to_string(),
                });
            };
            if entry.is_dir() {
                continue;
            }
            let parts: Vec<String> = enclosed
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            entries.push((parts, i));
        }
        // Runs at the top (`run01/...`) or under one top folder (`all_runs/run01/...`).
        let at_top = entries
            .iter()
            .any(|(p, _)| p.len() > 1 && is_run_name(&p[0]));
        let skip = if at_top {
            0
        } else {
            let mut tops: Vec<&str> = entries
                .iter()
                .filter(|(p, _)| p.len() > 2 && is_run_name(&p[1]))
                .map(|(p, _)| p[0].as_str())
                .collect();
            tops.sort_unstable();
            tops.dedup();
            match tops.as_slice() {
                [] => return Err(no_runs(&shown)),
                [_] => 1,
                several => {
                    return Err(DataError::layout(
                        &shown,
                        format!(
                            "runNN folders under several top folders ({}); expected them at the top or under one folder",
                            several.join(", ")
                        ),
                    ))
                }
            }
        };
        let files = entries
            .into_iter()
            .filter(|(p, _)| p.len() > skip)
            .map(|(p, i)| (p[skip..].join("/"), i))
            .collect();
        Ok(Store::Zip {
            shown,
            archive,
            files,
        })
    }

    /// The run folder names, sorted.
    fn runs(&self) -> Result<Vec<String>, DataError> {
        let mut runs: Vec<String> = match self {
            Store::Dir { root } => sorted_entries(root)?
                .into_iter()
                .filter(|(name, _, is_dir)| *is_dir && is_run_name(name))
                .map(|(name, _, _)| name)
                .collect(),
            Store::Zip { files, .. } => files
                .keys()
                .filter_map(|k| k.split_once('/').map(|(run, _)| run))
                .filter(|run| is_run_name(run))
                .map(str::to_string)
                .collect(),
        };
        runs.sort();
        runs.dedup();
        Ok(runs)
    }

    /// `run/training/<file>` of every image file in the run's training folder, sorted.
    fn training_images(&self, run: &str) -> Result<Vec<String>, DataError> {
        let mut out: Vec<String> = match self {
            Store::Dir { root } => {
                let dir = root.join(run).join("training");
                if !dir.is_dir() {
                    return Ok(Vec::new());
                }
                sorted_entries(&dir)?
                    .into_iter()
                    .filter(|(name, _, is_dir)| !is_dir && is_image(name))
                    .map(|(name, _, _)| format!("{run}/training/{name}"))
                    .collect()
            }
            Store::Zip { files, .. } => {
                let prefix = format!("{run}/training/");
                files
                    .keys()
                    .filter(|k| {
                        k.strip_prefix(&prefix)
                            .is_some_and(|f| !f.contains('/') && is_image(f))
                    })
                    .cloned()
                    .collect()
            }
        };
        out.sort();
        Ok(out)
    }

    /// How errors show the file `rel`.
    fn shown(&self, rel: &str) -> String {
        match self {
            Store::Dir { root } => root.join(rel).display().to_string(),
            Store::Zip {
                shown,
                files,
                archive,
            } => {
                let entry = files
                    .get(rel)
                    .and_then(|&i| archive.name_for_index(i))
                    .unwrap_or(rel);
                format!("{shown}:{entry}")
            }
        }
    }

    fn exists(&self, rel: &str) -> bool {
        match self {
            Store::Dir { root } => root.join(rel).is_file(),
            Store::Zip { files, .. } => files.contains_key(rel),
        }
    }

    /// The bytes of the file `rel` (at most [`super::MAX_FILE_BYTES`]).
    fn read(&mut self, rel: &str) -> Result<Vec<u8>, DataError> {
        let name = self.shown(rel);
        match self {
            Store::Dir { root } => read_file(&root.join(rel)),
            Store::Zip {
                shown,
                archive,
                files,
            } => {
                let Some(&i) = files.get(rel) else {
                    return Err(DataError::layout(name, "no such entry in the zip"));
                };
                let mut entry = archive.by_index(i).map_err(|source| DataError::Zip {
                    path: shown.clone(),
                    cause: source,
                })?;
                let declared = entry.size();
                read_limited(&mut entry, declared, &name)
            }
        }
    }
}

fn no_runs(path: impl std::fmt::Display) -> DataError {
    DataError::layout(
        path,
        format!(
            "no runNN folders found: expected run01/{LABELS_FILE}, run01/training/, run01/test/, ... \
             (Lake's one-shot runs, extracted or as all_runs.zip)"
        ),
    )
}

/// The `/`-separated path `field` if it lies inside `run` (first component `run`, then at
/// least one more, no empty, `.` or `..` components, not absolute).
fn inside_run(field: &str, run: &str) -> Option<String> {
    let parts: Vec<&str> = field.split(['/', '\\']).collect();
    let normal = |p: &&str| !p.is_empty() && *p != "." && *p != ".." && !p.contains(':');
    (parts.len() >= 2 && parts[0] == run && parts.iter().all(normal)).then(|| parts.join("/"))
}

/// One trial before decoding: its test image (`/`-separated, relative to `DIR`) and answer.
struct ParsedTrial {
    test_path: String,
    answer: usize,
}

fn parse_labels(
    store: &Store,
    run: &str,
    text: &str,
    labels_shown: &str,
    training: &[String],
) -> Result<Vec<ParsedTrial>, DataError> {
    let index: HashMap<&str, usize> = training
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut trials = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| DataError::SplitFile {
            path: labels_shown.to_string(),
            line: line_no,
            message,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [test, train] = fields.as_slice() else {
            return Err(err(format!(
                "expected 2 fields, TEST_IMAGE TRAINING_IMAGE (like {run}/test/item01.png {run}/training/class01.png), found {}: {line:?}",
                fields.len()
            )));
        };
        let outside = |what: &str, p: &str| {
            err(format!(
                "{what} {p:?} is not inside this run: expected a relative path {run}/... without '..'"
            ))
        };
        let test_path = inside_run(test, run).ok_or_else(|| outside("test image", test))?;
        let train_path = inside_run(train, run).ok_or_else(|| outside("training image", train))?;
        let Some(&answer) = index.get(train_path.as_str()) else {
            let listed = if training.is_empty() {
                format!("{run}/training/ holds no images")
            } else {
                let names: Vec<&str> = training
                    .iter()
                    .map(|p| p.rsplit('/').next().unwrap_or(p))
                    .collect();
                format!("{run}/training/ holds {}", names.join(", "))
            };
            return Err(err(format!(
                "training image {train:?} is not one of the run's training images ({listed})"
            )));
        };
        if index.contains_key(test_path.as_str()) {
            return Err(err(format!(
                "test image {test:?} is one of the run's training images"
            )));
        }
        if !store.exists(&test_path) {
            return Err(err(format!(
                "test image {test:?} not found ({} does not exist)",
                store.shown(&test_path)
            )));
        }
        if let Some(first) = seen.insert(test_path.clone(), line_no) {
            return Err(err(format!(
                "duplicate test image {test:?} (first on line {first})"
            )));
        }
        trials.push(ParsedTrial { test_path, answer });
    }
    if trials.is_empty() {
        return Err(DataError::layout(
            labels_shown,
            "no trials: expected one TEST_IMAGE TRAINING_IMAGE line per trial",
        ));
    }
    Ok(trials)
}

/// Loads Lake's one-shot runs from `path` (see the module documentation), every image
/// preprocessed like Omniglot's to `image_size x image_size`.
pub fn load_lake_runs(path: &Path, image_size: usize) -> Result<Vec<LakeRun>, DataError> {
    if image_size == 0 || image_size > MAX_IMAGE_SIZE {
        return Err(DataError::Options(format!(
            "image_size must be between 1 and {MAX_IMAGE_SIZE}, got {image_size}"
        )));
    }
    let mut store = Store::open(path)?;
    let run_names = store.runs()?;
    if run_names.is_empty() {
        return Err(no_runs(path.display()));
    }
    let mut runs = Vec::with_capacity(run_names.len());
    for run in run_names {
        let labels = format!("{run}/{LABELS_FILE}");
        let labels_shown = store.shown(&labels);
        if !store.exists(&labels) {
            return Err(DataError::layout(
                labels_shown,
                "missing: every runNN folder needs a class_labels.txt with one TEST_IMAGE TRAINING_IMAGE line per trial",
            ));
        }
        let text = String::from_utf8(store.read(&labels)?)
            .map_err(|_| DataError::layout(&labels_shown, "not UTF-8 text"))?;
        let training_paths = store.training_images(&run)?;
        let parsed = parse_labels(&store, &run, &text, &labels_shown, &training_paths)?;

        // Read every image of the run (the zip sequentially), then decode in parallel.
        let files: Vec<&str> = training_paths
            .iter()
            .map(String::as_str)
            .chain(parsed.iter().map(|t| t.test_path.as_str()))
            .collect();
        let mut encoded = Vec::with_capacity(files.len());
        for rel in &files {
            encoded.push((store.shown(rel), store.read(rel)?));
        }
        let mut images: Vec<Vec<f32>> = encoded
            .par_iter()
            .map(|(name, bytes)| preprocess(bytes, name, image_size))
            .collect::<Result<_, _>>()?;
        let test_images = images.split_off(training_paths.len());
        let trials = parsed
            .into_iter()
            .zip(test_images)
            .map(|(t, test_image)| LakeTrial {
                test_path: t.test_path,
                test_image,
                answer: t.answer,
            })
            .collect();
        runs.push(LakeRun {
            name: run,
            training_paths,
            training: images,
            trials,
        });
    }
    Ok(runs)
}
