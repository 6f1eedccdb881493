//! Instance, adapter and device; the kernel registry (pipelines and bind-group layouts built once and
//! cached); a small command recorder that packs every dispatch's uniforms into one buffer, splits
//! dispatches larger than 65,535 workgroups and checks buffer sizes against the device's limits.

use gpuprep_core::error::{Error, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use super::shaders;

/// Workgroup size of every 1-D kernel; keep in sync with `WG` in `shaders/common.wgsl`.
pub const WORKGROUP: u32 = 64;

/// Most workgroups a dispatch may have along one dimension (WebGPU's minimum limit).
const MAX_GROUPS_PER_DIM: u32 = 65535;

/// Which graphics API to take an adapter from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Api {
    #[default]
    Any,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl Api {
    pub const ALL: [Api; 5] = [Api::Any, Api::Vulkan, Api::Metal, Api::Dx12, Api::Gl];

    pub fn backends(self) -> wgpu::Backends {
        match self {
            Api::Any => wgpu::Backends::all(),
            Api::Vulkan => wgpu::Backends::VULKAN,
            Api::Metal => wgpu::Backends::METAL,
            Api::Dx12 => wgpu::Backends::DX12,
            Api::Gl => wgpu::Backends::GL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::Any => "any",
            Api::Vulkan => "vulkan",
            Api::Metal => "metal",
            Api::Dx12 => "dx12",
            Api::Gl => "gl",
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Api {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Api::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| Error::InvalidParameter {
                name: "graphics API".into(),
                message: format!(
                    "unknown graphics API {s:?}; expected any, vulkan, metal, dx12 or gl"
                ),
            })
    }
}

/// One adapter, as `gpuprep info` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    /// The limits that matter to gpuprep, on one line.
    pub limits: String,
}

fn instance(api: Api) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = api.backends();
    wgpu::Instance::new(desc)
}

fn limits_line(l: &wgpu::Limits, f: wgpu::Features) -> String {
    format!(
        "max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, max_workgroups_per_dimension {}, \
         max_compute_invocations_per_workgroup {}, shader_f64 {}",
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        l.max_compute_workgroups_per_dimension,
        l.max_compute_invocations_per_workgroup,
        if f.contains(wgpu::Features::SHADER_F64) { "yes" } else { "no" },
    )
}

/// Every adapter the API offers.
pub fn list_adapters(api: Api) -> Vec<AdapterSummary> {
    let inst = instance(api);
    pollster::block_on(inst.enumerate_adapters(api.backends()))
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            AdapterSummary {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                limits: limits_line(&a.limits(), a.features()),
            }
        })
        .collect()
}

/// The binding kinds a kernel's bind group is made of, in binding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// A compute pipeline and its bind-group layout.
pub struct Kernel {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub binds: Vec<Bind>,
}

/// Device, queue and the kernel registry.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    kernels: RefCell<HashMap<String, Rc<Kernel>>>,
    uniform_pool: RefCell<Option<wgpu::Buffer>>,
    staging_pool: RefCell<Option<wgpu::Buffer>>,
    /// Largest buffer a stage may use before it tiles the volume (see `max_tile_bytes`).
    max_tile_bytes: Cell<u64>,
    /// Buffers of the tiled routes, by role, grown on demand and reused across calls.
    tile_pool: RefCell<HashMap<&'static str, wgpu::Buffer>>,
    tile_stats: Cell<TileStats>,
}

/// Tiles each kernel has run since the context was made: a volume processed resident counts
/// nothing, a tiled one counts its slabs or chunks (tests assert the tiled route really ran).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TileStats {
    pub median: usize,
    pub shift: usize,
    pub register: usize,
    pub zscore: usize,
}

/// Environment variable lowering the tile limit (bytes), e.g. for a GPU with little memory.
pub const TILE_BYTES_ENV: &str = "GPUPREP_GPU_TILE_BYTES";

