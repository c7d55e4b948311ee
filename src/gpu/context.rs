//! Device setup and the dispatch machinery every kernel launcher uses.
//!
//! Set-up is built once ([`Gpu::new`]): instance (honouring `WGPU_BACKEND`), adapter, device
//! with the adapter's own limits. Pipelines are compiled on first use and cached for the life
//! of the context. Kernel launches are *recorded* ([`Gpu::dispatch`]) and submitted together by
//! [`Gpu::flush`], so a whole training step is one `queue.submit`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What a user without a GPU needs to read.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found. fewshot needs a Vulkan, Metal or DX12 \
driver. On Linux without a GPU install Mesa's software Vulkan driver (lavapipe): \
`sudo apt-get install mesa-vulkan-drivers` (Debian/Ubuntu) or `sudo dnf install mesa-vulkan-drivers` \
(Fedora); `vulkaninfo --summary` (package vulkan-tools) should then list 'llvmpipe'. \
Or use the CPU path: `--device cpu`.";

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{NO_ADAPTER_HELP}")]
    NoAdapter,
    #[error("no adapter matches '{wanted}'; available: {available}")]
    NoMatchingAdapter { wanted: String, available: String },
    #[error("could not open the device on adapter '{adapter}': {source}")]
    RequestDevice {
        adapter: String,
        source: wgpu::RequestDeviceError,
    },
    #[error("GPU error: {0}")]
    Device(String),
}

/// One compute kernel: a WGSL file (compiled once into a module) and an entry point in it.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// File name, the cache key of the module.
    pub file: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
}

/// Summary of an adapter, for `fewshot info` and for messages.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub timestamp_query: bool,
    pub shader_f16: bool,
    pub subgroups: bool,
}

impl AdapterSummary {
    pub fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
        }
    }
    /// A software rasteriser (lavapipe, SwiftShader, WARP): correct but slower than our CPU path.
    pub fn is_software(&self) -> bool {
        self.device_type == "Cpu"
    }
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu can see (honouring `WGPU_BACKEND`).
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = instance();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().map(AdapterSummary::of).collect()
}

/// The adapter [`Gpu::new`] would choose for `wanted` (a case-insensitive name substring).
pub fn choose_adapter(wanted: Option<&str>) -> Result<wgpu::Adapter, GpuError> {
    let instance = instance();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    if adapters.is_empty() {
        return Err(GpuError::NoAdapter);
    }
    if let Some(wanted) = wanted {
        let needle = wanted.to_lowercase();
        return adapters
            .iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&needle))
            .cloned()
            .ok_or_else(|| GpuError::NoMatchingAdapter {
                wanted: wanted.to_string(),
                available: adapters
                    .iter()
                    .map(|a| {
                        let i = a.get_info();
                        format!("'{}' ({:?})", i.name, i.backend)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            });
    }
    // Prefer a discrete GPU, then integrated, then anything else; within a kind prefer Vulkan,
    // Metal and DX12 over GL (the GL fallback is what wgpu picks when the Vulkan driver is missing).
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        let backend = match info.backend {
            wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
            _ => 1,
        };
        (kind, backend)
    };
    adapters
        .iter()
        .min_by_key(|a| rank(a))
        .cloned()
        .ok_or(GpuError::NoAdapter)
}

enum Command {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        buffers: Vec<Arc<wgpu::Buffer>>,
        params: Vec<u32>,
        groups: [u32; 3],
    },
    Copy {
        src: Arc<wgpu::Buffer>,
        src_offset: u64,
        dst: Arc<wgpu::Buffer>,
        dst_offset: u64,
        size: u64,
    },
}

/// A read requested with [`Gpu::read_deferred`]: a staging buffer mapped after its submission.
pub struct GpuPending {
    staging: Arc<wgpu::Buffer>,
    len: usize,
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    mapped: AtomicBool,
}

#[derive(Default)]
struct Recorder {
    commands: Vec<Command>,
    /// Staging buffers to map once the commands that fill them are submitted.
    to_map: Vec<(Arc<wgpu::Buffer>, Arc<AtomicBool>, Arc<AtomicBool>)>,
}

