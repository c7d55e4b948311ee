//! The Omniglot loader (`omniglot:PATH`).
//!
//! Reads the official layout `<split>/<alphabet>/<character>/*.png` (105x105 binary images,
//! black strokes on white), from folders or straight from the official zips without
//! extracting them. `PATH` may be
//! - a directory holding `images_background`, `images_background_small1`,
//!   `images_background_small2` and/or `images_evaluation`, each as an extracted folder or as
//!   the `.zip` of that name (the folder wins when both exist);
//! - a single zip (inside, the top folder is the zip's stem);
//! - a single split folder holding `<alphabet>/<character>/*.png`.
//!
//! A source whose name starts with `images_evaluation` holds *evaluation* characters; any
//! other holds *background* characters. A character (`alphabet/characterNN`) found in several
//! sources is read once, from the first (the small background sets repeat Greek and Latin,
//! and are subsets of the full background set).
//!
//! Images are inverted (strokes = 1, background = 0) and resized to `image_size` by area
//! averaging (antialiased). With `rotations`, each character also gives the classes of its
//! 90, 180 and 270 degree counter-clockwise rotations; classes are named
//! `alphabet/characterNN/rotDDD` (`alphabet/characterNN` without rotations).
//!
//! Splits:
//! - with `split_dir`, the Vinyals split files: train = `train.txt` (`trainval.txt` with
//!   [`TrainSplit::TrainVal`]), val = `val.txt`, test = `test.txt`, one class
//!   `alphabet/characterNN/rotDDD` a line, classes in file order, from background or
//!   evaluation alike. A malformed line or one naming a missing character is an error naming
//!   the file and line. Without `rotations`, only the `rot000` lines are used.
//! - without split files, when evaluation characters are present: background alphabets are
//!   split by a seeded shuffle into train (85 %) and val (15 %, at least one alphabet when
//!   there are two), and the evaluation characters are the test set;
//! - when only background characters are present (e.g. the two small background zips), the
//!   background alphabets are split by a seeded shuffle into train / val / test, 70 / 10 / 20 %
//!   of the alphabets, at least one each when there are three or more.
//!
//! Classes within a split are in name order (file order with split files).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use super::decode::{decode, read_file, read_limited, resize_area, rotate_ccw};
use super::{
    assign_splits, sorted_entries, ClassSet, DataError, ImageSpec, LoadOptions, TrainSplit,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Background,
    Evaluation,
}

fn role_of(name: &str) -> Role {
    if name.starts_with("images_evaluation") {
        Role::Evaluation
    } else {
        Role::Background
    }
}

/// The official sources, in the order they are read.
const SOURCES: [&str; 4] = [
    "images_background",
    "images_background_small1",
    "images_background_small2",
    "images_evaluation",
];

enum Data {
    File(PathBuf),
    Bytes(Vec<u8>),
}

struct ImageRef {
    /// What errors name: the file path, or `archive.zip:entry`.
    name: String,
    data: Data,
}

struct Character {
    /// `alphabet/characterNN`.
    key: String,
    alphabet: String,
    role: Role,
    images: Vec<ImageRef>,
}

/// Everything found under a path.
struct Found {
    characters: Vec<Character>,
    /// Files or folders that are not `<alphabet>/<character>/*.png`.
    ignored: usize,
}

fn is_png(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".png")
}

fn scan_folder(root: &Path, role: Role, found: &mut Found) -> Result<(), DataError> {
    for (alphabet, alphabet_path, is_dir) in sorted_entries(root)? {
        if !is_dir {
            found.ignored += 1;
            continue;
        }
        for (character, character_path, is_dir) in sorted_entries(&alphabet_path)? {
            if !is_dir {
                found.ignored += 1;
                continue;
            }
            let mut images = Vec::new();
            for (file, path, is_dir) in sorted_entries(&character_path)? {
                if is_dir || !is_png(&file) {
                    found.ignored += 1;
                    continue;
                }
                images.push(ImageRef {
                    name: path.display().to_string(),
                    data: Data::File(path),
                });
            }
            if !images.is_empty() {
                found.characters.push(Character {
                    key: format!("{alphabet}/{character}"),
                    alphabet: alphabet.clone(),
                    role,
                    images,
                });
            }
        }
    }
    Ok(())
}

