//! The image-folder loader (`folder:PATH`).
//!
//! `PATH` holds one sub-folder per class of PNG or JPEG images (`.png`, `.jpg`, `.jpeg`,
//! any case), grey or colour, any size. Every image is resized (stretched) to
//! `image_size x image_size` by area averaging; the dataset has 3 channels (RGB) if any image
//! is in colour, else 1 (grey images are then repeated over the three channels). Alpha is
//! dropped. Other files (and nested folders) are ignored and counted in one warning.
//!
//! Splits: when `PATH/train` exists, the class folders of `train/`, `val/` and `test/` are
//! the three splits (a missing `val/` or `test/` gives an empty split, with a warning).
//! Otherwise the classes are split by a seeded shuffle, 70 / 10 / 20 % of the classes to
//! train / val / test, at least one class each when there are three or more. Classes are
//! named after their folders and are in name order within a split. `rotations` does not
//! apply to folders.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::decode::{decode, planes, read_file, resize_area};
use super::{assign_splits, sorted_entries, ClassSet, DataError, ImageSpec, LoadOptions};

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg")
}

/// One decoded image: `(in colour, planes)`.
type Decoded = (bool, Vec<f32>);

struct ClassFiles {
    name: String,
    files: Vec<PathBuf>,
}

/// The class folders under `dir`, counting the entries that are neither class folders nor
/// image files inside one.
fn scan_classes(dir: &Path, ignored: &mut usize) -> Result<Vec<ClassFiles>, DataError> {
    let mut classes = Vec::new();
    for (name, path, is_dir) in sorted_entries(dir)? {
        if !is_dir {
            *ignored += 1;
            continue;
        }
        let mut files = Vec::new();
        for (file, file_path, is_dir) in sorted_entries(&path)? {
            if is_dir || !is_image(&file) {
                *ignored += 1;
            } else {
                files.push(file_path);
            }
        }
        classes.push(ClassFiles { name, files });
    }
    Ok(classes)
}

/// Decodes one image to `(in colour, planes resized to size x size)`.
fn load_image(path: &Path, size: usize) -> Result<Decoded, DataError> {
    let bytes = read_file(path)?;
    let img = decode(&bytes, &path.display().to_string())?;
    let colour = img.color().has_color();
    let channels = if colour { 3 } else { 1 };
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((
        colour,
        resize_area(&planes(&img, channels), channels, w, h, size, size),
    ))
}

/// Decodes one image file to `channels` (1 = grey, 3 = RGB) planes of `size x size`,
/// resized like the folder loader (no inversion).
pub fn load_image_file(path: &Path, size: usize, channels: usize) -> Result<Vec<f32>, DataError> {
    if channels != 1 && channels != 3 {
        return Err(DataError::Options(format!(
            "images have 1 or 3 channels, not {channels}"
        )));
    }
    if size == 0 || size > super::MAX_IMAGE_SIZE {
        return Err(DataError::Options(format!(
            "image size must be between 1 and {}, got {size}",
            super::MAX_IMAGE_SIZE
        )));
    }
    let bytes = read_file(path)?;
    let img = decode(&bytes, &path.display().to_string())?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok(resize_area(
        &planes(&img, channels),
        channels,
        w,
        h,
        size,
        size,
    ))
}

/// Loads a support set for prediction: one sub-folder of images per class under `path`,
/// every image converted to `channels` and resized to `size x size` as by
/// [`load_image_file`]. Classes in name order; other files ignored (one warning).
pub fn load_support_folder(
    path: &Path,
    size: usize,
    channels: usize,
) -> Result<ClassSet, DataError> {
    let shown = path.display().to_string();
    let mut ignored = 0;
    let classes = scan_classes(path, &mut ignored)?;
    if ignored > 0 {
        eprintln!("warning: ignored {ignored} entries under {shown} that are not PNG/JPEG images in class folders");
    }
    let spec = ImageSpec {
        channels,
        height: size,
        width: size,
    };
    let mut set = ClassSet::empty(spec);
    for class in &classes {
        let images: Vec<Vec<f32>> = class
            .files
            .par_iter()
            .map(|f| load_image_file(f, size, channels))
            .collect::<Result<_, _>>()?;
        if !images.is_empty() {
            set.push_class(class.name.clone(), &images.concat());
        }
    }
    if set.classes.is_empty() {
        return Err(DataError::layout(
            &shown,
            "no class folders with PNG/JPEG images found",
        ));
    }
    Ok(set)
}

