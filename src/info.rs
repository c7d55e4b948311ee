//! `fewshot info`: every adapter wgpu sees, the limits that matter, and which one would be used.

use serde::Serialize;

use crate::gpu::{context::choose_adapter, list_adapters, AdapterSummary};

#[derive(Serialize)]
pub struct Info {
    pub adapters: Vec<AdapterSummary>,
    /// The adapter `--device gpu` would use (index into `adapters`), if any.
    pub gpu_adapter: Option<usize>,
    /// What `--device auto` would train on: "gpu" or "cpu".
    pub auto_device: String,
    pub auto_reason: String,
    pub wgpu_backend_env: Option<String>,
}

pub fn gather_info(adapter: Option<&str>) -> Info {
    let adapters = list_adapters();
    let chosen = choose_adapter(adapter).ok().map(|a| AdapterSummary::of(&a));
    let gpu_adapter = chosen.as_ref().and_then(|c| {
        adapters
            .iter()
            .position(|a| a.name == c.name && a.backend == c.backend)
    });
    let (auto_device, auto_reason) = match &chosen {
        None => ("cpu".to_string(), "no GPU adapter".to_string()),
        Some(c) if c.is_software() => (
            "cpu".to_string(),
            format!(
                "'{}' is a software adapter, slower than the CPU path",
                c.name
            ),
        ),
        Some(c) => ("gpu".to_string(), format!("'{}' ({})", c.name, c.backend)),
    };
    Info {
        adapters,
        gpu_adapter,
        auto_device,
        auto_reason,
        wgpu_backend_env: std::env::var("WGPU_BACKEND").ok(),
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

pub fn print_info(info: &Info) {
    if info.adapters.is_empty() {
        println!(
            "no GPU adapters found.\n{}",
            crate::gpu::context::NO_ADAPTER_HELP
        );
    }
    for (i, a) in info.adapters.iter().enumerate() {
        println!("[{i}] {}", a.name);
        println!(
            "    backend {}, type {}, driver {} {}",
            a.backend, a.device_type, a.driver, a.driver_info
        );
        println!(
            "    max storage binding {}, max buffer {}, workgroup storage {} KiB, invocations/workgroup {}, workgroups/dim {}",
            mib(a.max_storage_buffer_binding_size),
            mib(a.max_buffer_size),
            a.max_compute_workgroup_storage_size / 1024,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroups_per_dimension
        );
        println!(
            "    features: timestamp queries {}, f16 {}, subgroups {}",
            yes(a.timestamp_query),
            yes(a.shader_f16),
            yes(a.subgroups)
        );
    }
    match info.gpu_adapter {
        Some(i) => println!(
            "--device gpu uses [{i}] {} ({})",
            info.adapters[i].name, info.adapters[i].backend
        ),
        None => println!("--device gpu: no adapter available"),
    }
    println!(
        "--device auto trains on the {} ({})",
        info.auto_device, info.auto_reason
    );
    if let Some(b) = &info.wgpu_backend_env {
        println!("WGPU_BACKEND={b}");
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