/// Uniform parameters of each dispatch sit at a multiple of this stride in one buffer per flush
/// (256 bytes is the largest `min_uniform_buffer_offset_alignment` any adapter reports).
const PARAMS_STRIDE: u64 = 256;

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub limits: wgpu::Limits,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), wgpu::ComputePipeline>>,
    recorder: Mutex<Recorder>,
    params: Mutex<Option<wgpu::Buffer>>,
    scratch: Mutex<HashMap<&'static str, Arc<wgpu::Buffer>>>,
    /// Unmapped read-back buffers kept for reuse (a training step's deferred read takes one
    /// instead of allocating): sizes are powers of two, at most [`STAGING_POOL_MAX_BYTES`].
    staging_pool: Mutex<Vec<Arc<wgpu::Buffer>>>,
    /// Read-back buffers created so far (the pool's hit rate shows in tests).
    staging_created: std::sync::atomic::AtomicUsize,
    error: Arc<Mutex<Option<String>>>,
}

/// Read-back buffers up to this size are pooled for reuse; larger ones (whole-model downloads
/// of big networks) are allocated per read.
const STAGING_POOL_MAX_BYTES: u64 = 4 << 20;
/// At most this many idle read-back buffers are kept.
const STAGING_POOL_MAX_BUFFERS: usize = 16;

