//! Seeded episode and pair samplers with resumable state.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{ClassSet, DataError};

/// A sampler's position: its seed and the word position of its ChaCha8 stream. Restoring it
/// on a sampler built over the same class set with the same arguments continues exactly
/// where the saved one stood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    pub word_pos: u128,
}

fn rng_at(state: &SamplerState) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(state.seed);
    rng.set_word_pos(state.word_pos);
    rng
}

/// `k` distinct values of `0..n` in random order (partial Fisher-Yates); `k <= n`.
fn distinct(rng: &mut ChaCha8Rng, n: usize, k: usize, scratch: &mut Vec<usize>) {
    scratch.clear();
    scratch.extend(0..n);
    for i in 0..k {
        let j = rng.random_range(i..n);
        scratch.swap(i, j);
    }
    scratch.truncate(k);
}

/// One few-shot episode. `support` holds `way * shot` image indices into
/// [`ClassSet::images`], class-major (episode class 0's shots first), `query` holds
/// `way * query` likewise; the labels are implied: support `i` has label `i / shot`, query
/// `i` has label `i / query`. `classes[k]` is the [`ClassSet::classes`] index of label `k`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    pub classes: Vec<usize>,
    pub support: Vec<u32>,
    pub query: Vec<u32>,
}

/// Draws `way`-way `shot`-shot episodes with `query` queries per class.
#[derive(Clone, Debug)]
pub struct EpisodeSampler {
    /// `(class index, first image, image count)` of the classes with `shot + query` images.
    usable: Vec<(usize, usize, usize)>,
    skipped: usize,
    way: usize,
    shot: usize,
    query: usize,
    seed: u64,
    rng: ChaCha8Rng,
    scratch: Vec<usize>,
    picks: Vec<usize>,
}

impl EpisodeSampler {
    /// Classes with fewer than `shot + query` images are left out (one warning counts them);
    /// an error if `way`, `shot` or `query` is 0 or fewer than `way` classes are left.
    pub fn new(
        set: &ClassSet,
        way: usize,
        shot: usize,
        query: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        if way == 0 || shot == 0 || query == 0 {
            return Err(DataError::Sampler(format!(
                "episode sampler: way, shot and query must all be at least 1 (got way {way}, shot {shot}, query {query})"
            )));
        }
        let need = shot + query;
        let usable: Vec<_> = set
            .classes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.count >= need)
            .map(|(i, c)| (i, c.start, c.count))
            .collect();
        let skipped = set.classes.len() - usable.len();
        if usable.len() < way {
            return Err(DataError::Sampler(format!(
                "episode sampler: {way}-way episodes need {way} classes with at least shot + query = {need} images, \
                 but only {} of the {} classes have that many",
                usable.len(),
                set.classes.len()
            )));
        }
        if skipped > 0 {
            eprintln!(
                "warning: episode sampler: left out {skipped} of {} classes with fewer than shot + query = {need} images",
                set.classes.len()
            );
        }
        if set.num_images() > u32::MAX as usize {
            return Err(DataError::Sampler(format!(
                "episode sampler: {} images do not fit 32-bit indices",
                set.num_images()
            )));
        }
        let state = SamplerState { seed, word_pos: 0 };
        Ok(EpisodeSampler {
            usable,
            skipped,
            way,
            shot,
            query,
            seed,
            rng: rng_at(&state),
            scratch: Vec::new(),
            picks: Vec::new(),
        })
    }

    /// The next episode: `way` distinct classes, `shot + query` distinct images of each.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Episode {
        let (way, shot, query) = (self.way, self.shot, self.query);
        distinct(&mut self.rng, self.usable.len(), way, &mut self.picks);
        let mut episode = Episode {
            classes: Vec::with_capacity(way),
            support: Vec::with_capacity(way * shot),
            query: Vec::with_capacity(way * query),
        };
        for k in 0..way {
            let (class, start, count) = self.usable[self.picks[k]];
            episode.classes.push(class);
            distinct(&mut self.rng, count, shot + query, &mut self.scratch);
            let index = |j: &usize| (start + j) as u32;
            episode
                .support
                .extend(self.scratch[..shot].iter().map(index));
            episode.query.extend(self.scratch[shot..].iter().map(index));
        }
        episode
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            word_pos: self.rng.get_word_pos(),
        }
    }

    pub fn restore(&mut self, state: &SamplerState) {
        self.seed = state.seed;
        self.rng = rng_at(state);
    }

    /// How many classes were left out for having fewer than `shot + query` images.
    pub fn skipped_classes(&self) -> usize {
        self.skipped
    }

    /// How many classes episodes are drawn from.
    pub fn usable_classes(&self) -> usize {
        self.usable.len()
    }
}

