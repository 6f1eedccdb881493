//! The device context: instance, adapter, device and queue, the limits, storage buffers and
//! readback, the tile limit and the tile counters of the tiled routes, and the counters of the work
//! sent to the device (`GpuCounters`).

use super::api::{instance, Api};
use super::kernels::Kernel;
use super::recorder::Recorder;
use gpuprep_core::error::{Error, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

/// Device, queue, the kernel cache and the buffers shared by the stages.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Built kernels by `KernelDecl::key` (see `kernels.rs`).
    pub(super) kernels: RefCell<HashMap<String, Arc<Kernel>>>,
    pub(super) uniform_pool: RefCell<Option<wgpu::Buffer>>,
    /// Bind groups by kernel and buffers (`bind_group`).
    pub(super) bind_groups: RefCell<HashMap<BindKey, wgpu::BindGroup>>,
    staging_pool: RefCell<Option<wgpu::Buffer>>,
    /// Largest buffer a stage may use before it tiles the volume (see `max_tile_bytes`).
    max_tile_bytes: Cell<u64>,
    /// Buffers of the tiled routes, by role, grown on demand and reused across calls.
    tile_pool: RefCell<HashMap<&'static str, wgpu::Buffer>>,
    tile_stats: Cell<TileStats>,
    counters: Cell<GpuCounters>,
    /// Per-kernel timestamp sums while `time_kernels(true)` is in force (`timing.rs`).
    pub(super) timing: RefCell<Option<super::timing::Timing>>,
    /// Kernels built without wgpu's shader runtime checks (`UNCHECKED_ENV`).
    unchecked_shaders: Cell<bool>,
    /// Whether FFT axes that fit in workgroup memory run in one pass (`fft.rs`); tests turn it off
    /// to check the multi-pass route too.
    fft_one_pass: Cell<bool>,
}

/// The host's traffic with the device since the context was made, counted where it happens (the
/// recorder's submit, `read`, `write`, the staged upload): what a frame costs in round trips,
/// whatever the device's speed. Tests pin one frame's numbers (tests/gpu.rs,
/// `one_resident_frame_costs_what_it_costs_today`), so a change to them is deliberate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// Compute dispatches submitted (one per kernel launch; a launch split over two grid
    /// dimensions is one).
    pub dispatches: usize,
    /// Queue submissions: recorded batches, readback copies and staged uploads.
    pub submits: usize,
    /// Readbacks that wait for the GPU to finish (`GpuContext::read`).
    pub blocking_reads: usize,
    /// Other host waits on the GPU: the staged upload waiting for its staging buffer to map.
    pub waits: usize,
    /// `queue.write_buffer` calls (each goes through fresh staging memory); uniforms included.
    pub writes: usize,
    /// Bytes read back by `blocking_reads`.
    pub read_bytes: u64,
    /// Bytes written by `writes`.
    pub written_bytes: u64,
    /// Bind groups created (`GpuContext::bind_group`; a frame on buffers bound before creates none).
    pub bind_groups: usize,
}

