//! The data layer (CPU only): datasets, loaders and seeded samplers.
//!
//! A [`Dataset`] holds three disjoint [`ClassSet`]s (train, val, test), each a flat buffer of
//! images stored class after class, NCHW per image, values in `[0, 1]`. Three sources:
//!
//! - [`DatasetSource::Synthetic`] (`"synthetic"`): seeded Omniglot-like handwritten characters
//!   generated in memory (see [`synthetic`]); no files needed.
//! - [`DatasetSource::Omniglot`] (`"omniglot:PATH"`): the official Omniglot files, zipped or
//!   extracted (see [`omniglot`]).
//! - [`DatasetSource::Folder`] (`"folder:PATH"`): one sub-folder of PNG/JPEG images per class
//!   (see [`folder`]).
//!
//! Samplers ([`EpisodeSampler`], [`PairSampler`]) draw index batches into a [`ClassSet`] from a
//! seeded ChaCha8 stream whose position can be saved ([`SamplerState`]) and restored, so a
//! resumed training run sees exactly the episodes it would have seen.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub mod decode;
pub mod folder;
pub mod lake;
pub mod omniglot;
mod sampler;
pub mod synthetic;

pub use decode::{MAX_ALLOC_BYTES, MAX_FILE_BYTES, MAX_IMAGE_SIDE};
pub use folder::{load_image_file, load_support_folder};
pub use sampler::{Episode, EpisodeSampler, PairBatch, PairSampler, SamplerState};

/// Shape of one image: `channels x height x width`, stored NCHW.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageSpec {
    /// Floats per image: `channels * height * width`.
    pub fn item_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// One class of a [`ClassSet`]: its images are `[start, start + count)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub name: String,
    pub start: usize,
    pub count: usize,
}

impl ClassInfo {
    /// The image indices of this class.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.count
    }
}

/// All images of one split, class after class, each `spec.item_len()` floats in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassSet {
    pub spec: ImageSpec,
    pub images: Vec<f32>,
    pub classes: Vec<ClassInfo>,
}

impl ClassSet {
    /// An empty set of images of this shape.
    pub fn empty(spec: ImageSpec) -> Self {
        ClassSet {
            spec,
            images: Vec::new(),
            classes: Vec::new(),
        }
    }

    /// Number of images (over all classes).
    pub fn num_images(&self) -> usize {
        self.images
            .len()
            .checked_div(self.spec.item_len())
            .unwrap_or(0)
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Image `i` (`item_len()` floats, NCHW). Panics if `i >= num_images()`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.spec.item_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The class index owning image `i`, if any.
    pub fn class_of(&self, i: usize) -> Option<usize> {
        let c = self.classes.partition_point(|c| c.start + c.count <= i);
        (c < self.classes.len() && self.classes[c].range().contains(&i)).then_some(c)
    }

    /// Appends a class whose images are concatenated in `images` (a multiple of `item_len()`).
    pub(crate) fn push_class(&mut self, name: String, images: &[f32]) {
        let n = self.spec.item_len();
        debug_assert_eq!(images.len() % n, 0);
        let start = self.num_images();
        self.images.extend_from_slice(images);
        self.classes.push(ClassInfo {
            name,
            start,
            count: images.len() / n,
        });
    }
}

/// A dataset: three class-disjoint splits of images of one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub spec: ImageSpec,
    pub train: ClassSet,
    pub val: ClassSet,
    pub test: ClassSet,
}

/// Where the images come from; parsed from `synthetic`, `omniglot:PATH` or `folder:PATH`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DatasetSource {
    /// Generated Omniglot-like characters (no files).
    #[default]
    Synthetic,
    /// The official Omniglot zips and/or extracted folders.
    Omniglot(PathBuf),
    /// One sub-folder of images per class.
    Folder(PathBuf),
}

impl FromStr for DatasetSource {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        let bad = || DataError::BadSource(s.to_string());
        let t = s.trim();
        if t.eq_ignore_ascii_case("synthetic") {
            return Ok(DatasetSource::Synthetic);
        }
        let (kind, path) = t.split_once(':').ok_or_else(bad)?;
        if path.is_empty() {
            return Err(bad());
        }
        match kind.to_ascii_lowercase().as_str() {
            "omniglot" => Ok(DatasetSource::Omniglot(PathBuf::from(path))),
            "folder" => Ok(DatasetSource::Folder(PathBuf::from(path))),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for DatasetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSource::Synthetic => write!(f, "synthetic"),
            DatasetSource::Omniglot(p) => write!(f, "omniglot:{}", p.display()),
            DatasetSource::Folder(p) => write!(f, "folder:{}", p.display()),
        }
    }
}

/// Which split file becomes the training set when Omniglot is loaded with split files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TrainSplit {
    /// `train.txt`.
    #[default]
    Train,
    /// `trainval.txt` (train + val, for the final run of the Vinyals protocol).
    TrainVal,
}

