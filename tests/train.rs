//! Training on the CPU path: learning happens, resume is exact, checkpoints round-trip.
use std::path::PathBuf;

use fewshot::cpu::Cpu;
use fewshot::data::synthetic::{generate, SyntheticConfig};
use fewshot::data::Dataset;
use fewshot::model::checkpoint::Checkpoint;
use fewshot::train::step::PairLoss;
use fewshot::train::trainer::{train, Method, Reporter, TrainConfig};

fn small_synthetic(seed: u64) -> Dataset {
    generate(&SyntheticConfig {
        seed,
        alphabets: 20,
        characters_per_alphabet: 20,
        ..Default::default()
    })
}

fn config(method: Method, loss: Option<PairLoss>, episodes: u64, seed: u64) -> TrainConfig {
    TrainConfig {
        method,
        loss,
        margin: 1.0,
        way: 10,
        shot: 1,
        query: 5,
        pairs: 32,
        episodes,
        time_budget: None,
        lr: 1e-3,
        lr_step: 2000,
        lr_gamma: 0.5,
        hidden: 32,
        seed,
        val_every: 0,
        val_episodes: 50,
        val_way: 5,
        eval_episodes: 300,
        eval_query: 15,
        log_every: 10,
        checkpoint_every: 3600.0,
        clip_grad: None,
        dataset: "synthetic".into(),
    }
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fewshot-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const QUIET: Reporter = Reporter {
    progress: false,
    quiet: true,
};

/// A short CPU training must beat chance (20% at 5-way) by a wide margin. Measured 5-way 1-shot
/// test accuracy over seeds 1-4 (300 test episodes, this dataset and config): ProtoNet after 60
/// episodes 64.1-69.1%; Siamese after 100 batches of 32 pairs: contrastive 41.4-48.0%, Koch
/// 46.0-50.3%. Thresholds sit well below the lowest of those and far above chance.
fn short_training_beats_chance(
    method: Method,
    loss: Option<PairLoss>,
    episodes: u64,
    threshold: f64,
) {
    let seed = 1u64;
    {
        let data = small_synthetic(seed);
        let cfg = config(method, loss, episodes, seed);
        let out = out_dir(&format!("{}-{loss:?}-{seed}", method.name()));
        let report =
            train(&Cpu::new(), "cpu", &data, &cfg, 28, &out, None, &QUIET).expect("training");
        let acc = report.eval[0].accuracy;
        eprintln!(
            "{} {loss:?} seed {seed}: 5-way 1-shot {:.1}% after {episodes} steps",
            method.name(),
            100.0 * acc
        );
        assert_eq!((report.eval[0].way, report.eval[0].shot), (5, 1));
        assert!(
            acc > threshold,
            "{} {loss:?}: 5-way 1-shot accuracy {acc:.3} <= {threshold} (chance 0.2)",
            method.name()
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn cpu_protonet_training_beats_chance() {
    short_training_beats_chance(Method::Protonet, None, 60, 0.5);
}

#[test]
fn cpu_siamese_contrastive_training_beats_chance() {
    short_training_beats_chance(Method::Siamese, Some(PairLoss::Contrastive), 100, 0.33);
}

#[test]
fn cpu_siamese_koch_training_beats_chance() {
    short_training_beats_chance(Method::Siamese, Some(PairLoss::Koch), 100, 0.35);
}

#[test]
fn resumed_cpu_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let data = small_synthetic(3);
    for (method, loss) in [
        (Method::Protonet, None),
        (Method::Siamese, Some(PairLoss::Koch)),
    ] {
        let whole = out_dir(&format!("whole-{}", method.name()));
        let cfg = config(method, loss, 6, 3);
        train(&Cpu::new(), "cpu", &data, &cfg, 28, &whole, None, &QUIET)
            .expect("uninterrupted run");

        let split = out_dir(&format!("split-{}", method.name()));
        let first = config(method, loss, 3, 3);
        train(&Cpu::new(), "cpu", &data, &first, 28, &split, None, &QUIET).expect("first half");
        let ck = Checkpoint::load(&split.join("last.safetensors")).expect("last checkpoint");
        assert_eq!(ck.meta.episode, 3);
        assert!(
            ck.optimizer.is_some(),
            "last.safetensors carries the Adam moments"
        );
        train(
            &Cpu::new(),
            "cpu",
            &data,
            &cfg,
            28,
            &split,
            Some(ck),
            &QUIET,
        )
        .expect("resumed half");

        let a = Checkpoint::load(&whole.join("last.safetensors")).unwrap();
        let b = Checkpoint::load(&split.join("last.safetensors")).unwrap();
        assert_eq!(b.meta.episode, 6);
        assert!(
            a.params == b.params,
            "{}: resumed weights differ from the uninterrupted run",
            method.name()
        );
        assert!(
            a.stats == b.stats,
            "{}: resumed batch-norm statistics differ",
            method.name()
        );
        assert!(
            a.optimizer == b.optimizer,
            "{}: resumed Adam moments differ",
            method.name()
        );
        let _ = std::fs::remove_dir_all(&whole);
        let _ = std::fs::remove_dir_all(&split);
    }
}

#[test]
fn checkpoint_round_trips_and_rejects_garbage() {
    let data = small_synthetic(4);
    let out = out_dir("roundtrip");
    let cfg = config(Method::Protonet, None, 2, 4);
    train(&Cpu::new(), "cpu", &data, &cfg, 28, &out, None, &QUIET).unwrap();
    let path = out.join("last.safetensors");
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.meta.method, "protonet");
    assert_eq!(ck.meta.arch.hidden, 32);
    let copy = out.join("copy.safetensors");
    ck.save(&copy).unwrap();
    let again = Checkpoint::load(&copy).unwrap();
    assert!(
        again.params == ck.params && again.stats == ck.stats && again.optimizer == ck.optimizer
    );
    assert_eq!(
        serde_json::to_value(&again.meta).unwrap(),
        serde_json::to_value(&ck.meta).unwrap()
    );
    // No temporary files left behind by the atomic writes.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let bytes = std::fs::read(&path).unwrap();
    for (what, data) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("empty", vec![]),
        ("not safetensors", b"definitely not a checkpoint".to_vec()),
        (
            "huge header length",
            [u64::MAX.to_le_bytes().to_vec(), vec![0; 16]].concat(),
        ),
    ] {
        let bad = out.join(format!("{}.safetensors", what.replace(' ', "_")));
        std::fs::write(&bad, data).unwrap();
        let err = Checkpoint::load(&bad)
            .err()
            .unwrap_or_else(|| panic!("{what} checkpoint loaded"));
        let msg = err.to_string();
        assert!(
            msg.contains(&bad.display().to_string()),
            "{what}: error does not name the file: {msg}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn streaming_a_dataset_too_large_for_the_device_trains_identically() {
    let data = small_synthetic(5);
    let cfg = config(Method::Protonet, None, 3, 5);
    let resident = out_dir("resident");
    train(&Cpu::new(), "cpu", &data, &cfg, 28, &resident, None, &QUIET).unwrap();
    // A "device" whose binding limit is smaller than the training split but fits every batch.
    let small = Cpu::with_max_tensor_len(data.train.images.len() - 1);
    let streamed = out_dir("streamed");
    train(&small, "cpu", &data, &cfg, 28, &streamed, None, &QUIET).unwrap();
    let a = Checkpoint::load(&resident.join("last.safetensors")).unwrap();
    let b = Checkpoint::load(&streamed.join("last.safetensors")).unwrap();
    assert!(
        a.params == b.params,
        "streamed batches trained differently from device-resident ones"
    );
    let _ = std::fs::remove_dir_all(&resident);
    let _ = std::fs::remove_dir_all(&streamed);
}

#[test]
fn a_batch_larger_than_the_device_binding_limit_is_refused_with_the_limit_named() {
    let data = small_synthetic(6);
    let cfg = config(Method::Protonet, None, 1, 6);
    // 10-way 1-shot 5-query = 60 images x 32 x 28 x 28 floats in the first activation.
    let small = Cpu::with_max_tensor_len(60 * 32 * 28 * 28 - 1);
    let out = out_dir("too-big");
    let err = train(&small, "cpu", &data, &cfg, 28, &out, None, &QUIET).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("largest storage binding") && msg.contains("60 images"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn embedding_is_chunked_to_fit_the_device_binding_limit() {
    use fewshot::model::{init_params, Conv4, Conv4Config};
    use fewshot::ops::Backend;
    let cfg = Conv4Config::new(1, 28, 8);
    let (params, stats) = init_params(&cfg, 1);
    let data = small_synthetic(7);
    let n = 40;
    let images = &data.test.images[..n * cfg.image_len()];
    let whole = {
        let cpu = Cpu::new();
        let model = Conv4::new(&cpu, cfg.clone(), &params, &stats);
        fewshot::train::eval::embed_all(&cpu, &model, images, n).expect("embedding")
    };
    // Room for 3 images' activations per chunk.
    let small = Cpu::with_max_tensor_len(3 * cfg.largest_activation_per_image());
    let model = Conv4::new(&small, cfg.clone(), &params, &stats);
    let chunked = fewshot::train::eval::embed_all(&small, &model, images, n).expect("embedding");
    assert_eq!(small.len(&model.params), params.len());
    assert!(whole == chunked, "chunked embedding differs");
}

#[test]
fn a_device_lost_during_evaluation_is_an_error_not_a_panic() {
    use fewshot::model::{init_params, Conv4, Conv4Config};
    let cfg = Conv4Config::new(1, 28, 8);
    let (params, stats) = init_params(&cfg, 1);
    let data = small_synthetic(7);
    let n = 40;
    let images = &data.test.images[..n * cfg.image_len()];
    // Chunks of 3 images; the third chunk's read finds the device lost.
    let lost = Cpu::with_max_tensor_len(3 * cfg.largest_activation_per_image())
        .with_reads_failing_after(2);
    let model = Conv4::new(&lost, cfg.clone(), &params, &stats);
    let err = fewshot::train::eval::embed_all(&lost, &model, images, n)
        .expect_err("a lost device is an error");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("device error while embedding images 6..9") && msg.contains("device lost"),
        "{msg}"
    );
}

#[test]
fn a_lost_device_ends_training_with_an_error_and_the_last_checkpoint_intact() {
    let data = small_synthetic(8);
    let mut cfg = config(Method::Protonet, None, 20, 8);
    cfg.checkpoint_every = 0.0; // save after every step, so there is a checkpoint to keep
    let out = out_dir("lost-device");
    let lost = Cpu::failing_after_reads(5);
    let err = train(&lost, "cpu", &data, &cfg, 28, &out, None, &QUIET)
        .expect_err("device loss is an error");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("device error during training") && msg.contains("last.safetensors"),
        "{msg}"
    );
    let ck =
        Checkpoint::load(&out.join("last.safetensors")).expect("the last checkpoint is intact");
    assert!(
        ck.meta.episode >= 1 && ck.meta.episode < 20,
        "episode {}",
        ck.meta.episode
    );
    let _ = std::fs::remove_dir_all(&out);
}