impl GpuContext {
    pub fn new(api: Api) -> Result<GpuContext> {
        let inst = instance(api);
        let adapter = pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .map_err(|e| Error::Gpu(format!("no GPU adapter found (backend {api}): {e}")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // f64 is used by the z-score accumulator when present; without it that stage runs on the CPU.
        let features = adapter.features() & wgpu::Features::SHADER_F64;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("gpuprep.device"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| {
            Error::Gpu(format!(
                "cannot open device on adapter {} ({:?}): {e}",
                info.name, info.backend
            ))
        })?;
        // One binding is the hard limit; wgpu offers no portable query of the device's memory, so
        // a smaller budget (a GPU shared with other work) is set by the environment variable.
        let mut max_tile_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Ok(v) = std::env::var(TILE_BYTES_ENV) {
            let b: u64 = v.trim().parse().map_err(|_| Error::InvalidParameter {
                name: TILE_BYTES_ENV.into(),
                message: format!("{v:?} is not a number of bytes"),
            })?;
            max_tile_bytes = max_tile_bytes.min(b);
        }
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            features,
            kernels: RefCell::new(HashMap::new()),
            uniform_pool: RefCell::new(None),
            staging_pool: RefCell::new(None),
            max_tile_bytes: Cell::new(max_tile_bytes),
            tile_pool: RefCell::new(HashMap::new()),
            tile_stats: Cell::new(TileStats::default()),
        })
    }

    /// The largest buffer (bytes) a stage may use on the resident route; larger volumes are
    /// processed in tiles each of whose buffers fits. Defaults to one storage binding of the device
    /// (`max_storage_buffer_binding_size`, capped by `max_buffer_size`), or `GPUPREP_GPU_TILE_BYTES`
    /// when that is smaller.
    pub fn max_tile_bytes(&self) -> u64 {
        self.max_tile_bytes.get()
    }

    /// Lower the tile limit (tests force tiny tiles with it); values above one binding are capped.
    pub fn set_max_tile_bytes(&self, bytes: u64) {
        let cap = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        self.max_tile_bytes.set(bytes.clamp(16, cap));
    }

    /// Whether a buffer of `bytes` fits the tile limit (the resident route may use it).
    pub fn fits(&self, bytes: u64) -> bool {
        bytes <= self.max_tile_bytes()
    }

    pub fn tile_stats(&self) -> TileStats {
        self.tile_stats.get()
    }

    /// Count `n` tiles of a kernel (`f` picks the counter).
    pub fn count_tiles(&self, n: usize, f: impl FnOnce(&mut TileStats) -> &mut usize) {
        let mut s = self.tile_stats.get();
        *f(&mut s) += n;
        self.tile_stats.set(s);
    }

    /// A storage buffer of at least `bytes` for the tiled routes, reused by `role`; must fit the
    /// tile limit.
    pub fn tile_buffer(&self, role: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        if !self.fits(bytes) {
            return Err(Error::Gpu(format!(
                "{role}: a tile needs {bytes} bytes, over the tile limit of {} bytes",
                self.max_tile_bytes()
            )));
        }
        self.pooled(role, bytes)
    }

    /// A storage buffer of at least `bytes` (under one binding), reused by `role`: small
    /// buffers of the tiled routes (reduction partials) that the tile limit does not govern.
    pub fn pooled(&self, role: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let mut pool = self.tile_pool.borrow_mut();
        if let Some(b) = pool.get(role) {
            if b.size() >= bytes {
                return Ok(b.clone());
            }
        }
        let b = self.storage(role, bytes)?;
        pool.insert(role, b.clone());
        Ok(b)
    }

