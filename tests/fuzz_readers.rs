//! Property tests of every reader of untrusted files: checkpoints, Omniglot split files, Lake's
//! `class_labels.txt`, Omniglot and Lake zips, and image folders. Whatever the bytes (random,
//! or a valid fixture truncated, bit-flipped or with patched length fields), a reader returns
//! `Ok` or `Err`: it never panics, and a checkpoint's declared sizes are checked before they
//! are allocated. Case counts keep the whole file to a few seconds.
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fewshot::data::lake::load_lake_runs;
use fewshot::data::{load, ClassSet, DatasetSource, LoadOptions, TrainSplit};
use fewshot::model::checkpoint::{Checkpoint, CheckpointMeta, FORMAT_VERSION};
use fewshot::model::{init_params, Conv4Config, Layout};
use proptest::prelude::*;
use proptest::sample::{select, Index};

// ---------------------------------------------------------------------------------------------
// The largest single allocation made by the current thread, to prove that declared sizes are
// validated before anything is allocated for them.

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f`, returning its result and the largest single allocation it made on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|c| c.set(0));
    let r = f();
    (r, LARGEST.with(|c| c.get()))
}

// ---------------------------------------------------------------------------------------------
// Byte-level mutations.

#[derive(Clone, Debug)]
enum Mutation {
    /// Keep only a prefix.
    Truncate(Index),
    /// XOR bytes at some positions.
    Flip(Vec<(Index, u8)>),
    /// Overwrite 4 little-endian bytes at a position with a (often extreme) value.
    PatchU32(Index, u32),
    /// Insert bytes at a position.
    Insert(Index, Vec<u8>),
}

fn extreme_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0xffff),
        Just(0x7fff_ffff),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec((any::<Index>(), 1u8..), 1..8).prop_map(Mutation::Flip),
        (any::<Index>(), extreme_u32()).prop_map(|(i, v)| Mutation::PatchU32(i, v)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
    ]
}

fn mutate(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.is_empty() {
        return out;
    }
    match m {
        Mutation::Truncate(i) => out.truncate(i.index(bytes.len())),
        Mutation::Flip(flips) => {
            for (i, x) in flips {
                let at = i.index(out.len());
                out[at] ^= x;
            }
        }
        Mutation::PatchU32(i, v) => {
            let at = i.index(out.len());
            for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                if let Some(slot) = out.get_mut(at + k) {
                    *slot = b;
                }
            }
        }
        Mutation::Insert(i, v) => {
            let at = i.index(out.len() + 1);
            out.splice(at..at, v.iter().copied());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Checkpoints.

fn valid_checkpoint(koch_head: bool) -> Vec<u8> {
    let mut arch = Conv4Config::new(1, 16, 2);
    arch.koch_head = koch_head;
    let (params, stats) = init_params(&arch, 7);
    let n = params.len();
    Checkpoint {
        meta: CheckpointMeta {
            format: FORMAT_VERSION,
            method: if koch_head { "siamese" } else { "protonet" }.into(),
            loss: koch_head.then(|| "koch".into()),
            margin: 1.0,
            arch,
            normalization: "pixels in [0, 1]".into(),
            dataset: "synthetic".into(),
            episode: 12,
            seed: 7,
            train: serde_json::json!({"way": 5}),
            sampler: None,
            best_val_accuracy: Some(0.5),
            elapsed_seconds: 1.5,
        },
        params,
        stats,
        optimizer: Some((vec![0.25; n], vec![0.5; n])),
    }
    .to_bytes()
    .unwrap()
}

/// The header JSON and the data of safetensors `bytes`.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        &bytes[8 + n..],
    )
}

fn join_safetensors(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, fewshot::model::checkpoint::CheckpointError> {
    Checkpoint::from_bytes(Path::new("fuzz.safetensors"), bytes)
}

/// A loaded checkpoint is internally consistent: buffers of the layout's sizes, finite weights.
fn assert_consistent(ck: &Checkpoint) {
    let layout = Layout::new(&ck.meta.arch);
    assert_eq!(ck.params.len(), layout.param_len);
    assert_eq!(ck.stats.len(), layout.stats_len);
    assert!(ck.params.iter().chain(&ck.stats).all(|v| v.is_finite()));
    if let Some((m, v)) = &ck.optimizer {
        assert_eq!((m.len(), v.len()), (layout.param_len, layout.param_len));
        assert!(m.iter().all(|x| x.is_finite()));
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0));
    }
}

/// Sizes that are small, powers of two, or extreme.
fn size_value() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..6,
        (0u32..usize::BITS).prop_map(|k| 1usize << k),
        Just(usize::MAX),
        any::<usize>(),
    ]
}

#[test]
fn checkpoint_reader_accepts_the_valid_fixtures() {
    for koch in [false, true] {
        let ck = from_bytes(&valid_checkpoint(koch)).expect("a valid checkpoint");
        assert_consistent(&ck);
        assert_eq!(ck.meta.episode, 12);
        assert!(ck.optimizer.is_some());
    }
}

/// A header length of u64::MAX (or anything past the end) is refused from the 8 length bytes,
/// allocating nothing of that size.
#[test]
fn checkpoint_header_length_is_checked_before_allocating() {
    let valid = valid_checkpoint(false);
    let true_len = u64::from_le_bytes(valid[..8].try_into().unwrap());
    for n in [
        u64::MAX,
        u64::MAX - 7,
        1 << 63,
        u32::MAX as u64,
        100_000_001,
        valid.len() as u64,
        true_len + 1,
        true_len - 1,
        0,
    ] {
        let mut bytes = valid.clone();
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        let (r, largest) = largest_allocation(|| from_bytes(&bytes));
        assert!(r.is_err(), "header length {n} accepted");
        assert!(
            largest < 64 << 10,
            "header length {n}: allocated {largest} bytes at once"
        );
    }
    let (r, largest) = largest_allocation(|| from_bytes(&u64::MAX.to_le_bytes()));
    assert!(r.is_err() && largest < 64 << 10, "{largest}");
}

/// Architectures whose layout would overflow or not fit in the file are refused from the
/// metadata, before any layout is computed (they used to panic on a shift overflow or abort
/// on a petabyte allocation).
#[test]
fn checkpoint_with_an_impossible_architecture_is_refused() {
    let valid = valid_checkpoint(false);
    let (header, data) = split_safetensors(&valid);
    let meta = header["__metadata__"]["fewshot"]
        .as_str()
        .unwrap()
        .to_string();
    for (hidden, blocks, image_size) in [
        (2, 64, 16),
        (2, usize::MAX, 16),
        (1 << 40, 4, 16),
        (usize::MAX, 4, 16),
        (3, 4, 16),
        (2, 4, 0),
    ] {
        let mut meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
        meta["arch"]["hidden"] = hidden.into();
        meta["arch"]["blocks"] = blocks.into();
        meta["arch"]["image_size"] = image_size.into();
        let mut header = header.clone();
        header["__metadata__"]["fewshot"] = meta.to_string().into();
        let bytes = join_safetensors(&header, data);
        let (r, largest) = largest_allocation(|| from_bytes(&bytes));
        let err = r
            .err()
            .expect("an impossible architecture loaded")
            .to_string();
        assert!(err.contains("architecture"), "{err}");
        assert!(largest < 64 << 10, "allocated {largest} bytes");
    }
}

/// Adam moments that are NaN, infinite or (for the second moment) negative would poison a
/// resumed run at its first step: refused like non-finite weights.
#[test]
fn checkpoint_with_a_corrupt_optimizer_state_is_refused() {
    for (which, value) in [
        (0, f32::NAN),
        (1, f32::INFINITY),
        (1, -1.0),
        (0, f32::NEG_INFINITY),
    ] {
        let mut ck = from_bytes(&valid_checkpoint(false)).unwrap();
        let (m, v) = ck.optimizer.as_mut().unwrap();
        [m, v][which][3] = value;
        let err = from_bytes(&ck.to_bytes().unwrap()).err().expect("loaded");
        assert!(err.to_string().contains("optimizer state"), "{err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn checkpoint_reader_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        len in prop_oneof![Just(None), (0u64..700).prop_map(Some), any::<u64>().prop_map(Some)],
    ) {
        // Also with a plausible header length in front, so the JSON parser sees the rest.
        let mut framed = len.map(u64::to_le_bytes).map(Vec::from).unwrap_or_default();
        framed.extend_from_slice(&bytes);
        let (r, largest) = largest_allocation(|| from_bytes(&framed));
        prop_assert!(r.is_err());
        prop_assert!(largest < 64 << 10, "allocated {} bytes for a {}-byte input", largest, framed.len());
    }

    #[test]
    fn checkpoint_reader_never_panics_on_a_mutated_checkpoint(
        koch in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let valid = valid_checkpoint(koch);
        let bytes = mutations.iter().fold(valid.clone(), |b, m| mutate(&b, m));
        let (r, largest) = largest_allocation(|| from_bytes(&bytes));
        if let Ok(ck) = &r {
            assert_consistent(ck);
        }
        if bytes.len() != valid.len() {
            // Every byte of a checkpoint is accounted for: any other length is refused.
            prop_assert!(r.is_err(), "a {}-byte mutation of a {}-byte checkpoint loaded", bytes.len(), valid.len());
        }
        prop_assert!(largest <= 8 * valid.len().max(bytes.len()) + (64 << 10), "allocated {} bytes", largest);
    }

    #[test]
    fn checkpoint_reader_refuses_a_patched_header_length(
        n in prop_oneof![any::<u64>(), 0u64..8192],
    ) {
        let mut bytes = valid_checkpoint(false);
        let true_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        prop_assume!(n != true_len);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        let (r, largest) = largest_allocation(|| from_bytes(&bytes));
        prop_assert!(r.is_err());
        prop_assert!(largest < 64 << 10, "header length {}: allocated {} bytes", n, largest);
    }

    /// Well-formed safetensors whose `fewshot` metadata declares an arbitrary architecture
    /// (huge widths, 2^k blocks, ...): refused (or loaded when it matches the tensors) without
    /// computing or allocating a layout the file cannot hold.
    #[test]
    fn checkpoint_reader_bounds_the_architecture_in_the_metadata(
        in_channels in size_value(),
        image_size in size_value(),
        hidden in size_value(),
        blocks in size_value(),
        koch_head in any::<bool>(),
    ) {
        let valid = valid_checkpoint(false);
        let (mut header, data) = split_safetensors(&valid);
        let meta = header["__metadata__"]["fewshot"].as_str().unwrap().to_string();
        let mut meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
        meta["arch"] = serde_json::json!({
            "in_channels": in_channels,
            "image_size": image_size,
            "hidden": hidden,
            "blocks": blocks,
            "koch_head": koch_head,
        });
        header["__metadata__"]["fewshot"] = serde_json::Value::String(meta.to_string());
        let bytes = join_safetensors(&header, data);
        let (r, largest) = largest_allocation(|| from_bytes(&bytes));
        if let Ok(ck) = &r {
            assert_consistent(ck);
        }
        prop_assert!(largest <= 8 * bytes.len() + (64 << 10), "allocated {} bytes", largest);
    }

    /// Well-formed safetensors with one tensor's dtype, shape or data offsets replaced.
    #[test]
    fn checkpoint_reader_never_panics_on_patched_tensor_entries(
        which in any::<Index>(),
        field in 0usize..3,
        shape in prop::collection::vec(size_value(), 0..4),
        offsets in (size_value(), size_value()),
        dtype in select(vec!["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "X"]),
    ) {
        let valid = valid_checkpoint(true);
        let (mut header, data) = split_safetensors(&valid);
        let names: Vec<String> = header
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        let name = &names[which.index(names.len())];
        match field {
            0 => header[name]["dtype"] = serde_json::json!(dtype),
            1 => header[name]["shape"] = serde_json::json!(shape),
            _ => header[name]["data_offsets"] = serde_json::json!([offsets.0, offsets.1]),
        }
        let bytes = join_safetensors(&header, data);
        let (r, largest) = largest_allocation(|| from_bytes(&bytes));
        if let Ok(ck) = &r {
            assert_consistent(ck);
        }
        prop_assert!(largest <= 8 * bytes.len() + (64 << 10), "allocated {} bytes", largest);
    }
}

// ---------------------------------------------------------------------------------------------
// Files on disk.

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fresh empty directory for one case.
fn case_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fewshot-fuzz-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A loaded split is well formed: classes tile the images, every value finite in [0, 1].
fn assert_set_consistent(set: &ClassSet) {
    let n = set.spec.item_len();
    assert_eq!(set.images.len() % n.max(1), 0);
    let mut next = 0;
    for c in &set.classes {
        assert_eq!(c.start, next);
        assert!(c.count > 0);
        next += c.count;
    }
    assert_eq!(next * n, set.images.len());
    assert!(set
        .images
        .iter()
        .all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
}

fn omniglot_options(image_size: usize, rotations: bool, split_dir: Option<PathBuf>) -> LoadOptions {
    LoadOptions {
        seed: 1,
        image_size,
        rotations,
        split_dir,
        train_split: TrainSplit::Train,
        skip_bad_images: false,
    }
}

fn check_load(source: &DatasetSource, opts: &LoadOptions) -> Result<(), String> {
    match load(source, opts) {
        Ok(d) => {
            for set in [&d.train, &d.val, &d.test] {
                assert_eq!(set.spec, d.spec);
                assert_set_consistent(set);
            }
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Clone, Debug)]
enum LineEdit {
    Delete(Index),
    Duplicate(Index),
    Replace(Index, String),
    Insert(Index, String),
}

/// The lines of a valid file with a few edits (lines deleted, duplicated, replaced by or
/// inserted from `line`, a grammar of near-misses), joined with random line endings; or raw
/// bytes.
fn edited_text(valid: &str, line: BoxedStrategy<String>) -> impl Strategy<Value = Vec<u8>> {
    let valid: Vec<String> = valid.lines().map(str::to_string).collect();
    let edit = prop_oneof![
        any::<Index>().prop_map(LineEdit::Delete),
        any::<Index>().prop_map(LineEdit::Duplicate),
        (any::<Index>(), line.clone()).prop_map(|(i, l)| LineEdit::Replace(i, l)),
        (any::<Index>(), line).prop_map(|(i, l)| LineEdit::Insert(i, l)),
    ];
    let ending = select(vec!["\n", "\r\n", "\n\n", " \n", "\t\n"]);
    prop_oneof![
        12 => (prop::collection::vec(edit, 0..3), ending).prop_map(move |(edits, end)| {
            let mut lines = valid.clone();
            for e in edits {
                let n = lines.len();
                match e {
                    LineEdit::Delete(i) if n > 0 => {
                        lines.remove(i.index(n));
                    }
                    LineEdit::Duplicate(i) if n > 0 => {
                        let l = lines[i.index(n)].clone();
                        lines.insert(i.index(n + 1), l);
                    }
                    LineEdit::Replace(i, l) if n > 0 => lines[i.index(n)] = l,
                    LineEdit::Insert(i, l) => lines.insert(i.index(n + 1), l),
                    _ => {}
                }
            }
            lines.iter().flat_map(|l| format!("{l}{end}").into_bytes()).collect()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn fixture_text(path: &str) -> String {
    std::fs::read_to_string(fixtures().join(path)).unwrap()
}

fn split_line() -> BoxedStrategy<String> {
    let alphabet = select(vec![
        "Greek", "Latin", "Korean", "Klingon", "", ".", "..", "greek", "Gréek", " Greek",
    ]);
    let character = select(vec![
        "character01",
        "character02",
        "character03",
        "character04",
        "character1",
        "",
        "..",
    ]);
    let rot = select(vec![
        "rot000", "rot090", "rot180", "rot270", "rot360", "rot", "ROT000", "rot0900", "",
        "rot000/x",
    ]);
    let sep = select(vec!["/", "/", "/", "\\", "//", " / "]);
    prop_oneof![
        6 => (alphabet, sep.clone(), character, sep, rot)
            .prop_map(|(a, s, c, t, r)| format!("{a}{s}{c}{t}{r}")),
        1 => "[a-zA-Z0-9/._ \\\\-]{0,30}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn labels_line() -> BoxedStrategy<String> {
    let test = select(vec![
        "run01/test/item01.png",
        "run01/test/item02.png",
        "run01/test/item03.png",
        "run01/test/item04.png",
        "run01/test/item05.png",
        "run02/test/item01.png",
        "run01\\test\\item02.png",
        "run01//test/item01.png",
        "run01/./test/item03.png",
        "../run01/test/item01.png",
        "run01/../run01/test/item01.png",
        "/run01/test/item01.png",
        "C:/run01/test/item01.png",
        "run01/test",
        "run01/test/",
        "run01",
        "run01/class_labels.txt",
        "run01/training/class01.png",
    ]);
    let train = select(vec![
        "run01/training/class01.png",
        "run01/training/class02.png",
        "run01/training/class03.png",
        "run01/training/class04.png",
        "run01/training/class05.png",
        "run02/training/class01.png",
        "run01\\training\\class03.png",
        "run01/training/",
        "run01/training/../training/class01.png",
        "run01/test/item01.png",
    ]);
    let gap = select(vec![" ", "\t", "   ", " \t "]);
    prop_oneof![
        8 => (test.clone(), gap.clone(), train.clone()).prop_map(|(a, g, b)| format!("{a}{g}{b}")),
        1 => (test.clone(), gap, train).prop_map(|(a, g, b)| format!("{a}{g}{b}{g}{a}")),
        1 => test.prop_map(str::to_string),
        1 => "[a-z0-9/. \\\\]{0,40}",
        1 => any::<String>(),
    ]
    .boxed()
}

/// An image file's bytes: random, behind a PNG or JPEG signature, or a mutated fixture PNG
/// (with its chunk CRCs fixed up, so the decoder gets past them).
#[derive(Clone, Debug)]
enum ImageBytes {
    Random(Vec<u8>),
    PngSignature(Vec<u8>),
    JpegSignature(Vec<u8>),
    Fixture(usize),
    Mutated(usize, Vec<Mutation>, bool),
}

fn image_bytes() -> impl Strategy<Value = ImageBytes> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(ImageBytes::Random),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(ImageBytes::PngSignature),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(ImageBytes::JpegSignature),
        2 => (0usize..16).prop_map(ImageBytes::Fixture),
        4 => (0usize..16, prop::collection::vec(mutation(), 1..4), any::<bool>())
            .prop_map(|(i, m, fix)| ImageBytes::Mutated(i, m, fix)),
    ]
}

fn fixture_pngs() -> &'static [Vec<u8>] {
    static PNGS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    PNGS.get_or_init(|| {
        let mut out = Vec::new();
        for run in ["run01", "run02"] {
            for sub in ["training", "test"] {
                let dir = fixtures().join("lake/dir").join(run).join(sub);
                let mut files: Vec<_> = std::fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                files.sort();
                out.extend(files.iter().map(|f| std::fs::read(f).unwrap()));
            }
        }
        // A colour PNG too, so the RGB path of the folder loader is exercised.
        let img =
            image::RgbImage::from_fn(13, 7, |x, y| image::Rgb([x as u8 * 19, y as u8 * 31, 200]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        out.push(png);
        out
    })
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
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

/// Recomputes the CRC of every complete PNG chunk.
fn fix_png_crcs(png: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= png.len()) else {
            break;
        };
        let crc = crc32(&png[at + 4..end]);
        png[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

impl ImageBytes {
    fn bytes(&self) -> Vec<u8> {
        let pngs = fixture_pngs();
        match self {
            ImageBytes::Random(b) => b.clone(),
            ImageBytes::PngSignature(b) => [b"\x89PNG\r\n\x1a\n".as_slice(), b].concat(),
            ImageBytes::JpegSignature(b) => [[0xff, 0xd8, 0xff].as_slice(), b].concat(),
            ImageBytes::Fixture(i) => pngs[i % pngs.len()].clone(),
            ImageBytes::Mutated(i, ms, fix) => {
                let mut b = ms
                    .iter()
                    .fold(pngs[i % pngs.len()].clone(), |b, m| mutate(&b, m));
                if *fix {
                    fix_png_crcs(&mut b);
                }
                b
            }
        }
    }
}

/// Patches a random length/count/offset field of a zip record (local header, central
/// directory entry or end of central directory) with an extreme value.
#[derive(Clone, Debug)]
struct ZipPatch {
    record: Index,
    field: Index,
    value: u32,
}

fn zip_patch(zip: &mut [u8], p: &ZipPatch) {
    // (signature, offsets of its u16/u32 fields as (offset, width)).
    type Record = (&'static [u8; 4], &'static [(usize, usize)]);
    const RECORDS: [Record; 3] = [
        (b"PK\x03\x04", &[(8, 2), (18, 4), (22, 4), (26, 2), (28, 2)]),
        (
            b"PK\x01\x02",
            &[
                (10, 2),
                (20, 4),
                (24, 4),
                (28, 2),
                (30, 2),
                (32, 2),
                (42, 4),
            ],
        ),
        (b"PK\x05\x06", &[(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]),
    ];
    let mut found = Vec::new();
    for at in 0..zip.len().saturating_sub(4) {
        for (sig, fields) in RECORDS {
            if &zip[at..at + 4] == sig {
                found.push((at, fields));
            }
        }
    }
    if found.is_empty() {
        return;
    }
    let (at, fields) = found[p.record.index(found.len())];
    let (offset, width) = fields[p.field.index(fields.len())];
    let bytes = p.value.to_le_bytes();
    for (k, &b) in bytes.iter().enumerate().take(width) {
        if let Some(slot) = zip.get_mut(at + offset + k) {
            *slot = b;
        }
    }
}

fn zip_patch_strategy() -> impl Strategy<Value = ZipPatch> {
    (any::<Index>(), any::<Index>(), extreme_u32()).prop_map(|(record, field, value)| ZipPatch {
        record,
        field,
        value,
    })
}

#[derive(Clone, Debug)]
enum ZipBytes {
    Random(Vec<u8>),
    Mutated(Vec<Mutation>),
    Patched(Vec<ZipPatch>),
}

fn zip_bytes() -> impl Strategy<Value = ZipBytes> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(ZipBytes::Random),
        3 => prop::collection::vec(mutation(), 1..4).prop_map(ZipBytes::Mutated),
        3 => prop::collection::vec(zip_patch_strategy(), 1..3).prop_map(ZipBytes::Patched),
    ]
}

impl ZipBytes {
    fn apply(&self, valid: &[u8]) -> Vec<u8> {
        match self {
            ZipBytes::Random(b) => [b"PK\x03\x04".as_slice(), b].concat(),
            ZipBytes::Mutated(ms) => ms.iter().fold(valid.to_vec(), |b, m| mutate(&b, m)),
            ZipBytes::Patched(ps) => {
                let mut b = valid.to_vec();
                for p in ps {
                    zip_patch(&mut b, p);
                }
                b
            }
        }
    }
}

/// Zip entries claiming 255 MiB each (under the per-image limit, so not refused) in a 7 KB
/// archive: the readers must not reserve what an entry declares (the Omniglot reader keeps
/// every entry in memory at once, so this was 255 MiB per entry).
#[test]
fn zip_entries_declaring_huge_sizes_are_not_reserved() {
    let zips = [
        fixtures().join("lake/all_runs.zip"),
        fixtures().join("omniglot/zip/images_background.zip"),
    ];
    for zip in zips {
        let mut bytes = std::fs::read(&zip).unwrap();
        let central: Vec<usize> = (0..bytes.len() - 4)
            .filter(|&at| &bytes[at..at + 4] == b"PK\x01\x02")
            .collect();
        assert!(central.len() > 10);
        for at in central {
            bytes[at + 24..at + 28].copy_from_slice(&(255u32 << 20).to_le_bytes());
        }
        let dir = case_dir("declared");
        let path = dir.join(zip.file_name().unwrap());
        std::fs::write(&path, &bytes).unwrap();
        let (r, largest) = largest_allocation(|| {
            if path.ends_with("all_runs.zip") {
                load_lake_runs(&path, 5)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                check_load(
                    &DatasetSource::Omniglot(path.clone()),
                    &omniglot_options(5, false, None),
                )
            }
        });
        eprintln!(
            "{}: {r:?}, largest allocation {largest} bytes",
            zip.display()
        );
        assert!(
            largest < 16 << 20,
            "{}: allocated {largest} bytes at once",
            zip.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 160,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })]

    /// Vinyals split files with near-miss lines over the Omniglot fixture.
    #[test]
    fn split_file_reader_never_panics(
        train in edited_text(&fixture_text("omniglot/splits/train.txt"), split_line()),
        val in edited_text(&fixture_text("omniglot/splits/val.txt"), split_line()),
        test in edited_text(&fixture_text("omniglot/splits/test.txt"), split_line()),
        trainval in edited_text(&fixture_text("omniglot/splits/trainval.txt"), split_line()),
        rotations in any::<bool>(),
        use_trainval in any::<bool>(),
    ) {
        let dir = case_dir("splits");
        let files = [train, val, test, trainval];
        for (name, text) in ["train.txt", "val.txt", "test.txt", "trainval.txt"].iter().zip(&files) {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let mut opts = omniglot_options(6, rotations, Some(dir.clone()));
        if use_trainval {
            opts.train_split = TrainSplit::TrainVal;
        }
        let source = DatasetSource::Omniglot(fixtures().join("omniglot/dir"));
        let _ = check_load(&source, &opts);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Lake's `class_labels.txt` with near-miss lines (paths outside the run, unknown or
    /// duplicate images, wrong field counts, non-UTF-8 bytes).
    #[test]
    fn lake_labels_reader_never_panics(
        labels in edited_text(&fixture_text("lake/dir/run01/class_labels.txt"), labels_line()),
        second in any::<bool>(),
    ) {
        let dir = case_dir("lake");
        copy_dir(&fixtures().join("lake/dir"), &dir);
        let run = if second { "run02" } else { "run01" };
        let bytes = match std::str::from_utf8(&labels) {
            Ok(text) => text.replace("run01", run).into_bytes(),
            Err(_) => labels.clone(),
        };
        std::fs::write(dir.join(run).join("class_labels.txt"), &bytes).unwrap();
        if let Ok(runs) = load_lake_runs(&dir, 6) {
            for r in &runs {
                prop_assert!(!r.trials.is_empty());
                prop_assert_eq!(r.training.len(), r.training_paths.len());
                for t in &r.trials {
                    prop_assert!(t.answer < r.training.len());
                    prop_assert_eq!(t.test_image.len(), 36);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Lake's `all_runs.zip`, and Omniglot's zips, random or mutated.
    #[test]
    fn zip_readers_never_panic(
        lake in zip_bytes(),
        background in zip_bytes(),
        evaluation in prop::option::of(zip_bytes()),
        single in any::<bool>(),
    ) {
        let dir = case_dir("zip");
        let valid = std::fs::read(fixtures().join("lake/all_runs.zip")).unwrap();
        let lake_zip = dir.join("all_runs.zip");
        std::fs::write(&lake_zip, lake.apply(&valid)).unwrap();
        if let Ok(runs) = load_lake_runs(&lake_zip, 5) {
            for r in &runs {
                for t in &r.trials {
                    prop_assert!(t.answer < r.training.len());
                    prop_assert!(t.test_image.iter().all(|v| v.is_finite()));
                }
            }
        }

        let omni = dir.join("omniglot");
        std::fs::create_dir_all(&omni).unwrap();
        let zips = fixtures().join("omniglot/zip");
        let bg = std::fs::read(zips.join("images_background.zip")).unwrap();
        std::fs::write(omni.join("images_background.zip"), background.apply(&bg)).unwrap();
        let ev = std::fs::read(zips.join("images_evaluation.zip")).unwrap();
        let ev = match &evaluation {
            Some(z) => z.apply(&ev),
            None => ev,
        };
        std::fs::write(omni.join("images_evaluation.zip"), ev).unwrap();
        let source = if single {
            DatasetSource::Omniglot(omni.join("images_background.zip"))
        } else {
            DatasetSource::Omniglot(omni.clone())
        };
        let _ = check_load(&source, &omniglot_options(5, false, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Image folders of random, truncated and mutated PNG/JPEG files.
    #[test]
    fn image_folder_reader_never_panics(
        classes in prop::collection::vec(
            prop::collection::vec(
                (image_bytes(), select(vec![".png", ".PNG", ".jpg", ".jpeg", ".txt"])),
                0..4,
            ),
            1..5,
        ),
        with_splits in any::<bool>(),
        skip_bad_images in any::<bool>(),
    ) {
        let dir = case_dir("folder");
        for (c, files) in classes.iter().enumerate() {
            let class_dir = if with_splits {
                dir.join(["train", "val", "test"][c % 3]).join(format!("class{c}"))
            } else {
                dir.join(format!("class{c}"))
            };
            std::fs::create_dir_all(&class_dir).unwrap();
            for (i, (image, ext)) in files.iter().enumerate() {
                std::fs::write(class_dir.join(format!("{i}{ext}")), image.bytes()).unwrap();
            }
        }
        let opts = LoadOptions {
            seed: 2,
            image_size: 7,
            rotations: false,
            split_dir: None,
            train_split: TrainSplit::Train,
            skip_bad_images,
        };
        let _ = check_load(&DatasetSource::Folder(dir.clone()), &opts);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
