//! `fewshot bench` (and `cargo bench --bench kernels`): per-kernel throughput at the Conv-4
//! shapes of a 60-way 5-shot 5-query episode, the device's own ceilings (buffer copy, tuned
//! sgemm) measured by the same harness, per-episode training step times with the real step
//! functions, and inference throughput — on the CPU path and on the GPU when there is one.
//!
//! Timing: every number is wall clock, the median of several trials, with nothing subtracted.
//! A trial runs an op `reps` times back to back and then waits for the device: on the GPU the
//! `reps` launches are recorded into one submission and the trial ends when a blocking read of
//! a one-float tensor (queued after them) returns, so a trial includes recording, encoding,
//! submission and read-back; on the CPU ops run as they are called. `reps` is calibrated per
//! op so that a trial lasts about [`Plan::target_s`]; the reported time is `trial / reps`.
//! A warm-up trial (pipeline compilation, first-touch page faults) is never counted.
//!
//! Throughput: GFLOP/s for compute-bound ops (convolutions: [`ConvShape::forward_flops`] per
//! pass; pairwise distances: one flop per +, - or x), GB/s for memory-bound ops counting the
//! minimal traffic (every input element read once, every output element written once). Each
//! is also given as a fraction of the same device's ceiling: the sgemm (compute) or the copy
//! (memory), whose GB/s counts the bytes read plus the bytes written. The copy ceiling is
//! measured on a buffer far larger than any cache (256 MiB; 32 MiB with `--quick` on the CPU),
//! so a memory-bound kernel whose data stay in cache (Adam, gather: a few MiB) can exceed it.
//!
//! `--quick` takes few repetitions; on the GPU it also measures at a tenth of the batch (see
//! [`run_bench`]), since a software adapter needs minutes per step at batch 600.

use std::time::Instant;

use anyhow::Result;
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::cpu::Cpu;
use crate::gpu::{AdapterSummary, Gpu};
use crate::model::{init_params, Conv4, Conv4Config, Layout};
use crate::ops::{AdamStep, Backend, BatchNorm, ConvShape, NormShape, PoolShape};
use crate::train::step::{protonet_step, siamese_step, PairBuffers, PairLoss, ProtoBuffers};

/// The tiled sgemm that measures the GPU's compute ceiling (`src/gpu/matmul.rs`).
pub use crate::gpu::matmul;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchDevice {
    Cpu,
    Gpu,
    /// The CPU, and the GPU when an adapter exists.
    All,
}

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Which paths to measure.
    #[arg(long, value_enum, default_value = "all")]
    pub device: BenchDevice,
    /// Use the GPU adapter whose name contains this (case-insensitive).
    #[arg(long)]
    pub adapter: Option<String>,
    /// Print one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Few repetitions, for a smoke test; on the GPU also a tenth of the batch sizes.
    #[arg(long)]
    pub quick: bool,
    /// Timed training steps per configuration (after the warm-up steps).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Run only these sections (comma-separated; default all). Without the ceilings, kernels
    /// get no "% of ceiling".
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Time only these training-step configurations (comma-separated names as printed, e.g.
    /// protonet-5w1s15q,siamese-128; default all).
    #[arg(long, value_delimiter = ',')]
    pub config: Vec<String>,
    /// A reference run to compare with: the JSON of the PyTorch peer
    /// (`fewshot_torch.py --mode speed --suite --out FILE`, or its JSON lines). Step and
    /// inference rows then also print the reference's time and the ratio fewshot / reference
    /// (CPU rows against its `cpu` records, GPU rows against its `cuda` ones).
    #[arg(long, value_name = "FILE")]
    pub reference: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    Ceilings,
    Kernels,
    Steps,
    Inference,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            device: BenchDevice::All,
            adapter: None,
            json: false,
            quick: false,
            steps: None,
            only: vec![],
            config: vec![],
            reference: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_threads: usize,
    pub cpu_model: Option<String>,
    pub os: String,
    pub arch: String,
    /// The GPU adapter measured (None when the GPU was not measured).
    pub adapter: Option<AdapterSummary>,
    pub quick: bool,
    /// Anything that changes how to read the numbers (reduced batches, skipped devices).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    /// Op runs per trial.
    pub reps: usize,
    pub trials: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct CeilingRow {
    pub device: String,
    /// "copy" (`Backend::copy`) or "memcpy" (CPU only: a parallel `copy_from_slice` between
    /// preallocated buffers), both memory; "matmul" (compute).
    pub kind: String,
    pub shape: String,
    #[serde(flatten)]
    pub timing: Timing,
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
    /// The best row of its kind (memory or compute): the one kernels are compared with.
    pub used_as_ceiling: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    pub device: String,
    pub kernel: String,
    /// Conv-4 block (1-based) for the per-layer kernels.
    pub layer: Option<usize>,
    pub shape: String,
    #[serde(flatten)]
    pub timing: Timing,
    /// "compute" (compared with the matmul ceiling) or "memory" (with the copy ceiling).
    pub bound: String,
    pub flops: Option<f64>,
    pub bytes: Option<f64>,
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
    /// Throughput over the device's relevant ceiling.
    pub fraction_of_ceiling: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    /// The configuration measured, e.g. "protonet-60w5s5q".
    pub config: String,
    /// The configuration asked for, when a quick GPU run reduced it.
    pub requested: Option<String>,
    pub device: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub steps: usize,
    pub warmup_steps: usize,
    pub images_per_step: usize,
    pub images_per_s: f64,
    /// Loss of the last step (a sanity check that the steps computed something).
    pub last_loss: f64,
    /// The reference run's median step time for this configuration and device (`--reference`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_ms: Option<f64>,
    /// `median_ms / reference_ms`: below 1, fewshot is faster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_reference: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InferenceRow {
    pub device: String,
    pub batch: usize,
    #[serde(flatten)]
    pub timing: Timing,
    pub images_per_s: f64,
    /// The reference run's inference throughput on this device kind (`--reference`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_images_per_s: Option<f64>,
    /// Time per image, fewshot / reference: below 1, fewshot is faster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_reference: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub ceilings: Vec<CeilingRow>,
    pub kernels: Vec<KernelRow>,
    pub steps: Vec<StepRow>,
    pub inference: Vec<InferenceRow>,
}

// ---------------------------------------------------------------------------------------------
// Plan

/// What to run on one device.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Episode whose shapes the kernels are measured at (60-way 5-shot 5-query normally).
    pub way: usize,
    pub shot: usize,
    pub query: usize,
    pub hidden: usize,
    pub image_size: usize,
    /// Trials per measurement (the median is reported).
    pub trials: usize,
    /// Aim for trials of about this many seconds.
    pub target_s: f64,
    pub max_reps: usize,
    pub warmup_steps: usize,
    pub steps: usize,
    /// Divide the step configurations' way (or pairs) by this (1: as named).
    pub step_divisor: usize,
    pub inference_batch: usize,
    pub copy_bytes: usize,
    pub matmul_size: usize,
    /// Images in the random device-resident dataset the steps and gather draw from.
    pub dataset_images: usize,
    /// The sections to run.
    pub sections: Vec<Section>,
    /// The step configurations to time (names as in [`STEP_CONFIGS`]; empty: all).
    pub configs: Vec<String>,
    /// A reference run to print ratios against.
    pub reference: Option<Reference>,
}

