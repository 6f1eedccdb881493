//! Per-kernel GPU time from timestamp queries: opt-in (`GpuContext::time_kernels`), for the GPU
//! benchmarks and the device check. Each dispatch of a timed batch gets a compute pass of its own,
//! timestamped at its start and end; after the batch the stamps are resolved, read back (one
//! blocking read per batch, not counted in `GpuCounters`: the pipeline's own traffic stays what the
//! counter tests pin) and summed per kernel label.

use super::context::GpuContext;
use gpuprep_core::error::{Error, Result};
use std::collections::BTreeMap;

/// One kernel's share of the timed batches: how often it ran and its GPU time in all.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub label: String,
    pub dispatches: usize,
    pub nanos: f64,
}

/// The sums kept while timing is on, by kernel label.
#[derive(Default)]
pub(super) struct Timing {
    totals: BTreeMap<String, (usize, f64)>,
}

/// Timestamps a query set holds (wgpu's `QUERY_SET_MAX_QUERIES`): two per dispatch.
const QUERIES_PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES;

/// The query sets and buffers of one timed batch.
pub(super) struct BatchStamps {
    sets: Vec<wgpu::QuerySet>,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    labels: Vec<String>,
}

impl BatchStamps {
    /// Room for `dispatches` passes' stamps.
    pub(super) fn new(ctx: &GpuContext, dispatches: usize) -> BatchStamps {
        let queries = 2 * dispatches as u64;
        let sets = (0..queries.div_ceil(QUERIES_PER_SET as u64))
            .map(|i| {
                let count =
                    (queries - i * QUERIES_PER_SET as u64).min(QUERIES_PER_SET as u64) as u32;
                ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("gpuprep.timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                })
            })
            .collect();
        let bytes = (queries * 8)
            .max(8)
            .next_multiple_of(wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT);
        let buffer = |label, usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        BatchStamps {
            sets,
            resolve: buffer(
                "gpuprep.timestamps.resolve",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "gpuprep.timestamps.readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            labels: Vec::with_capacity(dispatches),
        }
    }

    /// The timestamp writes of the next dispatch's pass, labelled `label`.
    pub(super) fn next(&mut self, label: &str) -> wgpu::ComputePassTimestampWrites<'_> {
        let k = self.labels.len() as u64 * 2;
        self.labels.push(label.to_string());
        let per = QUERIES_PER_SET as u64;
        let at = (k % per) as u32;
        wgpu::ComputePassTimestampWrites {
            query_set: &self.sets[(k / per) as usize],
            beginning_of_pass_write_index: Some(at),
            end_of_pass_write_index: Some(at + 1),
        }
    }

    /// Resolves the stamps and copies them where the host can map them (end of the batch).
    pub(super) fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let per = QUERIES_PER_SET as u64;
        let queries = 2 * self.labels.len() as u64;
        for (i, set) in self.sets.iter().enumerate() {
            let first = i as u64 * per;
            let count = (queries - first).min(per) as u32;
            if count > 0 {
                enc.resolve_query_set(set, 0..count, &self.resolve, first * 8);
            }
        }
        if queries > 0 {
            enc.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, queries * 8);
        }
    }

    /// Waits for the batch `idx`, reads its stamps and adds each pass's time to `ctx`'s sums.
    pub(super) fn collect(self, ctx: &GpuContext, idx: wgpu::SubmissionIndex) -> Result<()> {
        if self.labels.is_empty() {
            return Ok(());
        }
        let bytes = 16 * self.labels.len() as u64;
        let stamps: Vec<u64> = ctx.map_read(&self.readback, bytes, idx, "timestamps", |b| {
            bytemuck::pod_collect_to_vec(b)
        })?;
        let period = ctx.queue.get_timestamp_period() as f64;
        let mut timing = ctx.timing.borrow_mut();
        if let Some(t) = timing.as_mut() {
            for (label, pair) in self.labels.into_iter().zip(stamps.chunks_exact(2)) {
                // A device may reset its counter between passes: a negative span counts as zero.
                let ns = pair[1].saturating_sub(pair[0]) as f64 * period;
                let e = t.totals.entry(label).or_default();
                e.0 += 1;
                e.1 += ns;
            }
        }
        Ok(())
    }
}

impl GpuContext {
    /// Whether the device can timestamp compute passes (`time_kernels`).
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Turns per-kernel timing on (sums cleared) or off. Timed batches run each dispatch in a pass of
    /// its own and wait for their stamps, so a timed run is slower than an untimed one: compare
    /// kernels within it, and take wall times from untimed runs.
    pub fn time_kernels(&self, on: bool) -> Result<()> {
        if on && !self.has_timestamps() {
            return Err(Error::Gpu(format!(
                "adapter {} ({:?}) has no timestamp queries (TIMESTAMP_QUERY): no per-kernel GPU times",
                self.info.name, self.info.backend
            )));
        }
        *self.timing.borrow_mut() = on.then(Timing::default);
        Ok(())
    }

    /// Whether `time_kernels(true)` is in force.
    pub fn timing_kernels(&self) -> bool {
        self.timing.borrow().is_some()
    }

    /// The kernels timed since `time_kernels(true)`, the most GPU time first.
    pub fn kernel_times(&self) -> Vec<KernelTime> {
        let mut v: Vec<KernelTime> = self
            .timing
            .borrow()
            .as_ref()
            .map(|t| {
                t.totals
                    .iter()
                    .map(|(label, &(dispatches, nanos))| KernelTime {
                        label: label.clone(),
                        dispatches,
                        nanos,
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.nanos.total_cmp(&a.nanos));
        v
    }
}