impl Gpu {
    /// Open a device on the chosen adapter (see [`choose_adapter`]).
    pub fn new(adapter_name: Option<&str>) -> Result<Gpu, GpuError> {
        let adapter = choose_adapter(adapter_name)?;
        Self::from_adapter(adapter)
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu, GpuError> {
        let summary = AdapterSummary::of(&adapter);
        // wgpu's default limits are lower than most adapters offer (128 MiB storage bindings,
        // 16 KiB workgroup memory); ask for what this adapter really has.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fewshot"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|source| GpuError::RequestDevice {
            adapter: summary.name.clone(),
            source,
        })?;
        // Validation errors and device loss are recorded and turned into `GpuError`s by
        // `check()` instead of wgpu's default (a panic).
        let error = Arc::new(Mutex::new(None));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        Ok(Gpu {
            device,
            queue,
            adapter: summary,
            limits,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            recorder: Mutex::default(),
            params: Mutex::new(None),
            scratch: Mutex::default(),
            staging_pool: Mutex::default(),
            staging_created: Default::default(),
            error,
        })
    }

    /// The first error the device reported since it was created (validation error, lost device).
    pub fn check(&self) -> Result<(), GpuError> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(e) => Err(GpuError::Device(e)),
            None => Ok(()),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {})",
            self.adapter.name, self.adapter.backend, self.adapter.device_type
        )
    }

    fn pipeline(&self, kernel: &Kernel) -> wgpu::ComputePipeline {
        let key = (kernel.file, kernel.entry);
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let module = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry(kernel.file)
                .or_insert_with(|| {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(kernel.file),
                            source: wgpu::ShaderSource::Wgsl(kernel.source.into()),
                        })
                })
                .clone()
        };
        // `layout: None` derives the bind group layout from the shader: binding 0 is the
        // uniform parameter block, bindings 1.. are the storage buffers in launch order.
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: Default::default(),
                cache: None,
            });
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        pipeline
    }

    /// Allocate a storage buffer of `len` 4-byte elements (zero-initialised by wgpu).
    pub fn buffer(&self, len: usize) -> Arc<wgpu::Buffer> {
        Arc::new(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// Record launches that pass intermediate results through a device buffer of at least `len`
    /// floats, named `key`, allocated once and reused by every later call (grown when needed;
    /// recorded dispatches keep their own reference, so replacing it is safe). The buffer stays
    /// locked while `record` runs, so concurrent callers on one context (the tests share one)
    /// record their launches wholly before or after each other, and recorded work runs in order.
    pub fn with_scratch<R>(
        &self,
        key: &'static str,
        len: usize,
        record: impl FnOnce(&Arc<wgpu::Buffer>) -> R,
    ) -> R {
        let mut cache = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let slot = cache.entry(key).or_insert_with(|| self.buffer(len));
        if (slot.size() as usize) < len.max(1) * 4 {
            *slot = self.buffer(len);
        }
        let buffer = slot.clone();
        record(&buffer)
    }

    /// Record one kernel launch. `params` are the 32-bit words of the shader's `Params` uniform
    /// struct, in declaration order (f32 values as `to_bits()`); `buffers` bind to 1, 2, ...
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        buffers: &[&Arc<wgpu::Buffer>],
        params: &[u32],
        groups: [u32; 3],
    ) {
        assert!(
            params.len() * 4 <= PARAMS_STRIDE as usize,
            "{}: too many params",
            kernel.entry
        );
        if groups.contains(&0) {
            return;
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups.iter().all(|&g| g <= max),
            "{}: dispatch {:?} exceeds the adapter's {} workgroups per dimension",
            kernel.entry,
            groups,
            max
        );
        let pipeline = self.pipeline(kernel);
        self.recorder
            .lock()
            .unwrap()
            .commands
            .push(Command::Dispatch {
                pipeline,
                buffers: buffers.iter().map(|b| (*b).clone()).collect(),
                params: params.to_vec(),
                groups,
            });
    }

    /// Workgroup counts for `n` threads in groups of `workgroup` along x, spilling into y when
    /// x would exceed the per-dimension limit. Shaders recover the linear index as
    /// `gid.x + gid.y * num_workgroups.x * WORKGROUP`.
    pub fn groups_1d(&self, n: usize, workgroup: u32) -> [u32; 3] {
        let groups = (n as u64).div_ceil(workgroup as u64);
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        if groups <= max {
            [groups as u32, 1, 1]
        } else {
            let y = groups.div_ceil(max);
            [groups.div_ceil(y) as u32, y as u32, 1]
        }
    }

    /// Record a buffer-to-buffer copy (offsets and size in bytes, multiples of 4).
    pub fn record_copy(
        &self,
        src: &Arc<wgpu::Buffer>,
        src_offset: u64,
        dst: &Arc<wgpu::Buffer>,
        dst_offset: u64,
        size: u64,
    ) {
        if size == 0 {
            return;
        }
        self.recorder.lock().unwrap().commands.push(Command::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            size,
        });
    }

    /// Write host data into a buffer. Recorded work is flushed first, so the write lands after
    /// everything recorded before it, as on the CPU path.
    pub fn write_bytes(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.flush();
        self.queue.write_buffer(buffer, offset, data);
    }

    /// Submit everything recorded so far as one command buffer.
    pub fn flush(&self) {
        // The recorder stays locked until the submission is queued, so flushes from several
        // threads (the tests share one context) submit in the order the work was recorded.
        let mut recorder = self.recorder.lock().unwrap_or_else(|p| p.into_inner());
        let Recorder { commands, to_map } = std::mem::take(&mut *recorder);
        if commands.is_empty() && to_map.is_empty() {
            return;
        }
        // All dispatch parameters of this submission in one uniform buffer.
        let n_dispatch = commands
            .iter()
            .filter(|c| matches!(c, Command::Dispatch { .. }))
            .count();
        let mut params_buf = self.params.lock().unwrap();
        let needed = (n_dispatch.max(1) as u64) * PARAMS_STRIDE;
        if params_buf.as_ref().is_none_or(|b| b.size() < needed) {
            *params_buf = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: needed.next_power_of_two(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let params_buf = params_buf.as_ref().expect("params buffer").clone();
        let mut words = vec![0u32; n_dispatch * (PARAMS_STRIDE as usize / 4)];
        let mut i = 0;
        for c in &commands {
            if let Command::Dispatch { params, .. } = c {
                let at = i * PARAMS_STRIDE as usize / 4;
                words[at..at + params.len()].copy_from_slice(params);
                i += 1;
            }
        }
        if !words.is_empty() {
            // Ordered before this submission, after every earlier one (queue order), so reusing
            // the buffer across flushes is safe.
            self.queue
                .write_buffer(&params_buf, 0, bytemuck::cast_slice(&words));
        }
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let mut i = 0u64;
        let mut iter = commands.iter().peekable();
        while let Some(c) = iter.next() {
            match c {
                Command::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    size,
                } => {
                    encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                }
                Command::Dispatch { .. } => {
                    // Consecutive dispatches share one compute pass; wgpu inserts the barriers
                    // between dispatches that depend on each other.
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    let mut cur = Some(c);
                    while let Some(Command::Dispatch {
                        pipeline,
                        buffers,
                        groups,
                        ..
                    }) = cur
                    {
                        let mut entries = vec![wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &params_buf,
                                offset: i * PARAMS_STRIDE,
                                size: wgpu::BufferSize::new(PARAMS_STRIDE),
                            }),
                        }];
                        for (j, b) in buffers.iter().enumerate() {
                            entries.push(wgpu::BindGroupEntry {
                                binding: j as u32 + 1,
                                resource: b.as_entire_binding(),
                            });
                        }
                        let bind_group =
                            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                                label: None,
                                layout: &pipeline.get_bind_group_layout(0),
                                entries: &entries,
                            });
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, &bind_group, &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        i += 1;
                        cur = match iter.peek() {
                            Some(Command::Dispatch { .. }) => iter.next(),
                            _ => None,
                        };
                    }
                }
            }
        }
        self.queue.submit(Some(encoder.finish()));
        for (staging, ready, failed) in to_map {
            staging
                .clone()
                .map_async(wgpu::MapMode::Read, .., move |r| {
                    if r.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    ready.store(true, Ordering::SeqCst);
                });
        }
    }

    /// Ask for `len` floats of `buffer` at element `offset`, as of the work recorded so far.
    pub fn request_read(
        &self,
        buffer: &Arc<wgpu::Buffer>,
        offset: usize,
        len: usize,
    ) -> GpuPending {
        let staging = self.staging_buffer((len.max(1) * 4) as u64);
        self.record_copy(buffer, offset as u64 * 4, &staging, 0, len as u64 * 4);
        let ready = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicBool::new(false));
        self.recorder
            .lock()
            .unwrap()
            .to_map
            .push((staging.clone(), ready.clone(), failed.clone()));
        GpuPending {
            staging,
            len,
            ready,
            failed,
            mapped: AtomicBool::new(false),
        }
    }

    /// Collect a deferred read; with `block`, waits for it.
    pub fn collect_read(
        &self,
        pending: &GpuPending,
        block: bool,
    ) -> Result<Option<Vec<f32>>, GpuError> {
        if pending.mapped.load(Ordering::SeqCst) {
            return Err(GpuError::Device("deferred read resolved twice".into()));
        }
        // Make sure the copy has been submitted.
        self.flush();
        if !pending.ready.load(Ordering::SeqCst) {
            if !block {
                self.device
                    .poll(wgpu::PollType::Poll)
                    .map_err(|e| GpuError::Device(e.to_string()))?;
                self.check()?;
                if !pending.ready.load(Ordering::SeqCst) {
                    return Ok(None);
                }
            } else {
                // Waiting returns once the submission is done, but when several threads poll
                // the device one of them may still be running our map callback: poll again
                // until it has run.
                let started = std::time::Instant::now();
                while !pending.ready.load(Ordering::SeqCst) {
                    self.device
                        .poll(wgpu::PollType::wait_indefinitely())
                        .map_err(|e| GpuError::Device(e.to_string()))?;
                    self.check()?;
                    if started.elapsed() > std::time::Duration::from_secs(600) {
                        return Err(GpuError::Device(
                            "read-back did not complete in 10 minutes".into(),
                        ));
                    }
                    std::thread::yield_now();
                }
            }
        }
        if pending.failed.load(Ordering::SeqCst) {
            self.check()?;
            return Err(GpuError::Device(
                "mapping the read-back buffer failed".into(),
            ));
        }
        pending.mapped.store(true, Ordering::SeqCst);
        let data = {
            let view = pending
                .staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Device(format!("read-back mapping: {e}")))?;
            bytemuck::cast_slice::<u8, f32>(&view)[..pending.len].to_vec()
        };
        pending.staging.unmap();
        self.recycle_staging(&pending.staging);
        Ok(Some(data))
    }

    /// A read-back buffer of at least `bytes`: from the pool when one of the size class is idle.
    fn staging_buffer(&self, bytes: u64) -> Arc<wgpu::Buffer> {
        let class = bytes.next_power_of_two().max(256);
        if class <= STAGING_POOL_MAX_BYTES {
            let mut pool = self.staging_pool.lock().unwrap();
            if let Some(i) = pool.iter().position(|b| b.size() == class) {
                return pool.swap_remove(i);
            }
        }
        self.staging_created.fetch_add(1, Ordering::SeqCst);
        Arc::new(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: if class <= STAGING_POOL_MAX_BYTES {
                class
            } else {
                bytes
            },
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// Return an unmapped read-back buffer to the pool (when it is of a pooled size and no
    /// other handle to it is left).
    fn recycle_staging(&self, staging: &Arc<wgpu::Buffer>) {
        let size = staging.size();
        if size > STAGING_POOL_MAX_BYTES || !size.is_power_of_two() {
            return;
        }
        let mut pool = self.staging_pool.lock().unwrap();
        if pool.len() < STAGING_POOL_MAX_BUFFERS {
            pool.push(staging.clone());
        }
    }

    /// Read-back buffers created since the device was opened (reused ones are not counted).
    pub fn staging_buffers_created(&self) -> usize {
        self.staging_created.load(Ordering::SeqCst)
    }
}
