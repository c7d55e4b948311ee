//! `cargo bench --bench kernels`: the same measurements as `fewshot bench`, printed as tables.
//!
//! Arguments after `--` are those of `fewshot bench` (e.g. `cargo bench --bench kernels --
//! --device cpu --quick`); the `--bench` flag cargo adds is ignored.

use clap::Parser;

#[derive(Parser)]
#[command(name = "kernels")]
struct Cli {
    #[command(flatten)]
    bench: fewshot::bench::BenchArgs,
    /// Added by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench_flag: bool,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .map(|a| {
            if a == "--bench" {
                "--bench-flag".to_string()
            } else {
                a
            }
        })
        .collect();
    let cli = Cli::parse_from(args);
    if let Err(e) = fewshot::bench::run_cli(&cli.bench) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
