//! The data layer: synthetic generator, Omniglot and folder loaders, image limits, samplers.
//!
//! Pure CPU. The Omniglot tests use the fixture in tests/fixtures/omniglot (27 real images);
//! the folder tests build their images at test time in a temporary directory. The `#[ignore]`d
//! tests at the end write the synthetic grid PNG and print timings / a difficulty proxy.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fewshot::data::decode::{resize_area, rotate_ccw};
use fewshot::data::synthetic::{self, SyntheticConfig};
use fewshot::data::{
    load, load_image_file, load_support_folder, ClassSet, DataError, Dataset, DatasetSource,
    EpisodeSampler, ImageSpec, LoadOptions, PairSampler, SamplerState, TrainSplit,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/omniglot");
/// The real small Omniglot zips, beside the checkout (present here and in CI, not on users' machines).
const REAL_SMALL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/datasets/omniglot-small"
);

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURE).join(rel)
}

/// A fresh, empty temporary directory unique to this test and process.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fewshot-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn omniglot(path: impl Into<PathBuf>, opts: &LoadOptions) -> Result<Dataset, DataError> {
    load(&DatasetSource::Omniglot(path.into()), opts)
}

fn names(set: &ClassSet) -> Vec<&str> {
    set.classes.iter().map(|c| c.name.as_str()).collect()
}

fn all_splits(d: &Dataset) -> [&ClassSet; 3] {
    [&d.train, &d.val, &d.test]
}

fn assert_consistent(set: &ClassSet) {
    let mut next = 0;
    for c in &set.classes {
        assert_eq!(
            c.start, next,
            "class {} does not follow the previous one",
            c.name
        );
        assert!(c.count > 0, "class {} is empty", c.name);
        next += c.count;
    }
    assert_eq!(next, set.num_images());
    assert_eq!(set.images.len(), next * set.spec.item_len());
    for (i, v) in set.images.iter().enumerate() {
        assert!((0.0..=1.0).contains(v), "value {v} at {i} outside [0, 1]");
    }
}

// ---------------------------------------------------------------- synthetic

