//! Scoring Lake et al.'s one-shot runs ([`crate::data::lake`]): each test image is classified
//! against its run's training images (one per class, so 1-shot, `way` = number of training
//! images) and is right when the chosen training image is its answer.
//!
//! The official benchmark reports the error averaged over 20 runs of 20 trials; with equal
//! trials per run that is one minus [`LakeReport::accuracy`], the fraction over all trials.

use std::fmt;

use serde::Serialize;

use crate::data::lake::LakeRun;
use crate::train::eval::{classify, Rule};

/// The score of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LakeRunResult {
    pub run: String,
    pub correct: usize,
    pub trials: usize,
    /// `correct / trials` (0 for a run without trials).
    pub accuracy: f64,
}

/// The score over all runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LakeReport {
    /// Fraction of all trials classified correctly (0 when there are none).
    pub accuracy: f64,
    pub trials: usize,
    pub correct: usize,
    pub per_run: Vec<LakeRunResult>,
}

fn fraction(correct: usize, trials: usize) -> f64 {
    if trials == 0 {
        0.0
    } else {
        correct as f64 / trials as f64
    }
}

/// Embeds `count` images laid out one after another: `[count, dim]`, or the device's error.
pub type Embedder<'a> = dyn FnMut(&[f32], usize) -> anyhow::Result<Vec<f32>> + 'a;

/// Scores `runs`: for each run, one call `embed(images, count)` embeds the run's training
/// images followed by its test images (concatenated, `count` of them) and must return
/// `[count, dim]` embeddings; each test image is then classified among the training images
/// with [`classify`] (shot 1; ties go to the first training image).
///
/// Panics if the run's images differ in length or `embed` returns a length that is not a
/// multiple of `count` (both are caller bugs, not data errors: the loader never makes them).
/// An error from `embed` (a failed device) is returned.
pub fn evaluate_lake(
    runs: &[LakeRun],
    rule: &Rule,
    embed: &mut Embedder<'_>,
) -> anyhow::Result<LakeReport> {
    let mut per_run = Vec::with_capacity(runs.len());
    for run in runs {
        let way = run.training.len();
        let trials = run.trials.len();
        let mut correct = 0;
        if way > 0 && trials > 0 {
            let images: Vec<&[f32]> = run
                .training
                .iter()
                .map(Vec::as_slice)
                .chain(run.trials.iter().map(|t| t.test_image.as_slice()))
                .collect();
            let image_len = images[0].len();
            assert!(
                images.iter().all(|im| im.len() == image_len),
                "evaluate_lake: run {} has images of different lengths",
                run.name
            );
            let count = images.len();
            let embeddings = embed(&images.concat(), count)?;
            assert!(
                !embeddings.is_empty() && embeddings.len().is_multiple_of(count),
                "evaluate_lake: embed returned {} floats for {count} images of run {}",
                embeddings.len(),
                run.name
            );
            let dim = embeddings.len() / count;
            let embedding = |i: usize| &embeddings[i * dim..(i + 1) * dim];
            let support: Vec<&[f32]> = (0..way).map(embedding).collect();
            correct = run
                .trials
                .iter()
                .enumerate()
                .filter(|(t, trial)| {
                    classify(rule, dim, way, 1, &support, embedding(way + t)) == trial.answer
                })
                .count();
        }
        per_run.push(LakeRunResult {
            run: run.name.clone(),
            correct,
            trials,
            accuracy: fraction(correct, trials),
        });
    }
    let trials = per_run.iter().map(|r| r.trials).sum();
    let correct = per_run.iter().map(|r| r.correct).sum();
    Ok(LakeReport {
        accuracy: fraction(correct, trials),
        trials,
        correct,
        per_run,
    })
}

impl fmt::Display for LakeReport {
    /// `Lake one-shot: 92.00% (368/400 trials, error 8.00%) over 20 runs`, then one line a run.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Lake one-shot: {:.2}% ({}/{} trials, error {:.2}%) over {} runs",
            100.0 * self.accuracy,
            self.correct,
            self.trials,
            100.0 * (1.0 - self.accuracy),
            self.per_run.len()
        )?;
        for r in &self.per_run {
            write!(
                f,
                "\n  {}: {:.2}% ({}/{})",
                r.run,
                100.0 * r.accuracy,
                r.correct,
                r.trials
            )?;
        }
        Ok(())
    }
}