/// Loads an image folder from `path` (see the module documentation).
pub(crate) fn load(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(ImageSpec, [ClassSet; 3]), DataError> {
    let shown = path.display().to_string();
    if !path.is_dir() {
        let e = std::fs::metadata(path).err();
        return Err(match e {
            Some(e) => DataError::io(&shown, e),
            None => DataError::layout(
                &shown,
                "not a directory (expected one sub-folder of images per class)",
            ),
        });
    }
    let mut ignored = 0usize;
    let mut splits: [Vec<ClassFiles>; 3] = Default::default();
    if path.join("train").is_dir() {
        for (k, split) in ["train", "val", "test"].into_iter().enumerate() {
            let dir = path.join(split);
            if dir.is_dir() {
                splits[k] = scan_classes(&dir, &mut ignored)?;
            } else {
                eprintln!(
                    "warning: folder: {} has no {split}/ folder; the {split} split is empty",
                    shown
                );
            }
        }
        // The split folders themselves are expected at the top level; other entries are not.
        ignored += sorted_entries(path)?
            .iter()
            .filter(|e| !["train", "val", "test"].contains(&e.0.as_str()))
            .count();
    } else {
        let classes = scan_classes(path, &mut ignored)?;
        let assigned = assign_splits(classes.len(), 0.1, 0.2, opts.seed, 5 << 32);
        for (class, split) in classes.into_iter().zip(assigned) {
            splits[split].push(class);
        }
    }
    if ignored > 0 {
        eprintln!("warning: folder: ignored {ignored} entries under {shown} that are not PNG/JPEG images in class folders");
    }

    let size = opts.image_size;
    let decoded: Vec<Vec<Vec<Result<Decoded, DataError>>>> = splits
        .iter()
        .map(|classes| {
            classes
                .par_iter()
                .map(|c| c.files.par_iter().map(|f| load_image(f, size)).collect())
                .collect()
        })
        .collect();
    let mut skipped = 0usize;
    let mut first_skip = None;
    let mut good: Vec<Vec<Vec<Decoded>>> = Vec::with_capacity(3);
    for split in decoded {
        let mut classes = Vec::with_capacity(split.len());
        for class in split {
            let mut images = Vec::with_capacity(class.len());
            for r in class {
                match r {
                    Ok(v) => images.push(v),
                    Err(e) if opts.skip_bad_images => {
                        skipped += 1;
                        first_skip.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            classes.push(images);
        }
        good.push(classes);
    }
    if let Some(first) = first_skip {
        eprintln!("warning: folder: skipped {skipped} unreadable images; first: {first}");
    }

    let colour = good.iter().flatten().flatten().any(|(c, _)| *c);
    let channels = if colour { 3 } else { 1 };
    let spec = ImageSpec {
        channels,
        height: size,
        width: size,
    };
    let mut sets = [
        ClassSet::empty(spec),
        ClassSet::empty(spec),
        ClassSet::empty(spec),
    ];
    let mut empty = 0usize;
    for ((set, classes), images) in sets.iter_mut().zip(&splits).zip(&good) {
        for (class, imgs) in classes.iter().zip(images) {
            if imgs.is_empty() {
                empty += 1;
                continue;
            }
            let mut flat = Vec::with_capacity(imgs.len() * spec.item_len());
            for (c, px) in imgs {
                if channels == 3 && !c {
                    for _ in 0..3 {
                        flat.extend_from_slice(px);
                    }
                } else {
                    flat.extend_from_slice(px);
                }
            }
            set.push_class(class.name.clone(), &flat);
        }
    }
    if empty > 0 {
        eprintln!(
            "warning: folder: left out {empty} class folders under {shown} without usable images"
        );
    }
    if sets.iter().all(|s| s.classes.is_empty()) {
        return Err(DataError::layout(
            &shown,
            "no class folders with PNG/JPEG images found",
        ));
    }
    Ok((spec, sets))
}