impl std::ops::Sub for GpuCounters {
    type Output = GpuCounters;
    /// The counts between two readings (`later - earlier`).
    fn sub(self, e: GpuCounters) -> GpuCounters {
        GpuCounters {
            dispatches: self.dispatches - e.dispatches,
            submits: self.submits - e.submits,
            blocking_reads: self.blocking_reads - e.blocking_reads,
            waits: self.waits - e.waits,
            writes: self.writes - e.writes,
            read_bytes: self.read_bytes - e.read_bytes,
            written_bytes: self.written_bytes - e.written_bytes,
            bind_groups: self.bind_groups - e.bind_groups,
        }
    }
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

/// Environment variable choosing the adapter on a machine with several (one per worker process on a
/// multi-GPU node): its index in `gpuprep info`'s list, or a case-insensitive part of its name.
pub const ADAPTER_ENV: &str = "GPUPREP_GPU";

/// The adapter `choice` (from `ADAPTER_ENV`) names among those of `api`.
fn chosen_adapter(inst: &wgpu::Instance, api: Api, choice: &str) -> Result<wgpu::Adapter> {
    let adapters = pollster::block_on(inst.enumerate_adapters(api.backends()));
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    let found = match choice.parse::<usize>() {
        Ok(i) => adapters.into_iter().nth(i),
        Err(_) => {
            let want = choice.to_lowercase();
            adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&want))
        }
    };
    found.ok_or_else(|| Error::InvalidParameter {
        name: ADAPTER_ENV.into(),
        message: format!(
            "{choice:?} names no adapter of backend {api}; there are {}: {}",
            names.len(),
            names
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{i} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Environment variable lowering the tile limit (bytes), e.g. for a GPU with little memory.
pub const TILE_BYTES_ENV: &str = "GPUPREP_GPU_TILE_BYTES";

/// Environment variable of an experiment (issue 13): `1` builds the kernels without wgpu's shader
/// runtime checks (`ShaderRuntimeChecks::unchecked()`: no injected bounds checks, no forced loop
/// bounds), to measure what those checks cost on a real GPU. Not for production runs: an index a
/// kernel failed to guard would then read or write out of bounds instead of being clamped.
pub const UNCHECKED_ENV: &str = "GPUPREP_GPU_UNCHECKED";

impl GpuContext {
    /// Opens the adapter `GPUPREP_GPU` names (an index into `gpuprep info`'s list, or a part of an
    /// adapter's name), else wgpu's high-performance choice.
    pub fn new(api: Api) -> Result<GpuContext> {
        // Read before any adapter is opened: a bad value is the user's to fix, GPU or none.
        let unchecked_shaders = match std::env::var(UNCHECKED_ENV).as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("0") => false,
            Ok("1") => true,
            Ok(other) => {
                return Err(Error::InvalidParameter {
                    name: UNCHECKED_ENV.into(),
                    message: format!(
                        "got {other:?}; expected 1 (kernels without wgpu's runtime checks) or 0"
                    ),
                })
            }
        };
        let inst = instance(api);
        let adapter = match std::env::var(ADAPTER_ENV) {
            Ok(choice) if !choice.trim().is_empty() => chosen_adapter(&inst, api, choice.trim())?,
            _ => pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            }))
            .map_err(|e| Error::Gpu(format!("no GPU adapter found (backend {api}): {e}")))?,
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        // f64 is used by the z-score accumulator when present; without it that stage runs on the CPU.
        // Timestamps cost nothing until `time_kernels` asks for them.
        let features =
            adapter.features() & (wgpu::Features::SHADER_F64 | wgpu::Features::TIMESTAMP_QUERY);
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
        let fft_one_pass = limits.max_compute_workgroup_storage_size >= crate::fft::WG_BYTES;
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            features,
            kernels: RefCell::new(HashMap::new()),
            uniform_pool: RefCell::new(None),
            bind_groups: RefCell::new(HashMap::new()),
            staging_pool: RefCell::new(None),
            max_tile_bytes: Cell::new(max_tile_bytes),
            tile_pool: RefCell::new(HashMap::new()),
            tile_stats: Cell::new(TileStats::default()),
            counters: Cell::new(GpuCounters::default()),
            timing: RefCell::new(None),
            unchecked_shaders: Cell::new(unchecked_shaders),
            fft_one_pass: Cell::new(fft_one_pass),
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

    /// Whether kernels are built without wgpu's shader runtime checks (`UNCHECKED_ENV`).
    pub fn unchecked_shaders(&self) -> bool {
        self.unchecked_shaders.get()
    }

    /// Builds kernels from now on with (`false`) or without (`true`) wgpu's shader runtime checks,
    /// as `UNCHECKED_ENV` does at start-up (for tests: no environment variable set at run time). The
    /// kernels built so far are dropped from the cache; stages fetch theirs on each use.
    pub fn set_unchecked_shaders(&self, on: bool) {
        if self.unchecked_shaders.replace(on) != on {
            self.kernels.borrow_mut().clear();
            self.bind_groups.borrow_mut().clear();
        }
    }

    /// Whether FFT axes whose lines fit in workgroup memory run in one pass per axis (the default
    /// where the device grants the one-pass kernels' workgroup memory) or one pass per stage.
    pub fn fft_one_pass(&self) -> bool {
        self.fft_one_pass.get()
    }

    /// Chooses the FFT's route for plans made from now on (tests check both against the CPU);
    /// `true` is ignored on a device without the workgroup memory the one-pass kernels need.
    pub fn set_fft_one_pass(&self, on: bool) {
        self.fft_one_pass
            .set(on && self.limits.max_compute_workgroup_storage_size >= crate::fft::WG_BYTES);
    }

    /// Whether a buffer of `bytes` fits the tile limit (the resident route may use it).
    pub fn fits(&self, bytes: u64) -> bool {
        bytes <= self.max_tile_bytes()
    }

    pub fn tile_stats(&self) -> TileStats {
        self.tile_stats.get()
    }

    /// The work sent to the device so far (`GpuCounters`).
    pub fn counters(&self) -> GpuCounters {
        self.counters.get()
    }

    /// Count work sent to the device (`f` updates the counters).
    pub fn count(&self, f: impl FnOnce(&mut GpuCounters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// `queue.write_buffer(buf, offset, data)`, counted.
    pub fn write(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) {
        self.queue.write_buffer(buf, offset, data);
        self.count(|c| {
            c.writes += 1;
            c.written_bytes += data.len() as u64;
        });
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

    /// `pooled(role, ..)` holding `data` at its start: for buffers a frame fills afresh (the
    /// upsampled DFT's kernels and products), which would otherwise be created, zeroed by wgpu and
    /// dropped every frame. Only for data that every use reads before the next `pooled_init` of the
    /// same role (the write is queued ahead of any later submission).
    pub fn pooled_init<T: bytemuck::Pod>(
        &self,
        role: &'static str,
        data: &[T],
    ) -> Result<wgpu::Buffer> {
        let buf = self.pooled(role, std::mem::size_of_val(data) as u64)?;
        self.upload(&buf, data);
        Ok(buf)
    }

    /// Write `data` at the start of `buf`.
    pub fn upload<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, data: &[T]) {
        if !data.is_empty() {
            self.write(buf, 0, bytemuck::cast_slice(data));
        }
    }

    pub fn has_f64(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F64)
    }

    pub fn describe(&self) -> String {
        // An output made by the unchecked-kernels experiment says so in its `backend` attribute.
        let unchecked = if self.unchecked_shaders.get() {
            ", kernels without runtime checks"
        } else {
            ""
        };
        format!(
            "{} ({:?}, {:?}{unchecked})",
            self.info.name, self.info.backend, self.info.device_type
        )
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
        // A new buffer means new stages or a call's own buffers: the bind groups cached so far
        // may hold buffers their owners have dropped, kept alive only by the cache.
        self.bind_groups.borrow_mut().clear();
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&format!("gpuprep.{label}")),
            // A multiple of 8: an f32 volume may be bound as vec2<f32> pairs (`fft.wgsl`'s real
            // input), whose last pair must lie inside the buffer.
            size: bytes.max(16).div_ceil(8) * 8,
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
            self.write(&buf, 0, bytes);
        }
        Ok(buf)
    }

    /// The bind group of `kernel` over `uniform` (the batch's uniform buffer and the binding's
    /// size; its offset is dynamic) and `buffers` in binding order, built once and reused while
    /// they live: a resident frame binds the same buffers every time. Cleared whenever a storage
    /// or uniform buffer is created, so it keeps no buffer alive beyond the next allocation, and
    /// whenever it holds `MAX_BIND_GROUPS`.
    pub fn bind_group(
        &self,
        kernel: &Arc<Kernel>,
        uniform: Option<(&wgpu::Buffer, u64)>,
        buffers: &[wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let key = BindKey {
            kernel: kernel.clone(),
            uniform: uniform.map(|(u, size)| (u.clone(), size)),
            buffers: buffers.to_vec(),
        };
        if let Some(bg) = self.bind_groups.borrow().get(&key) {
            return bg.clone();
        }
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        if let Some((u, size)) = uniform {
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: u,
                    offset: 0,
                    size: wgpu::BufferSize::new(size),
                }),
            });
        }
        for (j, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: j as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.label),
            layout: &kernel.layout,
            entries: &entries,
        });
        self.count(|c| c.bind_groups += 1);
        let mut cache = self.bind_groups.borrow_mut();
        if cache.len() >= MAX_BIND_GROUPS {
            cache.clear();
        }
        cache.insert(key, bg.clone());
        bg
    }

    /// Copy the first `count` elements of `buf` back to the host (waits for the GPU).
    pub fn read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, count: usize) -> Result<Vec<T>> {
        let bytes = (count * std::mem::size_of::<T>()) as u64;
        self.read_later(self.recorder(), &[(buf, bytes)])?
            .wait(self, |parts| typed::<T>(parts[0]))
    }

    /// `read` of two buffers with one submission and one wait (e.g. the registration's power and
    /// peak partials, the moments' mean and std).
    pub fn read_two<A: bytemuck::Pod, B: bytemuck::Pod>(
        &self,
        (a, na): (&wgpu::Buffer, usize),
        (b, nb): (&wgpu::Buffer, usize),
    ) -> Result<(Vec<A>, Vec<B>)> {
        let parts = [
            (a, (na * std::mem::size_of::<A>()) as u64),
            (b, (nb * std::mem::size_of::<B>()) as u64),
        ];
        self.read_later(self.recorder(), &parts)?
            .wait(self, |p| (typed::<A>(p[0]), typed::<B>(p[1])))
    }

    /// Submits `rec` with copies of the first `bytes` of each buffer after its work, into one
    /// staging buffer, and returns without waiting: `PendingRead::wait` reads them (one blocking
    /// read, whatever the number of buffers). Work submitted in between runs while the host waits
    /// (the stream's next frame, `GpuBackend::process_stream`).
    pub fn read_later(
        &self,
        mut rec: Recorder<'_>,
        parts: &[(&wgpu::Buffer, u64)],
    ) -> Result<PendingRead> {
        // Copies are 4-byte aligned: each part starts at a multiple of 4 in the staging buffer.
        let mut at = 0u64;
        let mut spans = Vec::with_capacity(parts.len());
        for (_, n) in parts {
            spans.push((at, *n));
            at += n.div_ceil(4) * 4;
        }
        let bytes = at;
        if bytes == 0 {
            rec.submit()?;
            return Ok(PendingRead {
                staging: None,
                spans,
                bytes,
            });
        }
        // Taken out of the pool while the read is pending, so no other read copies into it.
        let staging = match self.staging_pool.borrow_mut().take() {
            Some(b) if b.size() >= bytes => b,
            _ => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("gpuprep.readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        for ((buf, _), &(at, n)) in parts.iter().zip(&spans) {
            if n > 0 {
                rec.copy_at(buf, 0, &staging, at, n.div_ceil(4) * 4);
            }
        }
        let idx = rec.submit()?;
        Ok(PendingRead {
            staging: Some((staging, idx)),
            spans,
            bytes,
        })
    }

    /// Waits for submission `idx`, maps the first `bytes` of `staging` (a `MAP_READ` buffer it
    /// copied into), hands them to `f` and unmaps; errors name `what`.
    pub(super) fn map_read<R>(
        &self,
        staging: &wgpu::Buffer,
        bytes: u64,
        idx: wgpu::SubmissionIndex,
        what: &str,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU ({what}): {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu(format!("{what}: callback dropped")))?
            .map_err(|e| Error::Gpu(format!("mapping the {what} buffer: {e}")))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("{what}: {e}")))?;
            f(&view)
        };
        staging.unmap();
        Ok(out)
    }
}

