//! The `fewshot` command line: a thin layer over the library.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fewshot",
    version,
    about = "Few-shot image classification (prototypical and Siamese networks) on any GPU via wgpu, or on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a prototypical or Siamese network (default: ProtoNet on the built-in synthetic data).
    Train(Box<fewshot::cli::TrainArgs>),
    /// Evaluate a checkpoint on N-way K-shot test episodes (mean accuracy ± 95% CI).
    Eval(Box<fewshot::cli::EvalArgs>),
    /// Classify images given a folder of labelled examples (one sub-folder per class).
    Predict(Box<fewshot::cli::PredictArgs>),
    /// Train ProtoNet and Siamese (contrastive, Koch) alike and evaluate all on the same test episodes.
    Compare(Box<fewshot::compare::CompareArgs>),
    /// Measure kernel throughput against the device's copy and matmul ceilings, training-step
    /// times and inference speed, on the CPU and on the GPU.
    Bench(Box<fewshot::bench::BenchArgs>),
    /// List GPU adapters, their limits and features, and which one training would use.
    Info {
        /// Pick the adapter whose name contains this (case-insensitive).
        #[arg(long)]
        adapter: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Print only the backend of the adapter `--device gpu` would use (for scripts).
        #[arg(long, conflicts_with_all = ["json", "chosen"])]
        chosen_backend: bool,
        /// Print only the name and backend of the adapter `--device gpu` would use.
        #[arg(long, conflicts_with = "json")]
        chosen: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // First Ctrl-C: the trainer saves a checkpoint and stops after the current step.
    // A second one exits at once (the previous checkpoint stays valid: writes are atomic).
    let _ = ctrlc::set_handler(|| {
        use std::sync::atomic::Ordering;
        if fewshot::train::trainer::INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: saving a checkpoint after this step (Ctrl-C again to quit at once)"
        );
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(i) = e.downcast_ref::<fewshot::train::trainer::Interrupted>() {
                eprintln!("{i}");
                return ExitCode::from(130);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => {
            let report = fewshot::cli::run_train(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                eprintln!(
                    "trained {} episodes in {:.1} s on {} ({}); checkpoints in {}",
                    report.episodes,
                    report.seconds,
                    report.device,
                    report.adapter,
                    report.out.display()
                );
                println!("test classes:");
                fewshot::cli::print_eval_table(&report.eval);
            }
            Ok(())
        }
        Command::Eval(args) if args.lake_runs.is_some() => {
            let runs = args.lake_runs.clone().unwrap_or_default();
            let report = fewshot::cli::run_lake_eval(&args, &runs)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} ({}), rule: {}",
                    report.method,
                    report.loss.as_deref().unwrap_or("prototypical loss"),
                    report.rule
                );
                println!("{}", report.report);
            }
            Ok(())
        }
        Command::Eval(args) => {
            let report = fewshot::cli::run_eval(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} ({}) on {} test classes, rule: {}",
                    report.method,
                    report.loss.as_deref().unwrap_or("prototypical loss"),
                    report.dataset,
                    if report.prototypes {
                        "class-mean prototypes"
                    } else {
                        "mean score over support examples"
                    }
                );
                fewshot::cli::print_eval_table(&report.eval);
            }
            Ok(())
        }
        Command::Predict(args) => {
            let report = fewshot::cli::run_predict(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "classes: {} (rule: {})",
                    report.classes.join(", "),
                    report.rule
                );
                for p in &report.predictions {
                    let d: Vec<String> = report
                        .classes
                        .iter()
                        .zip(&p.distances)
                        .map(|(c, d)| format!("{c}={d:.3}"))
                        .collect();
                    println!("{}: {}  [{}]", p.image.display(), p.class, d.join(" "));
                }
            }
            Ok(())
        }
        Command::Compare(args) => {
            let report = fewshot::compare::run_compare(&args)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                fewshot::compare::print_table(&report);
            }
            Ok(())
        }
        Command::Bench(args) => fewshot::bench::run_cli(&args),
        Command::Info {
            adapter,
            json,
            chosen_backend,
            chosen,
        } => {
            let info = fewshot::info::gather_info(adapter.as_deref());
            let pick = info.gpu_adapter.map(|i| &info.adapters[i]);
            if chosen_backend || chosen {
                let a = pick
                    .ok_or_else(|| anyhow::anyhow!("{}", fewshot::gpu::context::NO_ADAPTER_HELP))?;
                if chosen_backend {
                    println!("{}", a.backend);
                } else {
                    println!("{} ({}, {})", a.name, a.backend, a.device_type);
                }
            } else if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                fewshot::info::print_info(&info);
            }
            Ok(())
        }
    }
}