fn scan_zip(path: &Path, role: Role, found: &mut Found) -> Result<(), DataError> {
    let shown = path.display().to_string();
    let zip_err = |source| DataError::Zip {
        path: shown.clone(),
        cause: source,
    };
    let file = fs::File::open(path).map_err(|e| DataError::io(&shown, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut groups: BTreeMap<(String, String), Vec<(String, ImageRef)>> = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        let Some(enclosed) = entry.enclosed_name() else {
            return Err(DataError::UnsafeZipEntry {
                zip: shown.clone(),
                entry: entry.name().to_string(),
            });
        };
        if entry.is_dir() {
            continue;
        }
        let mut parts: Vec<String> = enclosed
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if parts.len() == 4 && parts[0] == stem {
            parts.remove(0);
        }
        if parts.len() != 3 || !is_png(&parts[2]) {
            found.ignored += 1;
            continue;
        }
        let name = format!("{shown}:{}", entry.name());
        let declared = entry.size();
        let bytes = read_limited(&mut entry, declared, &name)?;
        let file = parts.pop().unwrap_or_default();
        let character = parts.pop().unwrap_or_default();
        let alphabet = parts.pop().unwrap_or_default();
        let image = ImageRef {
            name,
            data: Data::Bytes(bytes),
        };
        groups
            .entry((alphabet, character))
            .or_default()
            .push((file, image));
    }
    for ((alphabet, character), mut images) in groups {
        images.sort_by(|a, b| a.0.cmp(&b.0));
        let images = images.into_iter().map(|(_, image)| image).collect();
        found.characters.push(Character {
            key: format!("{alphabet}/{character}"),
            alphabet,
            role,
            images,
        });
    }
    Ok(())
}

fn discover(path: &Path) -> Result<Found, DataError> {
    let meta = fs::metadata(path).map_err(|e| DataError::io(path.display(), e))?;
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut found = Found {
        characters: Vec::new(),
        ignored: 0,
    };
    if meta.is_file() {
        scan_zip(path, role_of(&name), &mut found)?;
    } else {
        let mut any = false;
        for stem in SOURCES {
            let dir = path.join(stem);
            let zip = path.join(format!("{stem}.zip"));
            if dir.is_dir() {
                scan_folder(&dir, role_of(stem), &mut found)?;
                any = true;
            } else if zip.is_file() {
                scan_zip(&zip, role_of(stem), &mut found)?;
                any = true;
            }
        }
        if !any {
            scan_folder(path, role_of(&name), &mut found)?;
        }
    }
    let mut seen = HashSet::new();
    found.characters.retain(|c| seen.insert(c.key.clone()));
    if found.characters.is_empty() {
        return Err(DataError::layout(
            path.display(),
            "no Omniglot characters found: expected images_background / images_evaluation folders or zips, \
             a single Omniglot zip, or a folder of <alphabet>/<character>/*.png",
        ));
    }
    Ok(found)
}

/// One class to build: character index, counter-clockwise quarter turns, class name.
type Planned = (usize, usize, String);

fn parse_split_file(
    path: &Path,
    index: &HashMap<&str, usize>,
    root: &Path,
    rotations: bool,
) -> Result<Vec<Planned>, DataError> {
    let shown = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|e| DataError::io(&shown, e))?;
    let mut out = Vec::new();
    let mut lines_seen: HashMap<&str, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| DataError::SplitFile {
            path: shown.clone(),
            line: line_no,
            message,
        };
        let parts: Vec<&str> = line.split('/').collect();
        let turns = match parts.as_slice() {
            [a, c, rot] if !a.is_empty() && !c.is_empty() => match *rot {
                "rot000" => Some(0),
                "rot090" => Some(1),
                "rot180" => Some(2),
                "rot270" => Some(3),
                _ => None,
            },
            _ => None,
        };
        let Some(turns) = turns else {
            return Err(err(format!(
                "malformed line {line:?}: expected alphabet/characterNN/rotDDD with DDD one of 000, 090, 180, 270"
            )));
        };
        if let Some(first) = lines_seen.insert(line, line_no) {
            return Err(err(format!(
                "duplicate line {line:?} (first on line {first})"
            )));
        }
        let key = &line[..line.len() - "/rotDDD".len()];
        let Some(&c) = index.get(key) else {
            return Err(err(format!(
                "character {key:?} not found in the Omniglot data under {}",
                root.display()
            )));
        };
        if rotations || turns == 0 {
            out.push((c, turns, line.to_string()));
        }
    }
    Ok(out)
}

/// Decodes one Omniglot image: inverted (strokes = 1) and resized to `size x size`.
fn load_image(image: &ImageRef, size: usize) -> Result<Vec<f32>, DataError> {
    let owned;
    let bytes = match &image.data {
        Data::Bytes(b) => b.as_slice(),
        Data::File(p) => {
            owned = read_file(p)?;
            owned.as_slice()
        }
    };
    preprocess(bytes, &image.name, size)
}

/// Decodes one Omniglot-style image (black strokes on white): inverted so strokes are 1 and
/// area-resized to `size x size`. Shared with the Lake-runs loader.
pub(crate) fn preprocess(bytes: &[u8], name: &str, size: usize) -> Result<Vec<f32>, DataError> {
    let img = decode(bytes, name)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut luma = img.to_luma32f().into_raw();
    for v in &mut luma {
        *v = 1.0 - *v;
    }
    Ok(resize_area(&luma, 1, w, h, size, size))
}

