//! Crash and interrupt handling of `fewshot train`: a SIGKILL at any moment leaves a loadable
//! `last.safetensors` that `--resume` continues from, SIGINT saves and exits with 130 saying how
//! to resume, and a run whose loss or weights stop being finite stops, naming the episode,
//! without overwriting the last good checkpoint.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fewshot::cpu::Cpu;
use fewshot::data::synthetic::{generate, SyntheticConfig};
use fewshot::data::EpisodeSampler;
use fewshot::model::checkpoint::Checkpoint;
use fewshot::train::trainer::{train, Method, Reporter, TrainConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fewshot-kill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The small training run of these tests, writing `last.safetensors` every 0.2 s.
fn train_args(out: &Path, episodes: u64, resume: bool) -> Vec<String> {
    train_args_every(out, episodes, resume, "0.2")
}

fn train_args_every(out: &Path, episodes: u64, resume: bool, every: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--device",
        "cpu",
        "--hidden",
        "8",
        "--way",
        "5",
        "--query",
        "2",
        "--checkpoint-every",
        every,
        "--val-every",
        "0",
        "--eval-episodes",
        "0",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--episodes".into(), episodes.to_string()]);
    args.extend(["--out".into(), out.display().to_string()]);
    if resume {
        args.extend(["--resume".into(), out.display().to_string()]);
    }
    args
}

/// Starts `fewshot` with stderr going to `log` (read back after it exits).
fn spawn(args: &[String], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fewshot"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting fewshot")
}