/// Options of [`load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Seeds the synthetic generator and every seeded split.
    pub seed: u64,
    /// Images are resized (or rendered) to `image_size x image_size`.
    pub image_size: usize,
    /// Omniglot only: add the 90/180/270 degree rotations of every character as new classes.
    pub rotations: bool,
    /// Omniglot only: a folder with the Vinyals split files (`train.txt`, `val.txt`,
    /// `test.txt`, `trainval.txt`).
    pub split_dir: Option<PathBuf>,
    /// Omniglot with `split_dir` only: which file is the training split.
    pub train_split: TrainSplit,
    /// Skip (and count, in one warning) images that cannot be decoded instead of failing.
    pub skip_bad_images: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            seed: 0,
            image_size: 28,
            rotations: true,
            split_dir: None,
            train_split: TrainSplit::Train,
            skip_bad_images: false,
        }
    }
}

/// The largest `image_size` accepted.
pub const MAX_IMAGE_SIZE: usize = 1024;

/// Everything that can go wrong while loading or sampling; each message names the file or
/// path concerned (or the sampler arguments) and says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "invalid dataset source {0:?}: expected \"synthetic\", \"omniglot:PATH\" or \"folder:PATH\""
    )]
    BadSource(String),
    // The underlying error is part of the message (and deliberately not a `source`, so
    // error chains do not print it twice).
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{path}: not a readable zip archive: {cause}")]
    Zip {
        path: String,
        cause: zip::result::ZipError,
    },
    #[error(
        "{zip}: entry {entry:?} has an unsafe path (absolute or containing '..'); refusing it"
    )]
    UnsafeZipEntry { zip: String, entry: String },
    #[error("{path}: cannot decode image: {reason}")]
    BadImage { path: String, reason: String },
    #[error("{path}: {message}")]
    Layout { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    SplitFile {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Sampler(String),
    #[error("invalid load option: {0}")]
    Options(String),
}

impl DataError {
    pub(crate) fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_string(),
            cause: source,
        }
    }
    pub(crate) fn layout(path: impl fmt::Display, message: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// Loads a dataset. See the module documentation of each source for its layout and splits.
pub fn load(source: &DatasetSource, opts: &LoadOptions) -> Result<Dataset, DataError> {
    if opts.image_size == 0 || opts.image_size > MAX_IMAGE_SIZE {
        return Err(DataError::Options(format!(
            "image_size must be between 1 and {MAX_IMAGE_SIZE}, got {}",
            opts.image_size
        )));
    }
    let (spec, [train, val, test]) = match source {
        DatasetSource::Synthetic => {
            let d = synthetic::generate(&synthetic::SyntheticConfig {
                seed: opts.seed,
                image_size: opts.image_size,
                ..Default::default()
            });
            (d.spec, [d.train, d.val, d.test])
        }
        DatasetSource::Omniglot(path) => omniglot::load(path, opts)?,
        DatasetSource::Folder(path) => folder::load(path, opts)?,
    };
    Ok(Dataset {
        name: source.to_string(),
        spec,
        train,
        val,
        test,
    })
}

/// Sizes of a seeded (train, val, test) split of `n` groups with the given val/test
/// fractions. A split with a non-zero fraction gets at least one group when that leaves at
/// least one for train (val gives way first: two groups split into one train and one test).
pub(crate) fn split_counts(n: usize, val_frac: f64, test_frac: f64) -> (usize, usize, usize) {
    let part = |f: f64| {
        if f > 0.0 {
            ((n as f64 * f).round() as usize).max(1)
        } else {
            0
        }
    };
    let (mut val, mut test) = (part(val_frac), part(test_frac));
    while val + test > 0 && val + test >= n {
        if val > 0 {
            val -= 1;
        } else {
            test -= 1;
        }
    }
    (n - val - test, val, test)
}

/// Assigns each of `n` groups to a split (0 = train, 1 = val, 2 = test) by a seeded shuffle,
/// with [`split_counts`] sizes. `stream` separates the shuffles of different loaders.
pub(crate) fn assign_splits(
    n: usize,
    val_frac: f64,
    test_frac: f64,
    seed: u64,
    stream: u64,
) -> Vec<usize> {
    let (_, val, test) = split_counts(n, val_frac, test_frac);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    order.shuffle(&mut rng);
    let mut split = vec![0; n];
    for (rank, &g) in order.iter().enumerate() {
        split[g] = if rank < val {
            1
        } else if rank < val + test {
            2
        } else {
            0
        };
    }
    split
}

/// The entries of a directory as `(file name, path, is a directory)`, sorted by name.
pub(crate) fn sorted_entries(
    dir: &std::path::Path,
) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir.display(), e))? {
        let entry = entry.map_err(|e| DataError::io(dir.display(), e))?;
        let path = entry.path();
        let is_dir = path.is_dir();
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            path,
            is_dir,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