/// Loads Omniglot from `path` (see the module documentation).
pub(crate) fn load(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(ImageSpec, [ClassSet; 3]), DataError> {
    let found = discover(path)?;
    if found.ignored > 0 {
        eprintln!(
            "warning: omniglot: ignored {} entries under {} that are not <alphabet>/<character>/*.png",
            found.ignored,
            path.display()
        );
    }
    let chars = &found.characters;
    let all_turns: &[usize] = if opts.rotations { &[0, 1, 2, 3] } else { &[0] };
    let plan: [Vec<Planned>; 3] = match &opts.split_dir {
        Some(dir) => {
            let index: HashMap<&str, usize> = chars
                .iter()
                .enumerate()
                .map(|(i, c)| (c.key.as_str(), i))
                .collect();
            let train_file = match opts.train_split {
                TrainSplit::Train => "train.txt",
                TrainSplit::TrainVal => "trainval.txt",
            };
            let parse = |f: &str| parse_split_file(&dir.join(f), &index, path, opts.rotations);
            [parse(train_file)?, parse("val.txt")?, parse("test.txt")?]
        }
        None => {
            let has_eval = chars.iter().any(|c| c.role == Role::Evaluation);
            let mut split_of: HashMap<(Role, &str), usize> = HashMap::new();
            for role in [Role::Background, Role::Evaluation] {
                let mut alphabets: Vec<&str> = chars
                    .iter()
                    .filter(|c| c.role == role)
                    .map(|c| c.alphabet.as_str())
                    .collect();
                alphabets.sort_unstable();
                alphabets.dedup();
                let assigned = match (role, has_eval) {
                    (Role::Evaluation, _) => vec![2; alphabets.len()],
                    (Role::Background, true) => {
                        assign_splits(alphabets.len(), 0.15, 0.0, opts.seed, 4 << 32)
                    }
                    (Role::Background, false) => {
                        assign_splits(alphabets.len(), 0.1, 0.2, opts.seed, 4 << 32)
                    }
                };
                for (a, s) in alphabets.into_iter().zip(assigned) {
                    split_of.insert((role, a), s);
                }
            }
            let mut plan: [Vec<Planned>; 3] = Default::default();
            for (i, c) in chars.iter().enumerate() {
                let split = split_of
                    .get(&(c.role, c.alphabet.as_str()))
                    .copied()
                    .unwrap_or(0);
                for &t in all_turns {
                    let name = if opts.rotations {
                        format!("{}/rot{:03}", c.key, t * 90)
                    } else {
                        c.key.clone()
                    };
                    plan[split].push((i, t, name));
                }
            }
            for p in &mut plan {
                p.sort_by(|a, b| a.2.cmp(&b.2));
            }
            plan
        }
    };

    // Decode every character some class needs, once, in parallel.
    let size = opts.image_size;
    let mut needed: Vec<usize> = plan.iter().flatten().map(|p| p.0).collect();
    needed.sort_unstable();
    needed.dedup();
    let decoded: Vec<Vec<Result<Vec<f32>, DataError>>> = needed
        .par_iter()
        .map(|&c| {
            chars[c]
                .images
                .par_iter()
                .map(|img| load_image(img, size))
                .collect()
        })
        .collect();
    let mut images: HashMap<usize, Vec<Vec<f32>>> = HashMap::new();
    let mut skipped = 0usize;
    let mut first_skip: Option<DataError> = None;
    for (&c, results) in needed.iter().zip(decoded) {
        let mut ok = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(v) => ok.push(v),
                Err(e) if opts.skip_bad_images => {
                    skipped += 1;
                    first_skip.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        images.insert(c, ok);
    }

    let spec = ImageSpec {
        channels: 1,
        height: size,
        width: size,
    };
    let mut sets = [
        ClassSet::empty(spec),
        ClassSet::empty(spec),
        ClassSet::empty(spec),
    ];
    let mut empty_classes = 0usize;
    for (set, planned) in sets.iter_mut().zip(&plan) {
        for (c, turns, name) in planned {
            let imgs = images.get(c).map(Vec::as_slice).unwrap_or(&[]);
            if imgs.is_empty() {
                empty_classes += 1;
                continue;
            }
            let flat: Vec<f32> = imgs
                .iter()
                .flat_map(|im| rotate_ccw(im, size, *turns))
                .collect();
            set.push_class(name.clone(), &flat);
        }
    }
    if let Some(first) = first_skip {
        eprintln!(
            "warning: omniglot: skipped {skipped} unreadable images ({empty_classes} classes left without images); first: {first}"
        );
    }
    Ok((spec, sets))
}