/// Waits for `child` to exit, killing it and failing after `limit`.
fn wait_exit(child: &mut Child, limit: Duration, log: &Path) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fewshot did not exit within {limit:?}; stderr:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `cond` holds, failing after `limit` (or when `child` exits first).
fn wait_until(child: &mut Child, limit: Duration, log: &Path, what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "fewshot exited ({status}) before {what}; stderr:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no {what} within {limit:?}; stderr:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The inode of `path` (each atomic save renames a new file into place), if it exists.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Files in `dir` other than the run's own outputs: they must all be temporaries
/// `.NAME.safetensors.tmp-PID` of one of the `killed` processes. Returns them.
fn leftover_temps(dir: &Path, killed: &[u32]) -> Vec<String> {
    let mut temps = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if ["last.safetensors", "best.safetensors", "metrics.jsonl"].contains(&name.as_str()) {
            continue;
        }
        let pid = [".last.safetensors.tmp-", ".best.safetensors.tmp-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .and_then(|pid| pid.parse::<u32>().ok());
        match pid {
            Some(pid) => assert!(
                killed.contains(&pid),
                "{name}: a temporary of process {pid}, which is not one this test killed"
            ),
            None => panic!("unexpected file {name} in the run directory"),
        }
        // A temporary is never mistaken for a checkpoint: it does not end in .safetensors.
        assert!(!name.ends_with(".safetensors"));
        temps.push(name);
    }
    temps
}

#[test]
fn sigkill_at_random_moments_leaves_a_loadable_checkpoint_and_resume_works() {
    let root = temp_dir("sigkill");
    let out = root.join("run");
    let last = out.join("last.safetensors");
    let mut rng = ChaCha8Rng::seed_from_u64(0x005e_ed0f_c1a5);
    let mut killed: Vec<u32> = Vec::new();
    let mut episode = 0u64;
    let mut temps_seen = 0usize;
    let limit = Duration::from_secs(30);
    for round in 0..9 {
        let log = root.join(format!("stderr-{round}.txt"));
        // Saving after every episode: most moments in training fall inside a checkpoint write.
        let before = inode(&last);
        let mut child = spawn(&train_args_every(&out, 100_000, round > 0, "0"), &log);
        let (delay, moment) = match round % 3 {
            // Once the run has written a checkpoint of its own, then a random moment (in
            // training, likely mid-write).
            0 => {
                wait_until(&mut child, limit, &log, "a new checkpoint", || {
                    inode(&last) != before
                });
                (rng.random_range(0..600), "its first checkpoint")
            }
            // A random moment from the start (likely while loading the data or checkpoint).
            1 => (rng.random_range(0..1500), "the start"),
            // Once it is set up (data and checkpoint loaded), then a random moment around
            // its first steps and writes.
            _ => {
                wait_until(&mut child, limit, &log, "the device line", || {
                    std::fs::read_to_string(&log).is_ok_and(|e| e.contains("device:"))
                });
                (rng.random_range(0..150), "set-up")
            }
        };
        std::thread::sleep(Duration::from_millis(delay));
        killed.push(child.id());
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the run was not killed");

        let ck = Checkpoint::load(&last)
            .unwrap_or_else(|e| panic!("round {round}: after SIGKILL, last.safetensors: {e}"));
        assert!(
            ck.meta.episode >= episode,
            "round {round}: the checkpoint went back from episode {episode} to {}",
            ck.meta.episode
        );
        assert!(ck.optimizer.is_some(), "round {round}: no optimizer state");
        let temps = leftover_temps(&out, &killed);
        eprintln!(
            "round {round}: killed {delay} ms after {moment}; checkpoint at episode {}; leftover temporaries: {temps:?}",
            ck.meta.episode
        );
        temps_seen = temps_seen.max(temps.len());
        episode = ck.meta.episode;
    }
    assert!(episode > 0, "no training progress across the kills");

    // A short resumed run to a few episodes past the last checkpoint completes, leftover
    // temporaries notwithstanding, and saves the target episode.
    let target = episode + 5;
    let log = root.join("stderr-final.txt");
    let mut child = spawn(&train_args(&out, target, true), &log);
    let status = wait_exit(&mut child, limit, &log);
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "final resume failed ({status}):\n{err}");
    assert!(
        err.contains(&format!(
            "resuming from {} at episode {episode}",
            last.display()
        )),
        "the final run did not resume from episode {episode}:\n{err}"
    );
    let ck = Checkpoint::load(&last).unwrap();
    assert_eq!(ck.meta.episode, target);
    eprintln!(
        "final resume: episode {episode} -> {target}; at most {temps_seen} leftover temporaries at once"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn sigint_saves_a_checkpoint_and_says_how_to_resume() {
    let root = temp_dir("sigint");
    let out = root.join("run");
    let last = out.join("last.safetensors");
    let log = root.join("stderr.txt");
    let mut child = spawn(&train_args(&out, 100_000, false), &log);
    let limit = Duration::from_secs(30);
    wait_until(&mut child, limit, &log, "first checkpoint", || {
        last.exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(sent.success());
    let status = wait_exit(&mut child, limit, &log);
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "exit status {status}; stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("--resume") && err.contains(&out.display().to_string()),
        "stderr does not say how to resume:\n{err}"
    );
    let ck = Checkpoint::load(&last).unwrap();
    assert!(ck.meta.episode > 0);
    let (m, v) = ck
        .optimizer
        .as_ref()
        .expect("optimizer state saved on SIGINT");
    assert!(m.iter().any(|&x| x != 0.0) && v.iter().any(|&x| x > 0.0));
    assert!(
        err.contains(&format!("interrupted at episode {}", ck.meta.episode)),
        "stderr names another episode than the checkpoint's {}:\n{err}",
        ck.meta.episode
    );
    assert_eq!(leftover_temps(&out, &[]), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&root);
}

/// A NaN in the images of one training class turns the weights NaN in the first episode that
/// samples it (the loss stays finite: ReLU and max pooling swallow NaN and batch norm collapses
/// the embeddings); the run must stop naming that episode, and `last.safetensors` (saved after
/// every episode) must hold the episode before, with finite weights.
#[test]
fn nan_in_the_data_stops_training_naming_the_episode() {
    let mut dataset = generate(&SyntheticConfig {
        seed: 3,
        image_size: 28,
        alphabets: 10,
        characters_per_alphabet: 10,
        drawings: 5,
        ..Default::default()
    });
    let cfg = TrainConfig {
        method: Method::Protonet,
        loss: None,
        margin: 1.0,
        way: 5,
        shot: 1,
        query: 2,
        pairs: 16,
        episodes: 1000,
        time_budget: None,
        lr: 1e-3,
        lr_step: 2000,
        lr_gamma: 0.5,
        hidden: 8,
        seed: 11,
        val_every: 0,
        val_episodes: 10,
        val_way: 5,
        eval_episodes: 0,
        eval_query: 5,
        log_every: 10,
        checkpoint_every: 0.0,
        clip_grad: None,
        dataset: "synthetic".into(),
    };
    // Poison the class whose first appearance in the training episodes is latest (within
    // the first 200): the run must get that far and stop exactly there.
    let mut sampler =
        EpisodeSampler::new(&dataset.train, cfg.way, cfg.shot, cfg.query, cfg.seed).unwrap();
    let mut first = vec![None; dataset.train.classes.len()];
    for e in 1..=200u64 {
        for &c in &sampler.next().classes {
            first[c].get_or_insert(e);
        }
    }
    let (class, episode) = first
        .iter()
        .enumerate()
        .filter_map(|(c, e)| e.map(|e| (c, e)))
        .max_by_key(|&(_, e)| e)
        .unwrap();
    assert!(
        episode > 2,
        "poisoned class first sampled at episode {episode}"
    );
    // One NaN pixel in every image of the class (an episode draws some of its images).
    let n = dataset.train.spec.item_len();
    for i in dataset.train.classes[class].range() {
        dataset.train.images[i * n + 7] = f32::NAN;
    }

    let out = temp_dir("nan");
    let quiet = Reporter {
        progress: false,
        quiet: true,
    };
    let err = train(&Cpu::new(), "cpu", &dataset, &cfg, 28, &out, None, &quiet)
        .expect_err("training on a NaN image must fail");
    let msg = format!("{err:#}");
    eprintln!("poisoned class {class}, first sampled at episode {episode}: {msg}");
    assert!(
        msg.contains(&format!("episode {episode}:")),
        "the error does not name episode {episode}: {msg}"
    );
    assert!(msg.contains("last.safetensors"), "{msg}");
    let ck = Checkpoint::load(&out.join("last.safetensors")).expect("the last good checkpoint");
    assert_eq!(ck.meta.episode, episode - 1);
    let _ = std::fs::remove_dir_all(&out);
}

/// With an absurd learning rate batch normalisation keeps the loss finite (ln 5 at 5-way: the
/// embeddings collapse) while the weights overflow to infinity; the run must stop naming the
/// episode instead of overwriting `last.safetensors` with weights no one can load.
#[test]
fn overflowing_weights_stop_training_and_keep_the_last_good_checkpoint() {
    let root = temp_dir("overflow");
    let out = root.join("run");
    let log = root.join("stderr.txt");
    let mut args = train_args_every(&out, 300, false, "0");
    args.extend(["--lr".into(), "1e38".into()]);
    let mut child = spawn(&args, &log);
    let status = wait_exit(&mut child, Duration::from_secs(60), &log);
    let err = std::fs::read_to_string(&log).unwrap();
    eprintln!("{}", err.trim_end());
    assert!(
        !status.success(),
        "training with --lr 1e38 succeeded:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let ck = Checkpoint::load(&out.join("last.safetensors"))
        .unwrap_or_else(|e| panic!("the last checkpoint does not load: {e}\n{err}"));
    assert!(
        err.contains(&format!("episode {}", ck.meta.episode + 1)),
        "the error does not name episode {} (the checkpoint holds {}):\n{err}",
        ck.meta.episode + 1,
        ck.meta.episode
    );
    let _ = std::fs::remove_dir_all(&root);
}