impl Plan {
    pub fn new(quick: bool, steps: Option<usize>) -> Self {
        Plan {
            way: 60,
            shot: 5,
            query: 5,
            hidden: 64,
            image_size: 28,
            trials: if quick { 2 } else { 7 },
            target_s: if quick { 0.02 } else { 0.2 },
            max_reps: if quick { 50 } else { 1000 },
            warmup_steps: if quick { 1 } else { 3 },
            steps: steps.unwrap_or(if quick { 2 } else { 20 }).max(1),
            step_divisor: 1,
            inference_batch: 256,
            copy_bytes: if quick { 32 << 20 } else { 256 << 20 },
            matmul_size: 1024,
            dataset_images: 2000,
            sections: vec![
                Section::Ceilings,
                Section::Kernels,
                Section::Steps,
                Section::Inference,
            ],
            configs: vec![],
            reference: None,
        }
    }
    /// Images of the kernels' episode.
    fn runs(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }
    pub fn batch(&self) -> usize {
        self.way * (self.shot + self.query)
    }
    fn cfg(&self) -> Conv4Config {
        Conv4Config::new(1, self.image_size, self.hidden)
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

/// Median of a non-empty list.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Time `op`: a warm-up trial, a calibration of the repetitions per trial, then
/// `plan.trials` trials of `reps` runs each followed by one `sync()`.
fn measure(plan: &Plan, mut op: impl FnMut(), mut sync: impl FnMut()) -> Timing {
    let mut trial = |reps: usize| {
        let start = Instant::now();
        for _ in 0..reps {
            op();
        }
        sync();
        start.elapsed().as_secs_f64()
    };
    // The warm-up may include pipeline compilation (tens of ms on a real GPU), so only an op
    // that is slow on its own skips calibration.
    let warm = trial(1);
    let mut reps = 1;
    if warm < (2.0 * plan.target_s).max(0.1) {
        // Grow `reps` until a trial lasts about the target: a single fast op is dominated by
        // the wait, so one calibration run underestimates how many fit.
        for _ in 0..3 {
            let t = trial(reps).max(1e-7);
            if t >= 0.5 * plan.target_s || reps >= plan.max_reps {
                break;
            }
            reps = ((reps as f64 * plan.target_s / t).ceil() as usize).clamp(1, plan.max_reps);
        }
    }
    let mut per_op: Vec<f64> = (0..plan.trials)
        .map(|_| trial(reps) / reps as f64)
        .collect();
    let min = per_op.iter().cloned().fold(f64::INFINITY, f64::min);
    Timing {
        median_ms: median(&mut per_op) * 1e3,
        min_ms: min * 1e3,
        reps,
        trials: plan.trials,
    }
}

/// Deterministic pseudo-random values in `[lo, hi)` (xorshift; fast enough for 100M values).
fn random_vec(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Where rows go as they are measured: table lines on stdout, or (JSON mode) on stderr.
struct Printer {
    to_stdout: bool,
}

impl Printer {
    fn line(&self, s: &str) {
        if self.to_stdout {
            println!("{s}");
        } else {
            eprintln!("{s}");
        }
    }
}

fn fmt_rate(gflops: Option<f64>, gbps: Option<f64>) -> String {
    match (gflops, gbps) {
        (Some(f), _) => format!("{f:9.2} GFLOP/s"),
        (None, Some(b)) => format!("{b:9.2} GB/s   "),
        _ => String::new(),
    }
}

fn ceiling_header() -> String {
    format!(
        "{:<6} {:<8} {:<44} {:>11} {:>6}  {}",
        "device", "ceiling", "shape", "median ms", "reps", "throughput"
    )
}

fn ceiling_line(r: &CeilingRow) -> String {
    format!(
        "{:<6} {:<8} {:<44} {:>11.3} {:>6}  {}{}",
        r.device,
        r.kind,
        r.shape,
        r.timing.median_ms,
        r.timing.reps,
        fmt_rate(r.gflops, r.gbps),
        if r.used_as_ceiling {
            "  <- ceiling"
        } else {
            ""
        }
    )
}

fn kernel_header() -> String {
    format!(
        "{:<6} {:<28} {:<30} {:>11} {:>6}  {:<17} {:>9}",
        "device", "kernel", "shape", "median ms", "reps", "throughput", "% ceiling"
    )
}

fn kernel_line(r: &KernelRow) -> String {
    let name = match r.layer {
        Some(l) => format!("{} L{l}", r.kernel),
        None => r.kernel.clone(),
    };
    let frac = match r.fraction_of_ceiling {
        Some(f) => format!(
            "{:>7.1}% {}",
            100.0 * f,
            if r.bound == "compute" { "mm" } else { "cp" }
        ),
        None => String::new(),
    };
    format!(
        "{:<6} {:<28} {:<30} {:>11.3} {:>6}  {:<17} {}",
        r.device,
        name,
        r.shape,
        r.timing.median_ms,
        r.timing.reps,
        fmt_rate(r.gflops, r.gbps),
        frac
    )
}

fn step_header() -> String {
    format!(
        "{:<6} {:<20} {:>7} {:>11} {:>11} {:>11} {:>10}",
        "device", "config", "images", "median ms", "min ms", "images/s", "last loss"
    )
}

fn step_line(r: &StepRow) -> String {
    format!(
        "{:<6} {:<20} {:>7} {:>11.2} {:>11.2} {:>11.1} {:>10.4}{}",
        r.device,
        r.config,
        r.images_per_step,
        r.median_ms,
        r.min_ms,
        r.images_per_s,
        r.last_loss,
        match (&r.requested, r.reference_ms, r.ratio_to_reference) {
            (Some(req), _, _) => format!("  (reduced from {req})"),
            (None, Some(ms), Some(ratio)) => format!("  reference {ms:.2} ms, ratio {ratio:.2}"),
            _ => String::new(),
        }
    )
}

fn inference_header() -> String {
    format!(
        "{:<6} {:>6} {:>11} {:>11}",
        "device", "batch", "median ms", "images/s"
    )
}

fn inference_line(r: &InferenceRow) -> String {
    format!(
        "{:<6} {:>6} {:>11.2} {:>11.1}{}",
        r.device,
        r.batch,
        r.timing.median_ms,
        r.images_per_s,
        match (r.reference_images_per_s, r.ratio_to_reference) {
            (Some(ips), Some(ratio)) =>
                format!("  reference {ips:.1} images/s, ratio {ratio:.2} (time per image)"),
            _ => String::new(),
        }
    )
}

/// Print a finished report as tables (what `fewshot bench` prints as it goes).
pub fn print_report(r: &BenchReport) {
    println!("{}", machine_line(&r.machine));
    for n in &r.machine.notes {
        println!("note: {n}");
    }
    println!("\nceilings\n{}", ceiling_header());
    for c in &r.ceilings {
        println!("{}", ceiling_line(c));
    }
    println!("\nkernels (% of the device's matmul (mm) or copy (cp) ceiling)");
    println!("{}", kernel_header());
    for k in &r.kernels {
        println!("{}", kernel_line(k));
    }
    println!("\ntraining steps (median over the timed steps, after warm-up)");
    println!("{}", step_header());
    for s in &r.steps {
        println!("{}", step_line(s));
    }
    println!("\ninference (eval-mode embedding)\n{}", inference_header());
    for i in &r.inference {
        println!("{}", inference_line(i));
    }
}

fn machine_line(m: &Machine) -> String {
    let gpu = match &m.adapter {
        Some(a) => format!(
            "; GPU: {} ({}, {}{})",
            a.name,
            a.backend,
            a.device_type,
            if a.is_software() {
                ", software: expect tiny numbers"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    format!(
        "machine: {} CPU threads ({}; {} {}){gpu}{}",
        m.cpu_threads,
        m.cpu_model.as_deref().unwrap_or("unknown CPU"),
        m.os,
        m.arch,
        if m.quick {
            "; --quick: few repetitions"
        } else {
            ""
        }
    )
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// `fewshot bench`: run and print (tables as they are measured, or one JSON object).
pub fn run_cli(args: &BenchArgs) -> Result<()> {
    let report = run_bench(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Run every measurement `args` asks for. Rows are printed as they are measured: to stdout as
/// tables, or to stderr with `args.json` (the caller then prints the returned report).
pub fn run_bench(args: &BenchArgs) -> Result<BenchReport> {
    let out = Printer {
        to_stdout: !args.json,
    };
    let mut report = BenchReport {
        machine: Machine {
            cpu_threads: rayon::current_num_threads(),
            cpu_model: cpu_model(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            adapter: None,
            quick: args.quick,
            notes: vec![],
        },
        ceilings: vec![],
        kernels: vec![],
        steps: vec![],
        inference: vec![],
    };

    let gpu = match args.device {
        BenchDevice::Cpu => None,
        BenchDevice::Gpu => Some(Gpu::new(args.adapter.as_deref())?),
        BenchDevice::All => match Gpu::new(args.adapter.as_deref()) {
            Ok(g) => Some(g),
            Err(e) => {
                report.machine.notes.push(format!("GPU not measured: {e}"));
                None
            }
        },
    };
    if let Some(g) = &gpu {
        report.machine.adapter = Some(g.adapter.clone());
        if g.adapter.is_software() && !args.quick {
            report.machine.notes.push(format!(
                "'{}' is a software adapter: the full GPU bench at batch 600 takes a long time \
                 (--quick uses a tenth of the batch)",
                g.adapter.name
            ));
        }
    }
    out.line(&machine_line(&report.machine));
    for n in &report.machine.notes {
        out.line(&format!("note: {n}"));
    }

    let reference = args.reference.as_deref().map(Reference::load).transpose()?;
    if let Some(r) = &reference {
        out.line(&format!("reference: {}", r.describe()));
    }
    let known: Vec<String> = STEP_CONFIGS.iter().map(StepConfig::name).collect();
    if let Some(bad) = args.config.iter().find(|c| !known.contains(c)) {
        anyhow::bail!(
            "--config: no step configuration '{bad}'; there are {}",
            known.join(", ")
        );
    }
    let new_plan = || {
        let mut plan = Plan::new(args.quick, args.steps);
        if !args.only.is_empty() {
            plan.sections = args.only.clone();
        }
        plan.configs = args.config.clone();
        plan.reference = reference.clone();
        plan
    };
    if matches!(args.device, BenchDevice::Cpu | BenchDevice::All) {
        let plan = new_plan();
        bench_device(&Cpu::new(), &plan, &mut report, &out, |_| Ok(()))?;
    }
    if let Some(g) = &gpu {
        let mut plan = new_plan();
        // Sizes that keep the ceilings meaningful on a real GPU and bearable on a software one.
        plan.matmul_size = match (g.adapter.is_software(), args.quick) {
            (false, false) => 4096,
            (false, true) => 2048,
            (true, false) => 512,
            (true, true) => 256,
        };
        let limit = g
            .limits
            .max_buffer_size
            .min(g.limits.max_storage_buffer_binding_size) as usize;
        plan.copy_bytes = (if args.quick { 64 << 20 } else { 256 << 20 }).min(limit / 4 * 4);
        if args.quick {
            plan.way = 6;
            plan.step_divisor = 10;
            plan.inference_batch = 32;
            let note = format!(
                "--quick on the GPU: kernels at batch {} (a {}-way {}-shot {}-query episode, a \
                 tenth of the 60-way batch of 600), step configurations of over 100 images with a \
                 tenth of the way (or pairs), inference batch {}",
                plan.batch(),
                plan.way,
                plan.shot,
                plan.query,
                plan.inference_batch
            );
            out.line(&format!("note: {note}"));
            report.machine.notes.push(note);
        }
        bench_device(g, &plan, &mut report, &out, |g| {
            g.check().map_err(anyhow::Error::from)
        })?;
    }
    Ok(report)
}

/// A blocking read that only waits for the device: a failed device yields no data here and is
/// reported by the section's device check (which records lost devices and validation errors),
/// so the benchmark ends with an error instead of a panic.
fn wait_for<B: Backend>(backend: &B, t: &B::Tensor) -> Vec<f32> {
    backend.try_read(t).unwrap_or_default()
}

/// Everything on one device: ceilings, kernels, steps, inference. `check` reports device
/// errors after each section.
fn bench_device<B: Backend + DeviceCeilings>(
    backend: &B,
    plan: &Plan,
    report: &mut BenchReport,
    out: &Printer,
    check: impl Fn(&B) -> Result<()>,
) -> Result<()> {
    let dev = backend.kind().to_string();
    out.line(&format!("\n== {dev}: {} ==", backend.describe()));

    let mut ceilings = vec![];
    if plan.runs(Section::Ceilings) {
        out.line(&format!("ceilings\n{}", ceiling_header()));
        ceilings.push(bench_copy(backend, plan));
        ceilings.extend(backend.memcpy_ceiling(plan));
        ceilings.push(backend.matmul_ceiling(plan));
        check(backend)?;
    }
    // The best of each kind is the ceiling the kernels are compared with.
    let best =
        |f: fn(&CeilingRow) -> Option<f64>| ceilings.iter().filter_map(f).fold(0.0f64, f64::max);
    let copy_gbps = best(|c| c.gbps);
    let mm_gflops = best(|c| c.gflops);
    for mut c in ceilings {
        c.used_as_ceiling = c.gbps == Some(copy_gbps) || c.gflops == Some(mm_gflops);
        out.line(&ceiling_line(&c));
        report.ceilings.push(c);
    }

    if plan.runs(Section::Kernels) {
        out.line(&format!(
        "\nkernels at batch {} ({}-way {}-shot {}-query, hidden {}; % of the matmul (mm) or copy (cp) ceiling)\n{}",
        plan.batch(),
        plan.way,
        plan.shot,
        plan.query,
        plan.hidden,
        kernel_header()
    ));
        let mut emit = |mut row: KernelRow| {
            row.fraction_of_ceiling = match row.bound.as_str() {
                "compute" => row.gflops.map(|g| g / mm_gflops),
                _ => row.gbps.map(|b| b / copy_gbps),
            }
            .filter(|f| f.is_finite() && *f > 0.0);
            out.line(&kernel_line(&row));
            report.kernels.push(row);
        };
        bench_kernels(backend, plan, &mut emit);
        check(backend)?;
    }

    if plan.runs(Section::Steps) {
        out.line(&format!(
            "\ntraining steps ({} warm-up, median of {} steps)\n{}",
            plan.warmup_steps,
            plan.steps,
            step_header()
        ));
        for mut row in bench_steps(backend, plan) {
            if let Some(ms) = plan.reference.as_ref().and_then(|r| r.step_ms(&row)) {
                row.reference_ms = Some(ms);
                row.ratio_to_reference = Some(row.median_ms / ms);
            }
            out.line(&step_line(&row));
            report.steps.push(row);
        }
        check(backend)?;
    }

    if plan.runs(Section::Inference) {
        out.line(&format!("\ninference\n{}", inference_header()));
        let mut row = bench_inference(backend, plan);
        if let Some(ips) = plan
            .reference
            .as_ref()
            .and_then(|r| r.inference(&row.device))
        {
            row.reference_images_per_s = Some(ips);
            row.ratio_to_reference = Some(ips / row.images_per_s);
        }
        out.line(&inference_line(&row));
        report.inference.push(row);
        check(backend)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ceilings

fn bench_copy<B: Backend>(backend: &B, plan: &Plan) -> CeilingRow {
    let len = plan.copy_bytes / 4;
    let src = backend.tensor_from(&random_vec(len, 1, -1.0, 1.0));
    let dst = backend.zeros(len);
    let sync = backend.zeros(1);
    let timing = measure(
        plan,
        || backend.copy(&src, &dst),
        || {
            wait_for(backend, &sync);
        },
    );
    let bytes = 2.0 * (len * 4) as f64;
    CeilingRow {
        device: backend.kind().into(),
        kind: "copy".into(),
        shape: format!("{} MiB (read + write)", (len * 4) >> 20),
        gflops: None,
        gbps: Some(bytes / (timing.median_ms * 1e-3) / 1e9),
        used_as_ceiling: false,
        timing,
    }
}

/// Ceilings beyond `Backend::copy`: the device's tuned matmul (the `gemm` crate on the CPU,
/// `shaders/matmul.wgsl` on the GPU) and, on the CPU, a plain parallel memcpy.
pub trait DeviceCeilings {
    fn matmul_ceiling(&self, plan: &Plan) -> CeilingRow;
    fn memcpy_ceiling(&self, _plan: &Plan) -> Option<CeilingRow> {
        None
    }
}

impl DeviceCeilings for Cpu {
    /// `Cpu::copy` goes through a temporary (its two views may share one buffer); this is
    /// what the memory system does for a straight copy between two preallocated buffers.
    fn memcpy_ceiling(&self, plan: &Plan) -> Option<CeilingRow> {
        use rayon::prelude::*;
        let len = plan.copy_bytes / 4;
        let src = random_vec(len, 1, -1.0, 1.0);
        let mut dst = vec![0.0f32; len];
        const CHUNK: usize = 1 << 18;
        let timing = measure(
            plan,
            || {
                dst.par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(d, s)| d.copy_from_slice(s))
            },
            || {},
        );
        std::hint::black_box(&dst);
        let bytes = 2.0 * (len * 4) as f64;
        Some(CeilingRow {
            device: "cpu".into(),
            kind: "memcpy".into(),
            shape: format!(
                "{} MiB (read + write, {} thr)",
                (len * 4) >> 20,
                rayon::current_num_threads()
            ),
            gflops: None,
            gbps: Some(bytes / (timing.median_ms * 1e-3) / 1e9),
            used_as_ceiling: false,
            timing,
        })
    }

    fn matmul_ceiling(&self, plan: &Plan) -> CeilingRow {
        let n = plan.matmul_size;
        let a = random_vec(n * n, 2, -1.0, 1.0);
        let b = random_vec(n * n, 3, -1.0, 1.0);
        let mut c = vec![0.0f32; n * n];
        let threads = rayon::current_num_threads();
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let timing = measure(
            plan,
            || {
                // SAFETY: a, b and c are live n*n buffers addressed with row-major strides,
                // and c is exclusively borrowed, so it aliases neither input.
                unsafe {
                    gemm::gemm(
                        n,
                        n,
                        n,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        n as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            },
            || {},
        );
        std::hint::black_box(&c);
        CeilingRow {
            device: "cpu".into(),
            kind: "matmul".into(),
            shape: format!("sgemm {n}x{n}x{n} (gemm crate, {threads} thr)"),
            gflops: Some(matmul::flops(n, n, n) / (timing.median_ms * 1e-3) / 1e9),
            gbps: None,
            used_as_ceiling: false,
            timing,
        }
    }
}

impl DeviceCeilings for Gpu {
    fn matmul_ceiling(&self, plan: &Plan) -> CeilingRow {
        let n = plan.matmul_size;
        let a = self.upload_f32(&random_vec(n * n, 2, -1.0, 1.0));
        let b = self.upload_f32(&random_vec(n * n, 3, -1.0, 1.0));
        let c = self.tensor(n * n);
        let sync = self.tensor(1);
        let timing = measure(
            plan,
            || matmul::matmul(self, n, n, n, &a, &b, &c),
            || {
                Backend::read(self, &sync);
            },
        );
        CeilingRow {
            device: "gpu".into(),
            kind: "matmul".into(),
            shape: format!("sgemm {n}x{n}x{n} (matmul.wgsl, 64x64 tiles)"),
            gflops: Some(matmul::flops(n, n, n) / (timing.median_ms * 1e-3) / 1e9),
            gbps: None,
            used_as_ceiling: false,
            timing,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels

fn row(
    dev: &str,
    kernel: &str,
    layer: Option<usize>,
    shape: String,
    timing: Timing,
    flops: Option<f64>,
    bytes: Option<f64>,
) -> KernelRow {
    let secs = timing.median_ms * 1e-3;
    KernelRow {
        device: dev.into(),
        kernel: kernel.into(),
        layer,
        shape,
        bound: if flops.is_some() { "compute" } else { "memory" }.into(),
        flops,
        bytes,
        gflops: flops.map(|f| f / secs / 1e9),
        gbps: bytes.map(|b| b / secs / 1e9),
        fraction_of_ceiling: None,
        timing,
    }
}

/// Every kernel of a training step at the plan's episode shapes.
fn bench_kernels<B: Backend>(backend: &B, plan: &Plan, emit: &mut impl FnMut(KernelRow)) {
    let dev = backend.kind();
    let cfg = plan.cfg();
    let n = plan.batch();
    let sync = backend.zeros(1);
    let wait = || {
        wait_for(backend, &sync);
    };
    let f4 = |elems: usize| 4.0 * elems as f64;

    for b in 0..cfg.blocks {
        let s = cfg.size_at(b);
        let cs = ConvShape::same3x3(n, cfg.channels_at(b), cfg.hidden, s, s);
        let seed = 100 * b as u64;
        let x = backend.tensor_from(&random_vec(cs.input_len(), seed, -1.0, 1.0));
        let w = backend.tensor_from(&random_vec(cs.weight_len(), seed + 1, -0.1, 0.1));
        let bias = backend.tensor_from(&random_vec(cs.out_channels, seed + 2, -0.1, 0.1));
        let y = backend.zeros(cs.output_len());
        let gy = backend.tensor_from(&random_vec(cs.output_len(), seed + 3, -1.0, 1.0));
        let gx = backend.zeros(cs.input_len());
        let gw = backend.zeros(cs.weight_len());
        let gb = backend.zeros(cs.out_channels);
        let shape = format!("{n}x{}x{s}x{s} -> {}, 3x3", cs.in_channels, cs.out_channels);
        let flops = Some(cs.forward_flops());
        let l = Some(b + 1);
        let t = measure(
            plan,
            || backend.conv2d_forward(&cs, &x, &w, &bias, &y),
            wait,
        );
        emit(row(dev, "conv2d_forward", l, shape.clone(), t, flops, None));
        let t = measure(
            plan,
            || backend.conv2d_backward_input(&cs, &gy, &w, &gx),
            wait,
        );
        emit(row(
            dev,
            "conv2d_backward_input",
            l,
            shape.clone(),
            t,
            flops,
            None,
        ));
        let t = measure(
            plan,
            || backend.conv2d_backward_weight(&cs, &x, &gy, &gw, &gb),
            wait,
        );
        emit(row(dev, "conv2d_backward_weight", l, shape, t, flops, None));
        drop((x, gx, w, gw, gb));

        // Batch norm (+ fused ReLU) on the conv output, then the 2x2 max pool.
        let c = cs.out_channels;
        let ns = NormShape {
            batch: n,
            channels: c,
            spatial: s * s,
        };
        let bn = BatchNorm::default();
        let gamma = backend.tensor_from(&random_vec(c, seed + 4, 0.5, 1.5));
        let beta = backend.tensor_from(&random_vec(c, seed + 5, -0.1, 0.1));
        let (mean, istd) = (backend.zeros(c), backend.zeros(c));
        let (rmean, rvar) = (backend.zeros(c), backend.tensor_from(&vec![1.0; c]));
        let (ggamma, gbeta) = (backend.zeros(c), backend.zeros(c));
        let z = backend.zeros(ns.len());
        let gz = backend.tensor_from(&random_vec(ns.len(), seed + 6, -1.0, 1.0));
        backend.write(&y, &random_vec(ns.len(), seed + 7, -2.0, 2.0));
        let shape = format!("{n}x{c}x{s}x{s}");
        let t = measure(
            plan,
            || {
                backend
                    .batch_norm_train(&ns, &bn, &y, &gamma, &beta, &z, &mean, &istd, &rmean, &rvar)
            },
            wait,
        );
        let bytes = f4(2 * ns.len() + 8 * c);
        emit(row(
            dev,
            "batch_norm_train",
            l,
            shape.clone(),
            t,
            None,
            Some(bytes),
        ));
        let t = measure(
            plan,
            || {
                backend.batch_norm_backward(
                    &ns, &bn, &y, &z, &gz, &gamma, &mean, &istd, &gy, &ggamma, &gbeta,
                )
            },
            wait,
        );
        let bytes = f4(4 * ns.len() + 5 * c);
        emit(row(
            dev,
            "batch_norm_backward",
            l,
            shape.clone(),
            t,
            None,
            Some(bytes),
        ));

        let ps = PoolShape {
            batch: n,
            channels: c,
            height: s,
            width: s,
        };
        let pooled = backend.zeros(ps.output_len());
        let gpooled = backend.tensor_from(&random_vec(ps.output_len(), seed + 8, -1.0, 1.0));
        let t = measure(plan, || backend.max_pool_forward(&ps, &z, &pooled), wait);
        let bytes = f4(ps.input_len() + ps.output_len());
        emit(row(
            dev,
            "max_pool_forward",
            l,
            shape.clone(),
            t,
            None,
            Some(bytes),
        ));
        let t = measure(
            plan,
            || backend.max_pool_backward(&ps, &z, &gpooled, &gz),
            wait,
        );
        let bytes = f4(2 * ps.input_len() + ps.output_len());
        emit(row(
            dev,
            "max_pool_backward",
            l,
            shape.clone(),
            t,
            None,
            Some(bytes),
        ));

        // The fused pair the model runs (on backends without a fused version: the ops above in
        // sequence). Bytes: what the fused CPU version must move (statistics read plus the
        // normalising read of x, the pooled write; backward: x twice, the routed gradient
        // written and read, dx written, the pooled gradient read), so the GB/s compare.
        let t = measure(
            plan,
            || {
                backend.batch_norm_pool_train(
                    &ps, &bn, &y, &gamma, &beta, &pooled, &mean, &istd, &rmean, &rvar,
                )
            },
            wait,
        );
        let bytes = f4(2 * ps.input_len() + ps.output_len() + 8 * c);
        emit(row(
            dev,
            "batch_norm_pool_train",
            l,
            shape.clone(),
            t,
            None,
            Some(bytes),
        ));
        let t = measure(
            plan,
            || {
                backend.pool_batch_norm_backward(
                    &ps, &bn, &y, &gpooled, &gamma, &beta, &mean, &istd, &gz, &gy, &ggamma, &gbeta,
                )
            },
            wait,
        );
        let bytes = f4(5 * ps.input_len() + 2 * ps.output_len() + 5 * c);
        emit(row(
            dev,
            "pool_batch_norm_backward",
            l,
            shape,
            t,
            None,
            Some(bytes),
        ));
    }

    // The ProtoNet head: prototypes, distances, softmax cross-entropy.
    let dim = cfg.embedding_dim();
    let (way, n_s, n_q) = (plan.way, plan.way * plan.shot, plan.way * plan.query);
    let support = backend.tensor_from(&random_vec(n_s * dim, 7, -1.0, 1.0));
    let queries = backend.tensor_from(&random_vec(n_q * dim, 8, -1.0, 1.0));
    let support_labels: Vec<u32> = (0..n_s).map(|i| (i / plan.shot) as u32).collect();
    let query_labels: Vec<u32> = (0..n_q).map(|i| (i / plan.query) as u32).collect();
    let support_labels = backend.index_from(&support_labels);
    let query_labels = backend.index_from(&query_labels);
    let protos = backend.zeros(way * dim);
    let gprotos = backend.tensor_from(&random_vec(way * dim, 9, -1.0, 1.0));
    let gsupport = backend.zeros(n_s * dim);
    let t = measure(
        plan,
        || backend.prototypes(way, dim, &support, &support_labels, &protos),
        wait,
    );
    let shape = format!("{n_s} support x {dim} -> {way}");
    emit(row(
        dev,
        "prototypes",
        None,
        shape.clone(),
        t,
        None,
        Some(f4(n_s * dim + n_s + way * dim)),
    ));
    let t = measure(
        plan,
        || backend.prototypes_backward(way, dim, &support_labels, &gprotos, &gsupport),
        wait,
    );
    emit(row(
        dev,
        "prototypes_backward",
        None,
        shape,
        t,
        None,
        Some(f4(way * dim + n_s + n_s * dim)),
    ));

    let dist = backend.zeros(n_q * way);
    let gdist = backend.tensor_from(&random_vec(n_q * way, 10, -1.0, 1.0));
    let (gq, gp) = (backend.zeros(n_q * dim), backend.zeros(way * dim));
    let abd = (n_q * way * dim) as f64;
    let shape = format!("{n_q} x {way} x {dim}");
    let t = measure(
        plan,
        || backend.pairwise_sq_dist(n_q, way, dim, &queries, &protos, &dist),
        wait,
    );
    emit(row(
        dev,
        "pairwise_sq_dist",
        None,
        shape.clone(),
        t,
        Some(3.0 * abd),
        None,
    ));
    let t = measure(
        plan,
        || backend.pairwise_sq_dist_backward(n_q, way, dim, &queries, &protos, &gdist, &gq, &gp),
        wait,
    );
    emit(row(
        dev,
        "pairwise_sq_dist_backward",
        None,
        shape,
        t,
        Some(8.0 * abd),
        None,
    ));

    backend.write(&dist, &random_vec(n_q * way, 11, 0.0, 50.0));
    let (correct, stats) = (backend.zeros(n_q), backend.zeros(2));
    let t = measure(
        plan,
        || backend.softmax_xent(n_q, way, &dist, &query_labels, &gdist, &correct, &stats),
        wait,
    );
    emit(row(
        dev,
        "softmax_xent",
        None,
        format!("{n_q} x {way}"),
        t,
        None,
        Some(f4(2 * n_q * way + 2 * n_q + 2)),
    ));

    // Adam over the full parameter vector.
    let p_len = Layout::new(&cfg).param_len;
    let params = backend.tensor_from(&random_vec(p_len, 12, -0.1, 0.1));
    let grads = backend.tensor_from(&random_vec(p_len, 13, -0.01, 0.01));
    let (m, v) = (backend.zeros(p_len), backend.zeros(p_len));
    let step = AdamStep::new(1e-3, 1);
    let t = measure(plan, || backend.adam(&step, &params, &grads, &m, &v), wait);
    emit(row(
        dev,
        "adam",
        None,
        format!("{p_len} params"),
        t,
        None,
        Some(f4(7 * p_len)),
    ));

    // Episode assembly from the device-resident dataset.
    let item = cfg.image_len();
    let dataset = backend.tensor_from(&random_vec(plan.dataset_images * item, 14, 0.0, 1.0));
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let idx: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..plan.dataset_images as u32))
        .collect();
    let indices = backend.index_from(&idx);
    let images = backend.zeros(n * item);
    let t = measure(
        plan,
        || backend.gather(item, &dataset, &indices, &images),
        wait,
    );
    emit(row(
        dev,
        "gather",
        None,
        format!("{n} of {} images x {item}", plan.dataset_images),
        t,
        None,
        Some(f4(2 * n * item + n)),
    ));
}

// ---------------------------------------------------------------------------------------------
// Training steps and inference

/// A training-step configuration of the step table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepConfig {
    Protonet {
        way: usize,
        shot: usize,
        query: usize,
    },
    /// Siamese network, contrastive loss, `pairs` pairs (2 * pairs images) per step.
    Siamese { pairs: usize },
}

/// The configurations of the step table, as named in the report.
pub const STEP_CONFIGS: [StepConfig; 5] = [
    StepConfig::Protonet {
        way: 60,
        shot: 5,
        query: 5,
    },
    StepConfig::Protonet {
        way: 60,
        shot: 1,
        query: 5,
    },
    StepConfig::Protonet {
        way: 20,
        shot: 1,
        query: 15,
    },
    StepConfig::Protonet {
        way: 5,
        shot: 1,
        query: 15,
    },
    StepConfig::Siamese { pairs: 128 },
];

impl StepConfig {
    pub fn name(&self) -> String {
        match self {
            StepConfig::Protonet { way, shot, query } => {
                format!("protonet-{way}w{shot}s{query}q")
            }
            StepConfig::Siamese { pairs } => format!("siamese-{pairs}"),
        }
    }
    pub fn images_per_step(&self) -> usize {
        match self {
            StepConfig::Protonet { way, shot, query } => way * (shot + query),
            StepConfig::Siamese { pairs } => 2 * pairs,
        }
    }
    /// The same configuration with the way (or pairs) divided by `d` (at least 2); configs of
    /// at most 100 images stay as they are.
    fn reduced(&self, d: usize) -> Self {
        if self.images_per_step() <= 100 {
            return *self;
        }
        match *self {
            StepConfig::Protonet { way, shot, query } => StepConfig::Protonet {
                way: (way / d).max(2),
                shot,
                query,
            },
            StepConfig::Siamese { pairs } => StepConfig::Siamese {
                pairs: (pairs / d).max(2),
            },
        }
    }
}

/// Median step time of every configuration in [`STEP_CONFIGS`]: the real step functions on a
/// random device-resident dataset, fresh random episode indices written every step, each step
/// flushed and its `stats` read resolved before the next one starts.
fn bench_steps<B: Backend>(backend: &B, plan: &Plan) -> Vec<StepRow> {
    let cfg = plan.cfg();
    let dataset = backend.tensor_from(&random_vec(
        plan.dataset_images * cfg.image_len(),
        20,
        0.0,
        1.0,
    ));
    let (params, stats) = init_params(&cfg, 0);
    let mut rows = vec![];
    for requested in STEP_CONFIGS {
        if !plan.configs.is_empty() && !plan.configs.contains(&requested.name()) {
            continue;
        }
        let config = if plan.step_divisor > 1 {
            requested.reduced(plan.step_divisor)
        } else {
            requested
        };
        let model = Conv4::new(backend, cfg.clone(), &params, &stats);
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let images = config.images_per_step();
        let random_indices = |rng: &mut ChaCha8Rng| -> Vec<u32> {
            (0..images)
                .map(|_| rng.random_range(0..plan.dataset_images as u32))
                .collect()
        };
        let mut times = vec![];
        let mut last_loss = f64::NAN;
        let total = plan.warmup_steps + plan.steps;
        match config {
            StepConfig::Protonet { way, shot, query } => {
                let buf = ProtoBuffers::new(backend, &model, way, shot, query);
                backend.flush();
                for step in 0..total {
                    let start = Instant::now();
                    backend.write_index(&buf.indices, &random_indices(&mut rng));
                    let adam = AdamStep::new(1e-3, step as u32 + 1);
                    protonet_step(backend, &model, &buf, Some(&dataset), &adam);
                    let pending = backend.read_deferred(&buf.stats);
                    backend.flush();
                    let s = backend
                        .resolve(&pending, true)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    if step >= plan.warmup_steps {
                        times.push(start.elapsed().as_secs_f64());
                    }
                    last_loss = s.first().map_or(f64::NAN, |&l| l as f64);
                }
            }
            StepConfig::Siamese { pairs } => {
                let buf = PairBuffers::new(backend, &model, pairs);
                let same: Vec<f32> = (0..pairs).map(|i| (i % 2) as f32).collect();
                backend.write(&buf.same, &same);
                backend.flush();
                for step in 0..total {
                    let start = Instant::now();
                    backend.write_index(&buf.indices, &random_indices(&mut rng));
                    let adam = AdamStep::new(1e-3, step as u32 + 1);
                    siamese_step(
                        backend,
                        &model,
                        &buf,
                        Some(&dataset),
                        PairLoss::Contrastive,
                        1.0,
                        &adam,
                    );
                    let pending = backend.read_deferred(&buf.stats);
                    backend.flush();
                    let s = backend
                        .resolve(&pending, true)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    if step >= plan.warmup_steps {
                        times.push(start.elapsed().as_secs_f64());
                    }
                    last_loss = s.first().map_or(f64::NAN, |&l| l as f64);
                }
            }
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let med = median(&mut times);
        rows.push(StepRow {
            config: config.name(),
            requested: (config != requested).then(|| requested.name()),
            device: backend.kind().into(),
            median_ms: med * 1e3,
            min_ms: min * 1e3,
            mean_ms: mean * 1e3,
            steps: plan.steps,
            warmup_steps: plan.warmup_steps,
            images_per_step: images,
            images_per_s: images as f64 / med,
            last_loss,
            reference_ms: None,
            ratio_to_reference: None,
        });
    }
    rows
}

/// Eval-mode embedding of a batch, as `embed_all` does it: upload, forward, read back.
fn bench_inference<B: Backend>(backend: &B, plan: &Plan) -> InferenceRow {
    let cfg = plan.cfg();
    let (params, stats) = init_params(&cfg, 0);
    let model = Conv4::new(backend, cfg.clone(), &params, &stats);
    let batch = plan.inference_batch;
    let act = model.activations(backend, batch, false);
    let images = random_vec(batch * cfg.image_len(), 30, 0.0, 1.0);
    let mut trials = plan.clone();
    // One batch per rep is the unit; the trial wait is the read inside the op itself.
    trials.target_s = 0.0;
    let timing = measure(
        &trials,
        || {
            backend.write(&act.input, &images);
            model.forward(backend, &act, false);
            std::hint::black_box(wait_for(backend, act.embedding()));
        },
        || {},
    );
    InferenceRow {
        device: backend.kind().into(),
        batch,
        images_per_s: batch as f64 / (timing.median_ms * 1e-3),
        timing,
        reference_images_per_s: None,
        ratio_to_reference: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reference runs (`--reference`)

/// The figures of a reference run (the PyTorch peer's speed records) that the step and
/// inference rows compare with, keyed by fewshot's device kind ("cpu" or "gpu").
#[derive(Clone, Debug, Default)]
pub struct Reference {
    pub source: String,
    /// `(device, config) -> median ms`.
    pub steps: Vec<((String, String), f64)>,
    /// `device -> images/s` at 28x28x1.
    pub inference: Vec<(String, f64)>,
}

impl Reference {
    /// Reads the peer's suite JSON (`{"results": [...]}`), a JSON array of records, or JSON
    /// lines (other lines are skipped). Records that fewshot has no counterpart for (other
    /// sizes, the Koch loss, micro-kernels) are ignored.
    pub fn load(path: &std::path::Path) -> Result<Reference> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--reference {}: {e}", path.display()))?;
        let records: Vec<serde_json::Value> = match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(mut o)) => match o.remove("results") {
                Some(serde_json::Value::Array(a)) => a,
                _ => vec![serde_json::Value::Object(o)],
            },
            Ok(serde_json::Value::Array(a)) => a,
            _ => text
                .lines()
                .filter_map(|l| serde_json::from_str(l.trim()).ok())
                .collect(),
        };
        let r = Reference::from_records(&path.display().to_string(), &records);
        if r.steps.is_empty() && r.inference.is_empty() {
            anyhow::bail!(
                "--reference {}: no training-step or inference records at 28x28x1 found (expected \
                 the output of fewshot_torch.py --mode speed)",
                path.display()
            );
        }
        Ok(r)
    }

    pub fn from_records(source: &str, records: &[serde_json::Value]) -> Reference {
        let mut r = Reference {
            source: source.to_string(),
            ..Default::default()
        };
        for rec in records {
            let num = |k: &str| rec[k].as_f64();
            if num("channels").unwrap_or(1.0) != 1.0 || num("size").unwrap_or(28.0) != 28.0 {
                continue;
            }
            let device = match rec["device"].as_str() {
                Some("cpu") => "cpu",
                Some(_) => "gpu",
                None => continue,
            }
            .to_string();
            match rec["kind"].as_str() {
                Some("train_step") => {
                    let int = |k: &str| rec[k].as_u64().unwrap_or(0);
                    let config = match (rec["method"].as_str(), rec["loss"].as_str()) {
                        (Some("protonet"), _) => {
                            format!("protonet-{}w{}s{}q", int("way"), int("shot"), int("query"))
                        }
                        (Some("siamese"), Some("contrastive")) => {
                            format!("siamese-{}", int("pairs"))
                        }
                        _ => continue,
                    };
                    if let Some(s) = num("median_s") {
                        r.steps.push(((device, config), s * 1e3));
                    }
                }
                Some("inference") => {
                    if let Some(ips) = num("images_per_s") {
                        r.inference.push((device, ips));
                    }
                }
                _ => {}
            }
        }
        r
    }

    fn step_ms(&self, row: &StepRow) -> Option<f64> {
        let key = (row.device.clone(), row.config.clone());
        self.steps.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn inference(&self, device: &str) -> Option<f64> {
        self.inference
            .iter()
            .find(|(d, _)| d == device)
            .map(|(_, v)| *v)
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} step records, {} inference records)",
            self.source,
            self.steps.len(),
            self.inference.len()
        )
    }
}