/// A batch of image pairs for a Siamese network: `same[i]` is 1 when `left[i]` and
/// `right[i]` (indices into [`ClassSet::images`]) are of one class, else 0.
#[derive(Clone, Debug, PartialEq)]
pub struct PairBatch {
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    pub same: Vec<f32>,
}

/// Draws batches of `pairs` pairs: the first `pairs / 2` of one class (two distinct images
/// of a class with at least two), the rest of two distinct classes.
#[derive(Clone, Debug)]
pub struct PairSampler {
    /// `(first image, count)` of the classes with at least two images.
    multi: Vec<(usize, usize)>,
    /// `(first image, count)` of the classes with at least one image.
    nonempty: Vec<(usize, usize)>,
    skipped: usize,
    pairs: usize,
    seed: u64,
    rng: ChaCha8Rng,
    scratch: Vec<usize>,
}

impl PairSampler {
    /// An error if `pairs` is 0, if same-class pairs are asked for and no class has two
    /// images, or if different-class pairs are asked for and fewer than two classes have
    /// images. Classes with a single image can only appear in different-class pairs; one
    /// warning counts them.
    pub fn new(set: &ClassSet, pairs: usize, seed: u64) -> Result<Self, DataError> {
        if pairs == 0 {
            return Err(DataError::Sampler(
                "pair sampler: pairs must be at least 1".to_string(),
            ));
        }
        let multi: Vec<_> = set
            .classes
            .iter()
            .filter(|c| c.count >= 2)
            .map(|c| (c.start, c.count))
            .collect();
        let nonempty: Vec<_> = set
            .classes
            .iter()
            .filter(|c| c.count >= 1)
            .map(|c| (c.start, c.count))
            .collect();
        let (same, different) = (pairs / 2, pairs - pairs / 2);
        if same > 0 && multi.is_empty() {
            return Err(DataError::Sampler(format!(
                "pair sampler: same-class pairs need a class with at least 2 images, but none of the {} classes has",
                set.classes.len()
            )));
        }
        if different > 0 && nonempty.len() < 2 {
            return Err(DataError::Sampler(format!(
                "pair sampler: different-class pairs need at least 2 classes with images, but there are {}",
                nonempty.len()
            )));
        }
        if set.num_images() > u32::MAX as usize {
            return Err(DataError::Sampler(format!(
                "pair sampler: {} images do not fit 32-bit indices",
                set.num_images()
            )));
        }
        let skipped = set.classes.len() - multi.len();
        if skipped > 0 {
            eprintln!(
                "warning: pair sampler: {skipped} of {} classes have fewer than 2 images and give no same-class pairs",
                set.classes.len()
            );
        }
        let state = SamplerState { seed, word_pos: 0 };
        Ok(PairSampler {
            multi,
            nonempty,
            skipped,
            pairs,
            seed,
            rng: rng_at(&state),
            scratch: Vec::new(),
        })
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> PairBatch {
        let n = self.pairs;
        let mut batch = PairBatch {
            left: Vec::with_capacity(n),
            right: Vec::with_capacity(n),
            same: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (l, r, same) = if i < n / 2 {
                let (start, count) = self.multi[self.rng.random_range(0..self.multi.len())];
                distinct(&mut self.rng, count, 2, &mut self.scratch);
                (start + self.scratch[0], start + self.scratch[1], 1.0)
            } else {
                distinct(&mut self.rng, self.nonempty.len(), 2, &mut self.scratch);
                let (a, b) = (
                    self.nonempty[self.scratch[0]],
                    self.nonempty[self.scratch[1]],
                );
                let l = a.0 + self.rng.random_range(0..a.1);
                let r = b.0 + self.rng.random_range(0..b.1);
                (l, r, 0.0)
            };
            batch.left.push(l as u32);
            batch.right.push(r as u32);
            batch.same.push(same);
        }
        batch
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            word_pos: self.rng.get_word_pos(),
        }
    }

    pub fn restore(&mut self, state: &SamplerState) {
        self.seed = state.seed;
        self.rng = rng_at(state);
    }

    /// How many classes have fewer than two images (no same-class pairs from them).
    pub fn skipped_classes(&self) -> usize {
        self.skipped
    }
}