/// A part of a mapped readback as a `Vec<T>`, in one copy (the mapping's start need not be aligned
/// for `T`, so no cast in place).
pub fn typed<T: bytemuck::Pod>(part: &[u8]) -> Vec<T> {
    if part.is_empty() {
        return Vec::new();
    }
    bytemuck::pod_collect_to_vec(part)
}

/// Copies submitted by `GpuContext::read_later`, not yet waited for.
#[must_use = "a pending read is only read by `wait`"]
pub struct PendingRead {
    /// The staging buffer and the submission that copies into it (none when nothing is read).
    staging: Option<(wgpu::Buffer, wgpu::SubmissionIndex)>,
    /// Each part's offset and length in the staging buffer.
    spans: Vec<(u64, u64)>,
    bytes: u64,
}

impl PendingRead {
    /// Waits for the copies and hands `f` each part, mapped; `f` copies out of the mapping once
    /// (`typed`): a volume read back is 17 MB at 64×256×256, and a second host copy of it costs
    /// about as much as the frame's GPU work on a fast device.
    pub fn wait<R>(self, ctx: &GpuContext, f: impl FnOnce(&[&[u8]]) -> R) -> Result<R> {
        let PendingRead {
            staging,
            spans,
            bytes,
        } = self;
        let Some((staging, idx)) = staging else {
            let empty: Vec<&[u8]> = spans.iter().map(|_| &[][..]).collect();
            return Ok(f(&empty));
        };
        ctx.count(|c| {
            c.blocking_reads += 1;
            c.read_bytes += spans.iter().map(|(_, n)| n).sum::<u64>();
        });
        let out = ctx.map_read(&staging, bytes, idx, "readback", |b| {
            let parts: Vec<&[u8]> = spans
                .iter()
                .map(|&(at, n)| &b[at as usize..(at + n) as usize])
                .collect();
            f(&parts)
        })?;
        // Back to the pool for the next read, unless a larger one is there.
        let mut pool = ctx.staging_pool.borrow_mut();
        if pool.as_ref().is_none_or(|p| p.size() < staging.size()) {
            *pool = Some(staging);
        }
        Ok(out)
    }
}

/// Most bind groups `GpuContext::bind_group` keeps (a resident frame uses about a dozen, a tiled
/// one a few dozen); past it the cache starts over.
const MAX_BIND_GROUPS: usize = 256;

/// What a bind group binds: the kernel (by identity; kept alive, so its address is not reused
/// while the key exists), the uniform buffer and binding size, the storage buffers in order.
pub(super) struct BindKey {
    kernel: Arc<Kernel>,
    uniform: Option<(wgpu::Buffer, u64)>,
    buffers: Vec<wgpu::Buffer>,
}

impl PartialEq for BindKey {
    fn eq(&self, o: &BindKey) -> bool {
        Arc::ptr_eq(&self.kernel, &o.kernel)
            && self.uniform == o.uniform
            && self.buffers == o.buffers
    }
}

impl Eq for BindKey {}

impl std::hash::Hash for BindKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        Arc::as_ptr(&self.kernel).hash(h);
        self.uniform.hash(h);
        self.buffers.hash(h);
    }
}