    /// Write `data` at the start of `buf`.
    pub fn upload<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, data: &[T]) {
        if !data.is_empty() {
            self.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
        }
    }

    pub fn has_f64(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F64)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// The cached kernel `shader`/`entry` (with `variant` substitutions applied to the source: pairs of
    /// exact text and replacement), built on first use inside a validation error scope.
    pub fn kernel(
        &self,
        shader: &str,
        entry: &str,
        variant: &[(&str, String)],
        binds: &[Bind],
    ) -> Result<Rc<Kernel>> {
        let mut key = format!("{shader}.{entry}");
        for (from, to) in variant {
            key.push_str(&format!("[{from}={to}]"));
        }
        if let Some(k) = self.kernels.borrow().get(&key) {
            return Ok(k.clone());
        }
        let mut src = shaders::source(shader)
            .ok_or_else(|| Error::Gpu(format!("no shader named {shader:?}")))?;
        for (from, to) in variant {
            if !src.contains(from) {
                return Err(Error::Gpu(format!(
                    "shader {shader}: variant text {from:?} not found"
                )));
            }
            src = src.replace(from, to);
        }
        let label = format!("gpuprep.{key}");
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = binds
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Bind::Uniform => wgpu::BufferBindingType::Uniform,
                        Bind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Bind::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
        let playout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&playout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("building kernel {label}: {err}")));
        }
        let k = Rc::new(Kernel {
            label,
            pipeline,
            layout,
            binds: binds.to_vec(),
        });
        self.kernels.borrow_mut().insert(key, k.clone());
        Ok(k)
    }

    /// Errors when `bytes` does not fit in one storage binding or one buffer of this device.
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        let max_bind = self.limits.max_storage_buffer_binding_size;
        let max_buf = self.limits.max_buffer_size;
        let limit = max_bind.min(max_buf);
        if bytes > limit {
            return Err(Error::Gpu(format!(
                "{what} needs a {bytes}-byte ({} MiB) buffer but this device binds at most {limit} bytes ({} MiB) \
                 per storage buffer",
                bytes >> 20,
                limit >> 20
            )));
        }
        Ok(())
    }

    /// A storage buffer of `bytes` (at least 4), checked against the limits.
    pub fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.check_binding(label, bytes)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&format!("gpuprep.{label}")),
            size: bytes.max(16).div_ceil(4) * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data`.
    pub fn storage_init<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = self.storage(label, bytes.len() as u64)?;
        if !bytes.is_empty() {
            self.queue.write_buffer(&buf, 0, bytes);
        }
        Ok(buf)
    }

    /// Copy the first `count` elements of `buf` back to the host (waits for the GPU).
    pub fn read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, count: usize) -> Result<Vec<T>> {
        let bytes = (count * std::mem::size_of::<T>()) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        // One staging buffer, grown as needed and reused (the map below is waited for).
        let staging = {
            let mut pool = self.staging_pool.borrow_mut();
            match pool.as_ref() {
                Some(b) if b.size() >= bytes.div_ceil(4) * 4 => b.clone(),
                _ => {
                    let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("gpuprep.readback"),
                        size: bytes.div_ceil(4) * 4,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    *pool = Some(b.clone());
                    b
                }
            }
        };
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("gpuprep.readback"),
            });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, bytes.div_ceil(4) * 4);
        let idx = self.queue.submit([enc.finish()]);
        let slice = staging.slice(..bytes.div_ceil(4) * 4);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback dropped".into()))?
            .map_err(|e| Error::Gpu(format!("mapping readback buffer: {e}")))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("readback: {e}")))?;
            let b: &[u8] = &view;
            bytemuck::pod_collect_to_vec(&b[..bytes as usize])
        };
        staging.unmap();
        Ok(out)
    }

    /// Start recording a batch of dispatches.
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            ctx: self,
            uniforms: Vec::new(),
            ops: Vec::new(),
        }
    }

    fn uniform_buffer(&self, bytes: u64) -> wgpu::Buffer {
        let mut pool = self.uniform_pool.borrow_mut();
        if let Some(b) = pool.as_ref() {
            if b.size() >= bytes {
                return b.clone();
            }
        }
        let size = bytes.next_power_of_two().max(4096);
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gpuprep.uniforms"),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        *pool = Some(b.clone());
        b
    }
}

/// `(x, y)` workgroup counts covering `groups` workgroups with at most 65,535 along each dimension;
/// kernels rebuild the linear index with `linear_index` in `common.wgsl` and bound-check it.
pub fn split_groups(groups: u32) -> (u32, u32) {
    if groups <= MAX_GROUPS_PER_DIM {
        (groups.max(1), 1)
    } else {
        let y = groups.div_ceil(MAX_GROUPS_PER_DIM);
        (groups.div_ceil(y), y)
    }
}

enum Op {
    Dispatch {
        kernel: Rc<Kernel>,
        uniform: Option<(u64, u64)>,
        buffers: Vec<wgpu::Buffer>,
        groups: u32,
    },
    Copy {
        src: wgpu::Buffer,
        dst: wgpu::Buffer,
        bytes: u64,
    },
}

/// Records dispatches; `submit` writes all uniforms at once, builds the bind groups and submits.
pub struct Recorder<'a> {
    ctx: &'a GpuContext,
    uniforms: Vec<u8>,
    ops: Vec<Op>,
}

impl Recorder<'_> {
    /// Dispatch `kernel` over `items` invocations (`WORKGROUP` per workgroup) with uniform `params`
    /// and the storage `buffers` in binding order after the uniform.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: &Rc<Kernel>,
        params: &P,
        buffers: &[&wgpu::Buffer],
        items: u64,
    ) {
        self.dispatch_groups(kernel, params, buffers, items.div_ceil(WORKGROUP as u64));
    }

    /// As `dispatch`, with an explicit workgroup count.
    pub fn dispatch_groups<P: bytemuck::Pod>(
        &mut self,
        kernel: &Rc<Kernel>,
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: u64,
    ) {
        let align = self.ctx.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let off = self.uniforms.len().div_ceil(align) * align;
        self.uniforms.resize(off, 0);
        let bytes = bytemuck::bytes_of(params);
        self.uniforms.extend_from_slice(bytes);
        debug_assert_eq!(
            kernel.binds.len(),
            buffers.len() + 1,
            "{}: binding count",
            kernel.label
        );
        self.ops.push(Op::Dispatch {
            kernel: kernel.clone(),
            uniform: Some((off as u64, bytes.len() as u64)),
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
            groups: groups.min(u32::MAX as u64) as u32,
        });
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        self.ops.push(Op::Copy {
            src: src.clone(),
            dst: dst.clone(),
            bytes,
        });
    }

    /// Submit everything recorded; returns the submission index.
    pub fn submit(self) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx;
        let ubuf = if self.uniforms.is_empty() {
            None
        } else {
            Some(ctx.uniform_buffer(self.uniforms.len() as u64))
        };
        if let Some(u) = &ubuf {
            ctx.queue.write_buffer(u, 0, &self.uniforms);
        }
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("gpuprep.batch"),
            });
        let mut i = 0;
        while i < self.ops.len() {
            match &self.ops[i] {
                Op::Copy { src, dst, bytes } => {
                    enc.copy_buffer_to_buffer(src, 0, dst, 0, *bytes);
                    i += 1;
                }
                Op::Dispatch { .. } => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("gpuprep.pass"),
                        timestamp_writes: None,
                    });
                    while i < self.ops.len() {
                        let Op::Dispatch {
                            kernel,
                            uniform,
                            buffers,
                            groups,
                        } = &self.ops[i]
                        else {
                            break;
                        };
                        let mut entries = Vec::new();
                        if let (Some((off, size)), Some(u)) = (uniform, &ubuf) {
                            entries.push(wgpu::BindGroupEntry {
                                binding: 0,
                                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                    buffer: u,
                                    offset: *off,
                                    size: wgpu::BufferSize::new(*size),
                                }),
                            });
                        }
                        for (j, b) in buffers.iter().enumerate() {
                            entries.push(wgpu::BindGroupEntry {
                                binding: j as u32 + 1,
                                resource: b.as_entire_binding(),
                            });
                        }
                        let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some(&kernel.label),
                            layout: &kernel.layout,
                            entries: &entries,
                        });
                        pass.set_pipeline(&kernel.pipeline);
                        pass.set_bind_group(0, &bg, &[]);
                        let (x, y) = split_groups(*groups);
                        pass.dispatch_workgroups(x, y, 1);
                        i += 1;
                    }
                }
            }
        }
        let idx = ctx.queue.submit([enc.finish()]);
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("submitting GPU work: {err}")));
        }
        Ok(idx)
    }
}