#[test]
fn synthetic_same_seed_same_bytes_different_seed_differs() {
    let opts = |seed| LoadOptions {
        seed,
        ..Default::default()
    };
    let a = load(&DatasetSource::Synthetic, &opts(7)).unwrap();
    // Generated on a single thread: the result must not depend on rayon's scheduling.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = pool.install(|| load(&DatasetSource::Synthetic, &opts(7)).unwrap());
    assert_eq!(a, b, "same seed must give the same dataset");
    let bits = |d: &Dataset| {
        all_splits(d)
            .iter()
            .flat_map(|s| s.images.iter().map(|v| v.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&a), bits(&b));
    let c = load(&DatasetSource::Synthetic, &opts(8)).unwrap();
    assert_eq!(
        a.train.images.len() + a.val.images.len() + a.test.images.len(),
        c.train.images.len() + c.val.images.len() + c.test.images.len()
    );
    let differing = a
        .test
        .images
        .iter()
        .zip(&c.test.images)
        .filter(|(x, y)| x != y)
        .count();
    assert!(
        differing > a.test.images.len() / 10,
        "seed 8 should differ from seed 7 ({differing} values differ)"
    );
}

#[test]
fn synthetic_splits_are_disjoint_and_values_in_range() {
    let d = load(&DatasetSource::Synthetic, &LoadOptions::default()).unwrap();
    assert_eq!(d.name, "synthetic");
    assert_eq!(
        d.spec,
        ImageSpec {
            channels: 1,
            height: 28,
            width: 28
        }
    );
    let counts: Vec<usize> = all_splits(&d).iter().map(|s| s.num_classes()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 1600);
    // 40 alphabets split 60/10/30 % by alphabet: 24 / 4 / 12 alphabets of 40 characters.
    assert_eq!(counts, vec![960, 160, 480]);
    let mut seen_names = HashSet::new();
    let mut alphabets: Vec<HashSet<&str>> = Vec::new();
    for set in all_splits(&d) {
        assert_eq!(set.spec, d.spec);
        assert_consistent(set);
        assert!(set.classes.iter().all(|c| c.count == 20));
        for c in &set.classes {
            assert!(
                seen_names.insert(c.name.clone()),
                "class {} in two splits",
                c.name
            );
        }
        alphabets.push(
            set.classes
                .iter()
                .map(|c| c.name.split('/').next().unwrap())
                .collect(),
        );
    }
    for i in 0..3 {
        for j in i + 1..3 {
            assert!(
                alphabets[i].is_disjoint(&alphabets[j]),
                "splits {i} and {j} share an alphabet"
            );
        }
    }
    // Every drawing has ink (strokes up to ~1) on a mostly empty background, and no two drawings
    // of a class are identical.
    let set = &d.test;
    for i in 0..set.num_images() {
        let img = set.image(i);
        let ink = img.iter().filter(|&&v| v > 0.5).count();
        let max = img.iter().cloned().fold(0.0, f32::max);
        // (Thin strokes cover at most ~0.8 of a pixel; measured minimum of the maxima: 0.74.)
        assert!(
            max > 0.6 && (4..400).contains(&ink),
            "image {i}: max {max}, {ink} inked pixels"
        );
    }
    for c in &set.classes {
        let a = set.image(c.start);
        assert!(
            c.range().skip(1).all(|i| set.image(i) != a),
            "class {} repeats a drawing",
            c.name
        );
    }
}

#[test]
fn synthetic_renders_at_other_sizes() {
    let cfg = SyntheticConfig {
        image_size: 40,
        alphabets: 5,
        characters_per_alphabet: 3,
        drawings: 4,
        ..Default::default()
    };
    let d = synthetic::generate(&cfg);
    assert_eq!(
        d.spec,
        ImageSpec {
            channels: 1,
            height: 40,
            width: 40
        }
    );
    // 5 alphabets at 10 / 30 %: val round(0.5) = 1, test round(1.5) = 2, train 2.
    let counts = [
        d.train.num_classes(),
        d.val.num_classes(),
        d.test.num_classes(),
    ];
    assert_eq!(counts, [6, 3, 6]);
    for set in all_splits(&d) {
        assert_consistent(set);
    }
}

// ---------------------------------------------------------------- omniglot

#[test]
fn omniglot_directory_and_zip_forms_load_the_same_images() {
    let opts = LoadOptions::default();
    let dir = omniglot(fixture("dir"), &opts).unwrap();
    let zip = omniglot(fixture("zip"), &opts).unwrap();
    assert_eq!(
        dir.spec,
        ImageSpec {
            channels: 1,
            height: 28,
            width: 28
        }
    );
    for (a, b) in all_splits(&dir).into_iter().zip(all_splits(&zip)) {
        assert_eq!(a.classes, b.classes);
        assert_eq!(a.images, b.images);
        assert_consistent(a);
    }
    // Evaluation characters are the test set; the two background alphabets go one to train
    // and one to val.
    assert_eq!(dir.test.num_classes(), 3 * 4);
    assert!(names(&dir.test).iter().all(|n| n.starts_with("Korean/")));
    let train_alpha: HashSet<_> = names(&dir.train)
        .iter()
        .map(|n| n.split('/').next().unwrap())
        .collect();
    let val_alpha: HashSet<_> = names(&dir.val)
        .iter()
        .map(|n| n.split('/').next().unwrap())
        .collect();
    assert_eq!(train_alpha.len(), 1);
    assert_eq!(val_alpha.len(), 1);
    assert!(train_alpha.is_disjoint(&val_alpha));
    assert_eq!(dir.train.num_classes() + dir.val.num_classes(), 2 * 3 * 4);
    assert!(dir.train.classes.iter().all(|c| c.count == 3));
    // A single zip or a single split folder also works (background only: one alphabet to
    // train and one to test when there are two), and gives the same images.
    let single_zip = omniglot(fixture("zip/images_background.zip"), &opts).unwrap();
    let single_dir = omniglot(fixture("dir/images_background"), &opts).unwrap();
    assert_eq!(
        single_zip,
        Dataset {
            name: single_zip.name.clone(),
            ..single_dir.clone()
        }
    );
    assert_eq!(single_dir.train.num_classes(), 12);
    assert_eq!(single_dir.val.num_classes(), 0);
    assert_eq!(single_dir.test.num_classes(), 12);
}

#[test]
fn omniglot_images_are_inverted_and_antialiased() {
    let d = omniglot(
        fixture("dir"),
        &LoadOptions {
            rotations: false,
            ..Default::default()
        },
    )
    .unwrap();
    let set = &d.test;
    assert_eq!(
        names(set),
        [
            "Korean/character01",
            "Korean/character02",
            "Korean/character03"
        ]
    );
    for i in 0..set.num_images() {
        let img = set.image(i);
        let mean = img.iter().sum::<f32>() / img.len() as f32;
        // Strokes are ~5-15 % of an Omniglot image; the background (white in the file) is 0.
        assert!(
            mean > 0.02 && mean < 0.3,
            "image {i}: mean {mean} (not inverted?)"
        );
        assert_eq!(img[0], 0.0, "image {i}: corner is not background");
        let partial = img.iter().filter(|&&v| v > 0.05 && v < 0.95).count();
        assert!(
            partial > 10,
            "image {i}: only {partial} grey pixels (not antialiased?)"
        );
    }
    // Same image through the public decoder: the inverted 105x105 file, area-averaged.
    let file = fixture("dir/images_evaluation/Korean/character01/0643_01.png");
    let raw = image::open(&file).unwrap().to_luma32f();
    let inverted: Vec<f32> = raw.as_raw().iter().map(|v| 1.0 - v).collect();
    let want = resize_area(&inverted, 1, 105, 105, 28, 28);
    assert_eq!(set.image(0), want.as_slice());
}

#[test]
fn omniglot_rotations_make_four_classes_of_rotated_images() {
    let with = omniglot(fixture("dir"), &LoadOptions::default()).unwrap();
    let without = omniglot(
        fixture("dir"),
        &LoadOptions {
            rotations: false,
            ..Default::default()
        },
    )
    .unwrap();
    for (a, b) in all_splits(&with).into_iter().zip(all_splits(&without)) {
        assert_eq!(a.num_classes(), 4 * b.num_classes());
        assert_eq!(a.num_images(), 4 * b.num_images());
    }
    let set = &with.test;
    assert_eq!(
        names(set)[..4],
        [
            "Korean/character01/rot000",
            "Korean/character01/rot090",
            "Korean/character01/rot180",
            "Korean/character01/rot270"
        ]
    );
    assert_eq!(set.image(0), without.test.image(0));
    // rot090 is the counter-clockwise quarter turn of rot000 (image's rotate270 = 270
    // degrees clockwise), image by image.
    for turns in 1..4 {
        for k in 0..3 {
            let original =
                image::ImageBuffer::<image::Luma<f32>, _>::from_raw(28, 28, set.image(k).to_vec())
                    .unwrap();
            let mut want = original.clone();
            for _ in 0..turns {
                want = image::imageops::rotate270(&want);
            }
            let got = set.image(set.classes[turns].start + k);
            assert_eq!(
                got,
                want.as_raw().as_slice(),
                "rotation {} of image {k}",
                turns * 90
            );
            assert_eq!(got, rotate_ccw(set.image(k), 28, turns).as_slice());
        }
    }
}

#[test]
fn omniglot_split_files_select_the_listed_classes() {
    let opts = LoadOptions {
        split_dir: Some(fixture("splits")),
        ..Default::default()
    };
    let d = omniglot(fixture("zip"), &opts).unwrap();
    assert_eq!(
        names(&d.train),
        [
            "Greek/character01/rot000",
            "Greek/character01/rot090",
            "Greek/character02/rot000",
            "Latin/character01/rot180"
        ]
    );
    assert_eq!(
        names(&d.val),
        ["Latin/character02/rot000", "Latin/character03/rot000"]
    );
    assert_eq!(
        names(&d.test),
        ["Korean/character01/rot000", "Korean/character02/rot270"]
    );
    // The rot090 class holds the rotated images of the rot000 class.
    for k in 0..3 {
        assert_eq!(
            d.train.image(3 + k),
            rotate_ccw(d.train.image(k), 28, 1).as_slice()
        );
    }
    let tv = omniglot(
        fixture("dir"),
        &LoadOptions {
            train_split: TrainSplit::TrainVal,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(tv.train.num_classes(), 6);
    assert_eq!(&names(&tv.train)[4..], names(&d.val));
    assert_eq!(tv.test, d.test);
    // Without rotations only the rot000 lines are kept.
    let plain = omniglot(
        fixture("dir"),
        &LoadOptions {
            rotations: false,
            ..opts
        },
    )
    .unwrap();
    assert_eq!(
        names(&plain.train),
        ["Greek/character01/rot000", "Greek/character02/rot000"]
    );
    assert_eq!(names(&plain.test), ["Korean/character01/rot000"]);
}

#[test]
fn omniglot_bad_split_files_are_errors_naming_file_and_line() {
    let dir = temp_dir("splits");
    for f in ["train.txt", "val.txt", "test.txt"] {
        std::fs::copy(fixture("splits").join(f), dir.join(f)).unwrap();
    }
    let opts = LoadOptions {
        split_dir: Some(dir.clone()),
        ..Default::default()
    };
    let cases = [
        (
            "Greek/character01/rot000\n\nGreek/character02/rot45\n",
            3,
            "malformed",
        ),
        (
            "Greek/character01/rot000\nGreek/character02\n",
            2,
            "malformed",
        ),
        ("Greek/character01/rot000/extra\n", 1, "malformed"),
        (
            "Greek/character01/rot000\nGreek/character09/rot000\n",
            2,
            "\"Greek/character09\" not found",
        ),
        (
            "Greek/character01/rot000\nGreek/character01/rot000\n",
            2,
            "duplicate",
        ),
    ];
    for (text, line, what) in cases {
        std::fs::write(dir.join("val.txt"), text).unwrap();
        let err = omniglot(fixture("dir"), &opts).unwrap_err().to_string();
        let at = format!("{}:{line}:", dir.join("val.txt").display());
        assert!(
            err.contains(&at) && err.contains(what),
            "{text:?}: error {err:?} should name {at} and say {what}"
        );
    }
    std::fs::remove_file(dir.join("val.txt")).unwrap();
    let err = omniglot(fixture("dir"), &opts).unwrap_err().to_string();
    assert!(err.contains("val.txt"), "missing split file: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn omniglot_unsafe_zip_entries_are_rejected() {
    let dir = temp_dir("unsafe-zip");
    let png = std::fs::read(fixture(
        "dir/images_background/Greek/character01/0394_01.png",
    ))
    .unwrap();
    for evil in [
        "images_background/../../evil/character01/x.png",
        "/abs/character01/x.png",
    ] {
        let path = dir.join("images_background.zip");
        let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("images_background/Greek/character01/ok.png", options)
            .unwrap();
        w.write_all(&png).unwrap();
        w.start_file(evil, options).unwrap();
        w.write_all(&png).unwrap();
        w.finish().unwrap();
        let err = omniglot(&dir, &LoadOptions::default()).unwrap_err();
        assert!(
            matches!(err, DataError::UnsafeZipEntry { .. }),
            "{evil}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("images_background.zip") && msg.contains(evil),
            "{msg}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An Omniglot-layout folder with one corrupt PNG among good ones.
fn omniglot_with_corrupt_image(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    for c in 1..=3 {
        let class = dir.join(format!("images_background/Greek/character0{c}"));
        std::fs::create_dir_all(&class).unwrap();
        for k in 1..=3 {
            let src = fixture(&format!(
                "dir/images_background/Greek/character0{c}/039{}_0{k}.png",
                3 + c
            ));
            std::fs::copy(src, class.join(format!("{k}.png"))).unwrap();
        }
    }
    let bad = dir.join("images_background/Greek/character02/2.png");
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes.truncate(bytes.len() / 2);
    bytes[40] ^= 0xff;
    std::fs::write(&bad, bytes).unwrap();
    (dir, bad)
}

#[test]
fn corrupt_image_error_names_the_file_and_can_be_skipped() {
    let (dir, bad) = omniglot_with_corrupt_image("corrupt");
    let err = omniglot(&dir, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::BadImage { .. }), "{err}");
    assert!(
        err.to_string().contains(&bad.display().to_string()),
        "{err}"
    );
    let d = omniglot(
        &dir,
        &LoadOptions {
            skip_bad_images: true,
            rotations: false,
            ..Default::default()
        },
    )
    .unwrap();
    let total: usize = all_splits(&d).iter().map(|s| s.num_images()).sum();
    assert_eq!(total, 8, "one of the 9 images skipped");
    let counts: Vec<usize> = all_splits(&d)
        .iter()
        .flat_map(|s| s.classes.iter().map(|c| c.count))
        .collect();
    assert_eq!(counts, [3, 2, 3]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `side x side` pixels (8-bit grey), with no image data.
fn png_header_only(side: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

#[test]
fn oversized_png_header_is_refused_quickly() {
    let dir = temp_dir("oversized");
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    image::GrayImage::new(4, 4)
        .save(dir.join("a/ok.png"))
        .unwrap();
    image::GrayImage::new(4, 4)
        .save(dir.join("b/ok.png"))
        .unwrap();
    let huge = dir.join("b/huge.png");
    std::fs::write(&huge, png_header_only(100_000)).unwrap();
    let start = Instant::now();
    let err = load(&DatasetSource::Folder(dir.clone()), &LoadOptions::default()).unwrap_err();
    let took = start.elapsed();
    let msg = err.to_string();
    println!("oversized header refused in {took:?}: {msg}");
    assert!(msg.contains(&huge.display().to_string()), "{msg}");
    assert!(msg.to_lowercase().contains("limit"), "{msg}");
    assert!(took.as_secs_f64() < 1.0, "took {took:?}");
    // A header within the limits (but without data) is an ordinary decode error.
    std::fs::write(&huge, png_header_only(64)).unwrap();
    let err = load(&DatasetSource::Folder(dir.clone()), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::BadImage { .. })
            && !err.to_string().to_lowercase().contains("limit"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn real_small_zips_load_if_present() {
    let path = Path::new(REAL_SMALL);
    if !path.join("images_background_small1.zip").is_file() {
        eprintln!("SKIPPED: {REAL_SMALL} not present");
        return;
    }
    let start = Instant::now();
    let d = omniglot(path, &LoadOptions::default()).unwrap();
    println!(
        "loaded the two small background zips in {:?}",
        start.elapsed()
    );
    // 136 + 156 characters, of which Greek (24) and Latin (26) are in both zips.
    let total: usize = all_splits(&d).iter().map(|s| s.num_classes()).sum();
    assert_eq!(total, 4 * (136 + 156 - 24 - 26));
    let mut seen = HashSet::new();
    for set in all_splits(&d) {
        assert!(set.num_classes() > 0);
        assert_consistent(set);
        assert!(set
            .classes
            .iter()
            .all(|c| c.count == 20 && seen.insert(c.name.clone())));
    }
}

// ---------------------------------------------------------------- folder

fn write_folder_fixture(dir: &Path) {
    // Five classes of 4x6 grey PNGs of a constant shade, one with a colour JPEG, plus
    // files that are not images.
    for (c, class) in ["ant", "bee", "cat", "dog", "eel"].iter().enumerate() {
        let d = dir.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for k in 0..3 {
            let shade = (40 * c + 10 * k) as u8;
            image::GrayImage::from_pixel(6, 4, image::Luma([shade]))
                .save(d.join(format!("{k}.png")))
                .unwrap();
        }
    }
    image::RgbImage::from_pixel(20, 30, image::Rgb([200, 100, 0]))
        .save(dir.join("cat/colour.JPG"))
        .unwrap();
    std::fs::write(dir.join("ant/notes.txt"), "not an image").unwrap();
    std::fs::write(dir.join("README"), "not a class").unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
}

#[test]
fn folder_loader_reads_classes_channels_and_splits() {
    let dir = temp_dir("folder");
    write_folder_fixture(&dir);
    let opts = LoadOptions {
        image_size: 8,
        seed: 3,
        ..Default::default()
    };
    let d = load(&DatasetSource::Folder(dir.clone()), &opts).unwrap();
    assert_eq!(
        d.spec,
        ImageSpec {
            channels: 3,
            height: 8,
            width: 8
        }
    );
    // Five classes (the empty folder is left out): 70/10/20 % -> 3 / 1 / 1.
    assert_eq!(
        [
            d.train.num_classes(),
            d.val.num_classes(),
            d.test.num_classes()
        ],
        [3, 1, 1]
    );
    let mut all: Vec<&str> = all_splits(&d).iter().flat_map(|s| names(s)).collect();
    all.sort();
    assert_eq!(all, ["ant", "bee", "cat", "dog", "eel"]);
    for set in all_splits(&d) {
        assert_consistent(set);
        for c in &set.classes {
            let ci = ["ant", "bee", "cat", "dog", "eel"]
                .iter()
                .position(|n| *n == c.name)
                .unwrap();
            assert_eq!(c.count, if c.name == "cat" { 4 } else { 3 });
            for k in 0..3 {
                // Grey images are repeated over the three channels; shades survive resizing.
                let want = (40 * ci + 10 * k) as f32 / 255.0;
                let img = set.image(c.start + k);
                assert!(
                    img.iter().all(|v| (v - want).abs() < 1e-5),
                    "{} image {k}",
                    c.name
                );
            }
            if c.name == "cat" {
                let img = set.image(c.start + 3);
                for (ch, want) in [200.0f32, 100.0, 0.0].iter().enumerate() {
                    let plane = &img[ch * 64..(ch + 1) * 64];
                    assert!(
                        plane.iter().all(|v| (v * 255.0 - want).abs() < 3.0),
                        "channel {ch}: {plane:?}"
                    );
                }
            }
        }
    }
    // Same seed same split; the seed moves classes between splits.
    assert_eq!(load(&DatasetSource::Folder(dir.clone()), &opts).unwrap(), d);
    let moved = (0..20u64).any(|seed| {
        let other = load(
            &DatasetSource::Folder(dir.clone()),
            &LoadOptions {
                seed,
                ..opts.clone()
            },
        )
        .unwrap();
        names(&other.test) != names(&d.test)
    });
    assert!(moved, "the split should depend on the seed");

    // Grey only -> one channel.
    std::fs::remove_file(dir.join("cat/colour.JPG")).unwrap();
    let grey = load(&DatasetSource::Folder(dir.clone()), &opts).unwrap();
    assert_eq!(grey.spec.channels, 1);

    // With train/ val/ test/ folders, they are the splits.
    let split_dir = temp_dir("folder-splits");
    for (split, classes) in [
        ("train", &["ant", "bee"][..]),
        ("val", &["cat"][..]),
        ("test", &["dog", "eel"][..]),
    ] {
        for class in classes {
            let d = split_dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            image::GrayImage::from_pixel(8, 8, image::Luma([9]))
                .save(d.join("x.png"))
                .unwrap();
        }
    }
    let s = load(&DatasetSource::Folder(split_dir.clone()), &opts).unwrap();
    assert_eq!(
        (names(&s.train), names(&s.val), names(&s.test)),
        (vec!["ant", "bee"], vec!["cat"], vec!["dog", "eel"])
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&split_dir);
}

#[test]
fn support_folder_and_single_images_for_prediction() {
    let dir = temp_dir("support");
    write_folder_fixture(&dir);
    let set = load_support_folder(&dir, 8, 1).unwrap();
    assert_eq!(names(&set), ["ant", "bee", "cat", "dog", "eel"]);
    assert_eq!(
        set.spec,
        ImageSpec {
            channels: 1,
            height: 8,
            width: 8
        }
    );
    assert_consistent(&set);
    let img = load_image_file(&dir.join("bee/2.png"), 8, 3).unwrap();
    assert_eq!(img.len(), 3 * 64);
    assert!(img.iter().all(|v| (v - 60.0 / 255.0).abs() < 1e-5));
    let err = load_image_file(&dir.join("ant/notes.txt"), 8, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn area_resize_keeps_means_and_sharp_edges() {
    // A 4x4 checkerboard of 2x2 blocks halves into the block values exactly; a 105 -> 28
    // shrink keeps the image mean.
    let src: Vec<f32> = (0..16)
        .map(|i| (((i % 4) / 2 + (i / 8)) % 2) as f32)
        .collect();
    assert_eq!(resize_area(&src, 1, 4, 4, 2, 2), [0.0, 1.0, 1.0, 0.0]);
    let big: Vec<f32> = (0..105 * 105)
        .map(|i| ((i * 7919) % 13) as f32 / 12.0)
        .collect();
    let small = resize_area(&big, 1, 105, 105, 28, 28);
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    assert!(
        (mean(&big) - mean(&small)).abs() < 1e-5,
        "{} vs {}",
        mean(&big),
        mean(&small)
    );
}

// ---------------------------------------------------------------- sources

#[test]
fn dataset_source_parses_and_rejects() {
    assert_eq!(
        "synthetic".parse::<DatasetSource>().unwrap(),
        DatasetSource::Synthetic
    );
    assert_eq!(
        "omniglot:/data/o".parse::<DatasetSource>().unwrap(),
        DatasetSource::Omniglot("/data/o".into())
    );
    assert_eq!(
        "folder:imgs".parse::<DatasetSource>().unwrap(),
        DatasetSource::Folder("imgs".into())
    );
    assert_eq!(
        "omniglot:C:/x".parse::<DatasetSource>().unwrap(),
        DatasetSource::Omniglot("C:/x".into())
    );
    for bad in [
        "",
        "mnist",
        "omniglot",
        "omniglot:",
        "cifar:/x",
        "synthetic:3",
    ] {
        let err = bad.parse::<DatasetSource>().unwrap_err().to_string();
        assert!(
            err.contains("synthetic")
                && err.contains("omniglot:PATH")
                && err.contains(&format!("{bad:?}")),
            "{err}"
        );
    }
    for s in ["synthetic", "omniglot:/a/b", "folder:c"] {
        assert_eq!(s.parse::<DatasetSource>().unwrap().to_string(), s);
    }
    let err = load(
        &DatasetSource::Omniglot("/nonexistent/omniglot".into()),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/omniglot"), "{err}");
    let err = load(
        &DatasetSource::Synthetic,
        &LoadOptions {
            image_size: 0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("image_size"), "{err}");
}

// ---------------------------------------------------------------- samplers

/// A class set whose image `i` is the single float `i` and whose class sizes are given.
fn toy_set(sizes: &[usize]) -> ClassSet {
    let spec = ImageSpec {
        channels: 1,
        height: 1,
        width: 1,
    };
    let mut set = ClassSet::empty(spec);
    let mut start = 0;
    for (k, &n) in sizes.iter().enumerate() {
        set.classes.push(fewshot::data::ClassInfo {
            name: format!("c{k}"),
            start,
            count: n,
        });
        set.images.extend((start..start + n).map(|i| i as f32));
        start += n;
    }
    set
}

#[test]
fn episode_sampler_draws_well_formed_episodes() {
    // Classes 1 and 4 have fewer than shot + query = 5 images and are left out.
    let sizes = [6, 3, 5, 20, 4, 7, 9, 5];
    let set = toy_set(&sizes);
    let (way, shot, query) = (4, 2, 3);
    let mut s = EpisodeSampler::new(&set, way, shot, query, 11).unwrap();
    assert_eq!(s.skipped_classes(), 2);
    assert_eq!(s.usable_classes(), 6);
    let mut used = HashSet::new();
    for _ in 0..200 {
        let e = s.next();
        assert_eq!(
            (e.classes.len(), e.support.len(), e.query.len()),
            (way, way * shot, way * query)
        );
        assert_eq!(
            e.classes.iter().collect::<HashSet<_>>().len(),
            way,
            "classes not distinct: {:?}",
            e.classes
        );
        for (k, &c) in e.classes.iter().enumerate() {
            assert!(
                sizes[c] >= shot + query,
                "class {c} has only {} images",
                sizes[c]
            );
            used.insert(c);
            // Implied labels: support i -> i / shot, query i -> i / query.
            let imgs: Vec<u32> = e.support[k * shot..(k + 1) * shot]
                .iter()
                .chain(&e.query[k * query..(k + 1) * query])
                .copied()
                .collect();
            assert_eq!(
                imgs.iter().collect::<HashSet<_>>().len(),
                shot + query,
                "images repeat: {imgs:?}"
            );
            for &i in &imgs {
                assert_eq!(
                    set.class_of(i as usize),
                    Some(c),
                    "image {i} is not in class {c}"
                );
            }
        }
    }
    assert_eq!(
        used.len(),
        6,
        "every usable class should appear in 200 episodes"
    );
}

#[test]
fn episode_sampler_is_seeded_and_resumes_exactly() {
    let set = toy_set(&[8; 30]);
    let episodes = |seed| {
        let mut s = EpisodeSampler::new(&set, 5, 1, 3, seed).unwrap();
        (0..20).map(|_| s.next()).collect::<Vec<_>>()
    };
    assert_eq!(episodes(1), episodes(1));
    assert_ne!(episodes(1), episodes(2));

    let mut a = EpisodeSampler::new(&set, 5, 1, 3, 1).unwrap();
    for _ in 0..7 {
        a.next();
    }
    let state = a.state();
    // The state survives JSON (as a checkpoint stores it), by string and by value.
    let json = serde_json::to_string(&state).unwrap();
    let back: SamplerState = serde_json::from_str(&json).unwrap();
    let back2: SamplerState = serde_json::from_value(serde_json::to_value(state).unwrap()).unwrap();
    assert_eq!((back, back2), (state, state));
    let rest: Vec<_> = (0..10).map(|_| a.next()).collect();
    let mut b = EpisodeSampler::new(&set, 5, 1, 3, 999).unwrap();
    b.next();
    b.restore(&back);
    let resumed: Vec<_> = (0..10).map(|_| b.next()).collect();
    assert_eq!(rest, resumed);
    assert_eq!(episodes(1)[7..17], rest[..]);
}

#[test]
fn episode_sampler_errors() {
    let set = toy_set(&[10, 10, 2, 3, 10]);
    let err = EpisodeSampler::new(&set, 5, 1, 5, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("5-way") && err.contains("only 3 of the 5 classes") && err.contains('6'),
        "{err}"
    );
    for (w, s, q) in [(0, 1, 1), (2, 0, 1), (2, 1, 0)] {
        let err = EpisodeSampler::new(&set, w, s, q, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1"), "{err}");
    }
    let ok = EpisodeSampler::new(&set, 3, 2, 8, 0).unwrap();
    assert_eq!(ok.skipped_classes(), 2);
    assert!(EpisodeSampler::new(&ClassSet::empty(set.spec), 1, 1, 1, 0).is_err());
}

#[test]
fn pair_sampler_draws_same_then_different_pairs() {
    let set = toy_set(&[1, 5, 7, 2, 9]);
    let mut s = PairSampler::new(&set, 9, 4).unwrap();
    assert_eq!(s.skipped_classes(), 1);
    for _ in 0..100 {
        let b = s.next();
        assert_eq!((b.left.len(), b.right.len(), b.same.len()), (9, 9, 9));
        for i in 0..9 {
            let (l, r) = (b.left[i] as usize, b.right[i] as usize);
            let (cl, cr) = (set.class_of(l).unwrap(), set.class_of(r).unwrap());
            if i < 4 {
                assert_eq!(b.same[i], 1.0);
                assert_eq!(cl, cr);
                assert_ne!(l, r, "a same pair must use two distinct images");
            } else {
                assert_eq!(b.same[i], 0.0);
                assert_ne!(cl, cr);
            }
        }
    }
    let batches = |seed| {
        let mut s = PairSampler::new(&set, 9, seed).unwrap();
        (0..10).map(|_| s.next()).collect::<Vec<_>>()
    };
    assert_eq!(batches(4), batches(4));
    assert_ne!(batches(4), batches(5));
    let mut a = PairSampler::new(&set, 9, 4).unwrap();
    a.next();
    let st = a.state();
    let rest: Vec<_> = (0..5).map(|_| a.next()).collect();
    let mut b = PairSampler::new(&set, 9, 0).unwrap();
    b.restore(&st);
    assert_eq!(rest, (0..5).map(|_| b.next()).collect::<Vec<_>>());

    assert!(PairSampler::new(&set, 0, 0).is_err());
    let err = PairSampler::new(&toy_set(&[1, 1, 1]), 4, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 2 images"), "{err}");
    let err = PairSampler::new(&toy_set(&[5]), 4, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 2 classes"), "{err}");
    // One pair is a different-class pair; only same-class pairs need a class of two.
    assert!(PairSampler::new(&toy_set(&[1, 1]), 1, 0).is_ok());
}

#[test]
fn samplers_on_a_loaded_dataset() {
    let d = omniglot(fixture("dir"), &LoadOptions::default()).unwrap();
    let mut s = EpisodeSampler::new(&d.test, 5, 1, 2, 0).unwrap();
    let e = s.next();
    for (i, &img) in e.support.iter().enumerate() {
        assert_eq!(d.test.class_of(img as usize), Some(e.classes[i]));
    }
    // Three images per class: 2-shot 2-query leaves every class out.
    let err = EpisodeSampler::new(&d.test, 5, 2, 2, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("only 0 of the 12 classes"), "{err}");
}

// ---------------------------------------------------------------- reports (ignored)

/// Writes /tmp/synthetic_grid.png (rows: 12 classes from 3 alphabets, columns: 10 drawings)
/// and, when the real small zips are present, /tmp/omniglot_grid.png likewise.
#[test]
#[ignore]
fn write_synthetic_grid_png() {
    fn grid(set: &ClassSet, classes: &[usize], drawings: usize, path: &str) {
        let (s, z, pad) = (set.spec.width as u32, 3u32, 2u32);
        let cell = s * z + pad;
        let mut img = image::GrayImage::from_pixel(
            cell * drawings as u32 + pad,
            cell * classes.len() as u32 + pad,
            image::Luma([128]),
        );
        for (row, &c) in classes.iter().enumerate() {
            for col in 0..drawings.min(set.classes[c].count) {
                let px = set.image(set.classes[c].start + col);
                for y in 0..s * z {
                    for x in 0..s * z {
                        let v = px[((y / z) * s + x / z) as usize];
                        // Ink dark on white, like paper.
                        let g = (255.0 * (1.0 - v)).round() as u8;
                        img.put_pixel(
                            pad + col as u32 * cell + x,
                            pad + row as u32 * cell + y,
                            image::Luma([g]),
                        );
                    }
                }
            }
        }
        img.save(path).unwrap();
        println!("wrote {path}");
    }
    let d = load(&DatasetSource::Synthetic, &LoadOptions::default()).unwrap();
    grid(
        &d.train,
        &[0, 1, 2, 3, 40, 41, 42, 43, 80, 81, 82, 83],
        10,
        "/tmp/synthetic_grid.png",
    );
    if Path::new(REAL_SMALL).is_dir() {
        let o = omniglot(
            REAL_SMALL,
            &LoadOptions {
                rotations: false,
                ..Default::default()
            },
        )
        .unwrap();
        grid(
            &o.train,
            &[0, 1, 2, 3, 30, 31, 32, 33, 60, 61, 62, 63],
            10,
            "/tmp/omniglot_grid.png",
        );
    }
}

/// 5-way 1-shot nearest-neighbour accuracy in pixel space (a crude difficulty proxy) on a
/// split, over `n` episodes.
fn pixel_nn_accuracy(set: &ClassSet, way: usize, n: usize) -> f64 {
    let mut s = EpisodeSampler::new(set, way, 1, 5, 123).unwrap();
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
    let mut correct = 0;
    let mut total = 0;
    for _ in 0..n {
        let e = s.next();
        for (qi, &q) in e.query.iter().enumerate() {
            let best = (0..way)
                .min_by(|&a, &b| {
                    let da = dist(set.image(q as usize), set.image(e.support[a] as usize));
                    let db = dist(set.image(q as usize), set.image(e.support[b] as usize));
                    da.total_cmp(&db)
                })
                .unwrap();
            correct += (best == qi / 5) as usize;
            total += 1;
        }
    }
    correct as f64 / total as f64
}

#[test]
#[ignore]
fn report_timings_and_difficulty() {
    let start = Instant::now();
    let d = load(&DatasetSource::Synthetic, &LoadOptions::default()).unwrap();
    println!(
        "synthetic: {} classes, {} images generated in {:?}",
        d.train.num_classes() + d.val.num_classes() + d.test.num_classes(),
        d.train.num_images() + d.val.num_images() + d.test.num_images(),
        start.elapsed()
    );
    let stats = |set: &ClassSet| {
        let (mut lo_max, mut lo_ink, mut hi_ink, mut mean) = (f32::MAX, usize::MAX, 0, 0.0f64);
        for i in 0..set.num_images() {
            let img = set.image(i);
            lo_max = lo_max.min(img.iter().cloned().fold(0.0, f32::max));
            let ink = img.iter().filter(|&&v| v > 0.5).count();
            (lo_ink, hi_ink) = (lo_ink.min(ink), hi_ink.max(ink));
            mean += img.iter().map(|&v| v as f64).sum::<f64>() / img.len() as f64;
        }
        format!(
            "mean value {:.3}, smallest image maximum {lo_max:.3}, pixels > 0.5 per image {lo_ink}..{hi_ink}",
            mean / set.num_images() as f64
        )
    };
    println!("synthetic test: {}", stats(&d.test));
    for way in [5, 20] {
        println!(
            "synthetic test: pixel-space 1-NN {way}-way 1-shot accuracy {:.3}",
            pixel_nn_accuracy(&d.test, way, 400)
        );
    }
    if Path::new(REAL_SMALL).is_dir() {
        let start = Instant::now();
        omniglot(REAL_SMALL, &LoadOptions::default()).unwrap();
        println!("omniglot small zips: loaded in {:?}", start.elapsed());
        let o = omniglot(
            REAL_SMALL,
            &LoadOptions {
                rotations: false,
                ..Default::default()
            },
        )
        .unwrap();
        println!("omniglot small train: {}", stats(&o.train));
        for way in [5, 20] {
            println!(
                "omniglot small (train, no rotations): pixel-space 1-NN {way}-way 1-shot accuracy {:.3}",
                pixel_nn_accuracy(&o.train, way, 400)
            );
        }
    }
}

#[test]
fn folder_images_of_mixed_sizes_are_all_resized() {
    let dir = temp_dir("mixed-sizes");
    for c in 0..10 {
        let cd = dir.join(format!("class{c}"));
        std::fs::create_dir_all(&cd).unwrap();
        for (k, side) in [17u32, 28, 40, 105].into_iter().enumerate() {
            let img = image::GrayImage::from_fn(side, side + k as u32, |x, y| {
                image::Luma([((x + y + c) % 256) as u8])
            });
            img.save(cd.join(format!("{k}.png"))).unwrap();
        }
    }
    let opts = LoadOptions {
        image_size: 28,
        ..LoadOptions::default()
    };
    let d =
        fewshot::data::load(&DatasetSource::Folder(dir.clone()), &opts).expect("mixed sizes load");
    for set in [&d.train, &d.val, &d.test] {
        assert_eq!(
            set.images.len(),
            set.num_images() * 28 * 28,
            "every image resized to 28x28"
        );
        assert!(set.classes.iter().all(|c| c.count == 4));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
