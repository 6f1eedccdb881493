//! Host memory a run or a `synth` needs, estimated from shapes and flags before any data is read and
//! checked against what the machine has, so an oversized job stops with one line naming the figure
//! instead of an allocation abort halfway through that leaves files behind.
//!
//! The terms follow the CPU backend's real allocations (`pipeline`, `cpu::register`, `cpu::shift`,
//! `cpu::zscore`): the peak is the largest of the phases a run goes through (reference, pass 1 while
//! registering, pass 1 while shifting, pass 2, the end), each phase the sum of what is alive at once.
//! All arithmetic is in `u128` after a guard that the volume's element count fits the address space,
//! so a shape such as (2, 2^40, 2^40, 2^40) is "too large", never a wrapped product.

use crate::driver::{ReferenceSpec, RunConfig};
use gpuprep_core::backend::Backend;
use gpuprep_core::error::{Error, Result};
pub use gpuprep_core::fmt::fmt_bytes;
pub use gpuprep_core::host::{available, parse_bytes, Available, LIMIT_ENV};
use gpuprep_io::Source;

/// The program itself: code, HDF5's and rayon's own state, thread stacks, small per-thread buffers
/// (median windows, FFT scratch, shift lines), measured as the peak RSS of runs on tiny volumes.
const BASE_BYTES: u128 = 48 << 20;

/// Which engine computes: decides which buffers live in host memory. With a GPU the spectra, the
/// shift and the upsampled DFT live on the device, but its result region is read back (complex f32,
/// widened to complex f64); the z-score accumulators are counted on the host for both, since a GPU
/// without float64, or one whose volumes pass its tile limit, keeps them there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    Cpu,
    Gpu,
}

impl Compute {
    pub fn of(backend: &dyn Backend) -> Compute {
        if backend.describe().starts_with("gpu") {
            Compute::Gpu
        } else {
            Compute::Cpu
        }
    }
}

/// What a run's memory depends on besides its flags.
#[derive(Clone, Copy, Debug)]
pub struct RunShape {
    pub timepoints: usize,
    /// (z, y, x).
    pub volume: [usize; 3],
    /// Bytes the input's read path holds besides the volume it returns (`Source::read_buffer_bytes`: the
    /// chunk cache of a dataset chunked across timepoints, the float64 conversion buffer).
    pub input_chunk_bytes: Option<u128>,
    /// CPU worker threads (per-thread buffers).
    pub threads: usize,
    /// Pass 1's results kept in memory for the z-score's second pass (`results_fit_budget`).
    pub results_in_memory: bool,
    pub compute: Compute,
}

/// One allocation (or group of them) alive at the peak.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub what: String,
    pub bytes: u128,
}

/// The peak and what makes it up, largest term first.
#[derive(Clone, Debug)]
pub struct Estimate {
    pub total: u128,
    /// The phase of the run the peak falls in.
    pub phase: &'static str,
    pub terms: Vec<Term>,
}

impl Estimate {
    fn from_terms(phase: &'static str, terms: Vec<Term>) -> Estimate {
        let mut terms: Vec<Term> = terms.into_iter().filter(|t| t.bytes > 0).collect();
        terms.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        Estimate {
            total: terms.iter().map(|t| t.bytes).sum(),
            phase,
            terms,
        }
    }

    /// The largest terms for a one-line message.
    fn summary(&self, count: usize) -> String {
        let mut parts: Vec<String> = self
            .terms
            .iter()
            .take(count)
            .map(|t| format!("{}: {}", t.what, fmt_bytes(t.bytes)))
            .collect();
        if self.terms.len() > count {
            parts.push("…".into());
        }
        parts.join("; ")
    }
}

fn term(what: impl Into<String>, bytes: u128) -> Term {
    Term {
        what: what.into(),
        bytes,
    }
}

/// Voxels of a (z, y, x) volume, if its float64 and complex128 buffers (16 bytes a voxel, the widest
/// any stage uses) can be addressed at all; `None` is "too large" whatever the machine.
pub fn voxels(shape: [usize; 3]) -> Option<u128> {
    let v = (shape[0] as u128)
        .checked_mul(shape[1] as u128)?
        .checked_mul(shape[2] as u128)?;
    (v.checked_mul(16)? <= isize::MAX as u128).then_some(v)
}

/// `⌈1.5·u⌉`, the side of the upsampled region scikit-image refines the peak on.
pub fn upsample_region(u: u32) -> u128 {
    (u as u128 * 3).div_ceil(2)
}

fn too_large(shape: &[usize]) -> String {
    let v = shape
        .iter()
        .try_fold(1u128, |acc, &n| acc.checked_mul(n as u128));
    let count = match v {
        Some(v) => format!("{v} voxels"),
        None => "more than 2^128 voxels".into(),
    };
    format!(
        "{} is {count}, too large for any machine's memory (a volume's buffers must fit the {}-bit address space)",
        gpuprep_io::fmt_shape(shape),
        usize::BITS
    )
}

/// The host bytes `cfg` needs on inputs of `shape`: the largest phase of the run. `Err` is a message
/// for a shape too large to address at all.
pub fn estimate(cfg: &RunConfig, shape: &RunShape) -> std::result::Result<Estimate, String> {
    let [nz, ny, nx] = shape.volume;
    let v = voxels(shape.volume).ok_or_else(|| too_large(&shape.volume))?;
    let n = shape.timepoints as u128;
    let (nz, ny, nx) = (nz as u128, ny as u128, nx as u128);
    let cpu = shape.compute == Compute::Cpu;
    let threads = shape.threads.max(1) as u128;
    let vol = 4 * v;
    // rfftn's half spectrum, complex f32.
    let half = 8 * nz * ny * (nx / 2 + 1);
    let depth = crate::driver::queue_depth(shape.volume) as u128;
    let median = cfg.median.is_some();
    let save_filtered = cfg.save_filtered && median;
    let reg = cfg.register;
    let zscore = cfg.zscore.is_some();

    // Alive from start to end of the run.
    let mut always = vec![term("program and libraries", BASE_BYTES)];
    let datasets = 1 + save_filtered as u128 + cfg.save_registered as u128;
    let (_, cache, _) = gpuprep_io::sink::volume_chunking(shape.timepoints, shape.volume);
    always.push(term(
        format!("output chunk caches ({datasets} datasets)"),
        datasets * cache as u128,
    ));
    always.push(term(
        "input read buffers",
        (5 << 20) + shape.input_chunk_bytes.unwrap_or(0),
    ));
    if reg.is_some() {
        always.push(term(
            format!(
                "per-timepoint results ({} timepoints x 5 float64)",
                shape.timepoints
            ),
            40 * n,
        ));
        if cpu {
            always.push(term("reference spectrum", half));
        }
    }
    if zscore {
        always.push(term("z-score accumulators (2 float64 per voxel)", 16 * v));
    }
    // From the first shift on: `cpu::shift` keeps its f64 intermediate between volumes.
    let mut after_shift = always.clone();
    if reg.is_some() && cpu {
        after_shift.push(term("shift's float64 intermediate", 8 * v));
    }

    let mut phases: Vec<Estimate> = Vec::new();

    if reg.is_some() {
        // The reference: a float64 sum (allocated for a single timepoint too), the volume read and its
        // filtered copy, then the reference's spectrum (counted in `always`).
        let mut t = always.clone();
        let mean = matches!(cfg.reference, ReferenceSpec::Mean { .. });
        t.push(term("reference sum (float64)", 8 * v));
        t.push(term(
            "reference volumes",
            vol * (1 + median as u128 + mean as u128),
        ));
        phases.push(Estimate::from_terms("reference", t));
    }

    // Pass 1: read side (depth queued + 1 being read), the volume being computed (+ the next one when
    // a GPU stages uploads), write side (depth queued + 1 being written; two volumes with --save filtered).
    // A side never holds more volumes than the series has.
    let side = (depth + 1).min(n);
    let in_flight = side + side * (1 + save_filtered as u128) + 1 + (!cpu && n > 1) as u128;
    let queued = term(
        format!("volumes in flight ({in_flight} x {})", fmt_bytes(vol)),
        in_flight * vol,
    );
    let filtered = term("filtered volume", vol * median as u128);
    if let (Some(m), true) = (&cfg.median, cpu) {
        // `cpu::median3d`: per task, one padded source row per window element along z and y.
        let [sz, sy, sx] = m.size.map(|s| s as u128);
        let mut t = after_shift.clone();
        t.extend([
            queued.clone(),
            filtered.clone(),
            term(
                format!("median's per-thread rows ({threads} threads)"),
                threads * 8 * sz * sy * (nx + sx),
            ),
        ]);
        phases.push(Estimate::from_terms("pass 1 (median)", t));
    }
    let longest = 2 * nz.max(ny).max(nx);
    match (reg, cpu) {
        (Some(r), true) => {
            let u = r.upsample_factor;
            let keep = (u > 1) as u128;
            // `Registrar::register`: the moving spectrum (+ its copy kept for upsampling) and the
            // correlation from the inverse transform; then the upsampled DFT with the copy and the
            // correlation still alive.
            let mut inverse = after_shift.clone();
            inverse.extend([
                queued.clone(),
                filtered.clone(),
                term(
                    "registration spectra and correlation",
                    half * (1 + keep) + vol,
                ),
                // `cpu::fft`: per task, blocks of 64 z-lines and 16 y-lines, plus a Bluestein
                // scratch (a power of two past twice the line) for lengths with large prime factors.
                term(
                    format!("FFT line buffers ({threads} threads)"),
                    threads * 8 * (64 * (nz + 8) + 16 * (ny + 8) + 4 * longest.next_power_of_two()),
                ),
            ]);
            phases.push(Estimate::from_terms("pass 1 (registration)", inverse));
            if u > 1 {
                let rr = upsample_region(u);
                // `cpu::register::upsampled_peak`: t1 and p (nz·ny·R), one slab of the y-contraction
                // (nz·R per output row, `UPSAMPLE_SLAB_BYTES` at most), the three kernels and the
                // split x kernel, all complex128 / 2·f64; the R³ region itself is never held.
                let rows = gpuprep_core::register::upsample_slab_rows(
                    nz as usize,
                    rr as usize,
                    gpuprep_core::register::UPSAMPLE_SLAB_BYTES,
                ) as u128;
                let up = 16 * (2 * nz * ny * rr + nz * rows * rr + rr * (nz + ny + 2 * nx));
                let mut t = after_shift.clone();
                t.extend([
                    queued.clone(),
                    filtered.clone(),
                    term("registration spectrum and correlation", half + vol),
                    term(
                        format!("upsampling region {rr}^3 at --upsample-factor {u}, in slabs"),
                        up,
                    ),
                ]);
                phases.push(Estimate::from_terms("pass 1 (upsampling)", t));
            }
            let mut t = after_shift.clone();
            t.extend([
                queued.clone(),
                filtered.clone(),
                term("shifted volume", vol),
                // `cpu::shift`: per task a float64 plane, 256 z-lines and 32-line y/x blocks.
                term(
                    format!("shift's per-thread planes ({threads} threads)"),
                    threads * 8 * (ny * nx + 256 * (nz + 24) + 96 * (ny.max(nx) + 24)),
                ),
            ]);
            phases.push(Estimate::from_terms("pass 1 (shift)", t));
        }
        (Some(r), false) => {
            // Device-resident except what comes back: the result, and the upsampled region read back in
            // slabs of planes (`gpu::register::upsampled_peak_z`) as complex f32, through a staging
            // buffer of the same size; the tiled route also gathers the y-contraction (nz·R²) on the host.
            let mut t = always.clone();
            t.extend([queued.clone(), filtered.clone(), term("result volume", vol)]);
            if r.upsample_factor > 1 {
                let rr = upsample_region(r.upsample_factor);
                let planes = gpuprep_core::register::upsample_slab_planes(
                    rr as usize,
                    gpuprep_core::register::UPSAMPLE_SLAB_BYTES,
                ) as u128;
                t.push(term(
                    format!(
                        "upsampling region {rr}^3 at --upsample-factor {}, in slabs",
                        r.upsample_factor
                    ),
                    16 * planes * rr * rr + 8 * nz * rr * rr,
                ));
            }
            phases.push(Estimate::from_terms("pass 1", t));
        }
        (None, _) => {
            let mut t = always.clone();
            t.extend([queued.clone(), filtered.clone(), term("result volume", vol)]);
            phases.push(Estimate::from_terms("pass 1", t));
        }
    }

    if zscore {
        let in_flight = 2 * side + 2;
        let mut t = after_shift.clone();
        t.extend([
            term(
                format!("volumes in flight ({in_flight} x {})", fmt_bytes(vol)),
                in_flight * vol,
            ),
            // `Moments`: the float32 mean and std written to the output, and the float64 ones normalization uses.
            term("z-score mean and std (float32 and float64)", 6 * vol),
        ]);
        phases.push(Estimate::from_terms("pass 2", t));
    }
    if reg.is_some() {
        let mut t = after_shift.clone();
        t.push(term("shifts, error and phase difference arrays", 40 * n));
        phases.push(Estimate::from_terms("end", t));
    }
    if shape.results_in_memory {
        // They accumulate through pass 1 and are freed one by one in pass 2: counted whole in both.
        let kept = term("pass 1's results kept in memory for the z-score", n * v * 4);
        // Pass 2 z-scores them by blocks of whole rows of output chunks (every timepoint, edge
        // chunks padded): one being computed, one queued, one being written (`driver`,
        // `zscore_volumes_by_block`).
        let (chunk, ..) = gpuprep_io::sink::volume_chunking(shape.timepoints, shape.volume);
        let [ct, cz, cy, cx] = chunk.map(|c| c as u128);
        let block = 4 * n.div_ceil(ct) * ct * cz * cy * nx.div_ceil(cx) * cx;
        let blocks = term(
            format!("z-score blocks in flight (3 x {})", fmt_bytes(block)),
            3 * block,
        );
        phases = phases
            .into_iter()
            .map(|e| {
                if e.phase.starts_with("pass") {
                    let mut terms = e.terms;
                    terms.push(kept.clone());
                    if e.phase == "pass 2" {
                        terms.push(blocks.clone());
                    }
                    Estimate::from_terms(e.phase, terms)
                } else {
                    e
                }
            })
            .collect();
    }
    Ok(phases
        .into_iter()
        .max_by_key(|e| e.total)
        .expect("pass 1 is always there"))
}

/// What to change when `e` does not fit, from its largest term.
fn advice(e: &Estimate, cfg: &RunConfig) -> &'static str {
    let top = e.terms.first().map(|t| t.what.as_str()).unwrap_or("");
    if top.starts_with("upsampling") {
        "lower --upsample-factor (the upsampling buffers grow with it)"
    } else if top.starts_with("per-timepoint") || top.starts_with("shifts,") {
        "split the series into shorter runs"
    } else if cfg.zscore.is_some() {
        "crop or bin the volumes, pass --no-zscore to drop the accumulators, or run on a machine with more memory"
    } else {
        "crop or bin the volumes, or run on a machine with more memory"
    }
}

/// Whether pass 1's results (`timepoints` float32 volumes of `volume`) fit `cfg.memory_budget`, by
/// default a quarter of the available memory (none where it cannot be read).
pub fn results_fit_budget(cfg: &RunConfig, timepoints: usize, volume: [usize; 3]) -> Result<bool> {
    let Some(bytes) = voxels(volume).and_then(|v| v.checked_mul(4 * timepoints as u128)) else {
        return Ok(false);
    };
    let budget = match cfg.memory_budget {
        Some(b) => b as u128,
        None => available()?.map_or(0, |a| a.bytes / 4),
    };
    Ok(bytes <= budget)
}

/// Refuses `cfg` on `source` before any data is read when its estimate passes what the machine has, or
/// when a volume is too large to address at all. `results_in_memory`: pass 1's results wait in memory
/// for pass 2.
pub fn check_run(
    cfg: &RunConfig,
    source: &Source,
    compute: Compute,
    results_in_memory: bool,
) -> Result<()> {
    let path = source.files()[0].clone();
    let full_shape: Vec<usize> = std::iter::once(source.len())
        .chain(source.shape())
        .collect();
    let what = format!(
        "dataset '{}' of shape {} (t, z, y, x)",
        source.dataset(),
        gpuprep_io::fmt_shape(&full_shape)
    );
    let input_chunk_bytes = Some(source.read_buffer_bytes() as u128);
    let shape = RunShape {
        timepoints: source.len(),
        volume: source.shape(),
        input_chunk_bytes,
        threads: rayon::current_num_threads(),
        compute,
        results_in_memory,
    };
    let e = estimate(cfg, &shape).map_err(|m| Error::Input {
        path: path.clone(),
        message: format!("{what}: volume {m}"),
    })?;
    let Some(avail) = available()? else {
        return Ok(());
    };
    if e.total <= avail.bytes {
        return Ok(());
    }
    let message = format!(
        "{what} needs about {} of memory ({}) but {} is available ({}); {} ({LIMIT_ENV}=BYTES overrides the available figure)",
        fmt_bytes(e.total),
        e.summary(3),
        fmt_bytes(avail.bytes),
        avail.source,
        advice(&e, cfg)
    );
    Err(
        if e.terms
            .first()
            .is_some_and(|t| t.what.starts_with("upsampling"))
        {
            Error::InvalidParameter {
                name: "upsample factor".into(),
                message: format!("{}: {message}", path.display()),
            }
        } else {
            Error::Input { path, message }
        },
    )
}

/// `synth`'s peak with `width` timepoints made at once: each holds its float64 volume and the copy in
/// the stored dtype (`dtype_size` bytes a voxel) while it is written; realistic mode first renders one
/// float64 volume to scale the structure. `Err` is a message for a shape too large to address.
pub fn synth_estimate(
    shape: [usize; 4],
    dtype_size: usize,
    realistic: bool,
    width: usize,
) -> std::result::Result<Estimate, String> {
    let v = voxels([shape[1], shape[2], shape[3]]).ok_or_else(|| too_large(&shape))?;
    let per = (8 + dtype_size as u128) * v;
    let w = width.max(1) as u128;
    let making = Estimate::from_terms(
        "writing",
        vec![
            term("program and libraries", BASE_BYTES),
            term(
                format!(
                    "timepoints being made ({w} x float64 volume and its {dtype_size}-byte-per-voxel copy)"
                ),
                w * per,
            ),
        ],
    );
    if !realistic {
        return Ok(making);
    }
    let scaling = Estimate::from_terms(
        "scaling",
        vec![
            term("program and libraries", BASE_BYTES),
            term("structure rendered to scale it (float64)", 8 * v),
        ],
    );
    Ok(if scaling.total > making.total {
        scaling
    } else {
        making
    })
}

/// How many of `synth`'s timepoints may be made at once (at most `threads`): an error naming the
/// figure when not even one fits what the machine has.
pub fn check_synth(
    shape: [usize; 4],
    dtype_size: usize,
    realistic: bool,
    threads: usize,
) -> Result<usize> {
    let bad = |message: String| Error::InvalidParameter {
        name: "shape".into(),
        message,
    };
    let want = threads.max(1).min(shape[0]);
    let one = synth_estimate(shape, dtype_size, realistic, 1).map_err(bad)?;
    let Some(avail) = available()? else {
        return Ok(want);
    };
    if one.total > avail.bytes {
        return Err(bad(format!(
            "{} needs about {} of memory ({}) but {} is available ({}); use a smaller --shape \
             ({LIMIT_ENV}=BYTES overrides the available figure)",
            gpuprep_io::fmt_shape(&shape),
            fmt_bytes(one.total),
            one.summary(2),
            fmt_bytes(avail.bytes),
            avail.source
        )));
    }
    // The largest width up to `want` that fits; one does.
    let fits = |w: usize| {
        synth_estimate(shape, dtype_size, realistic, w).is_ok_and(|e| e.total <= avail.bytes)
    };
    Ok((1..=want).rev().find(|&w| fits(w)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuprep_core::params::RegisterParams;
    use std::path::PathBuf;

    fn shape(t: usize, volume: [usize; 3]) -> RunShape {
        RunShape {
            timepoints: t,
            volume,
            input_chunk_bytes: None,
            threads: 2,
            compute: Compute::Cpu,
            results_in_memory: false,
        }
    }

    fn cfg() -> RunConfig {
        RunConfig::new(vec![], PathBuf::from("out.h5"))
    }

    fn find<'a>(e: &'a Estimate, prefix: &str) -> Option<&'a Term> {
        e.terms.iter().find(|t| t.what.starts_with(prefix))
    }

    #[test]
    fn element_counts_past_the_address_space_are_too_large_not_wrapped() {
        let big = 1usize << 40;
        assert_eq!(voxels([big, big, big]), None);
        assert_eq!(voxels([4096; 3]), Some(1 << 36));
        let err = estimate(&cfg(), &shape(2, [big; 3])).unwrap_err();
        assert!(
            err.contains(&format!("{} voxels, too large", 1u128 << 120)),
            "{err}"
        );
        let err = estimate(&cfg(), &shape(2, [usize::MAX; 3])).unwrap_err();
        assert!(err.contains("more than 2^128 voxels, too large"), "{err}");
        // 2^20 · 2^20 · 2^20 = 2^60 fits u128 but its float64 buffers do not fit 64 bits.
        let err = estimate(&cfg(), &shape(2, [1 << 20; 3])).unwrap_err();
        assert!(err.contains(&format!("{} voxels", 1u128 << 60)), "{err}");
        let err = synth_estimate([2, big, big, big], 8, false, 1).unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn the_upsampling_region_is_swept_in_bounded_slabs() {
        assert_eq!(upsample_region(1), 2);
        assert_eq!(upsample_region(3), 5);
        assert_eq!(upsample_region(1000), 1500);
        let mut c = cfg();
        c.register =
            Some(RegisterParams::new(1000, gpuprep_core::params::Normalization::Phase).unwrap());
        let e = estimate(&c, &shape(10, [4, 5, 6])).unwrap();
        assert_eq!(e.phase, "pass 1 (upsampling)");
        let up = &e.terms[0];
        assert!(up.what.starts_with("upsampling region 1500^3"), "{e:?}");
        // The 1500^3 region (50 GiB of complex128) is never held: one slab of at most 64 MiB of
        // output rows (4·1500 values a row), t1 and p, and the kernels.
        let (r, rows) = (1500u128, (64u128 << 20) / (16 * 4 * 1500));
        assert_eq!(
            up.bytes,
            16 * (2 * 4 * 5 * r + 4 * rows * r + r * (4 + 5 + 12))
        );
        assert_eq!(fmt_bytes(up.bytes), "65.4 MiB");
        assert!(e.total < 1 << 30, "{e:?}");
        // The GPU reads it back in slabs of 1500^2 planes of complex f32 (+ staging), 64 MiB at most,
        // and its tiled route gathers the 4·1500^2 y-contraction.
        let mut s = shape(10, [4, 5, 6]);
        s.compute = Compute::Gpu;
        let e = estimate(&c, &s).unwrap();
        let up = find(&e, "upsampling region 1500^3").expect("{e:?}");
        assert_eq!(up.bytes, 16 * 3 * r * r + 8 * 4 * r * r);
        assert!(e.total < 1 << 30, "{e:?}");
    }

    #[test]
    fn terms_follow_the_flags() {
        let v = [64, 64, 64];
        let base = estimate(&cfg(), &shape(10, v)).unwrap();
        let acc = find(&base, "z-score accumulators").expect("z-score on by default");
        assert_eq!(acc.bytes, 16 * 64 * 64 * 64);
        assert!(find(&base, "shift's float64 intermediate").is_some());

        let mut c = cfg();
        c.zscore = None;
        c.register = None;
        let lean = estimate(&c, &shape(10, v)).unwrap();
        assert!(find(&lean, "z-score").is_none() && find(&lean, "shift").is_none());
        assert!(lean.total < base.total);

        // --save filtered puts a second volume per queued result on the write side.
        c.save_filtered = true;
        let saved = estimate(&c, &shape(10, v)).unwrap();
        let q = |e: &Estimate| find(e, "volumes in flight").unwrap().bytes;
        // 1 MiB volumes: depth 2, so 3 read + 3 write (+3 filtered) + 1 being computed.
        assert_eq!(q(&lean), 7 << 20);
        assert_eq!(q(&saved), 10 << 20);

        // Results grow with the series and dominate a long one.
        let long = estimate(&cfg(), &shape(1_000_000_000, [2, 2, 2])).unwrap();
        assert_eq!(long.phase, "end");
        assert_eq!(long.total, {
            let t: u128 = long.terms.iter().map(|t| t.bytes).sum();
            t
        });
        assert!(long.total > 80_000_000_000);

        // Pass 1's results kept for pass 2 count in every pass, not in the reference or the end.
        let kept = estimate(
            &cfg(),
            &RunShape {
                results_in_memory: true,
                ..shape(10, v)
            },
        )
        .unwrap();
        let term = find(&kept, "pass 1's results").expect("counted");
        assert_eq!(term.bytes, 10 * 4 * 64 * 64 * 64);
        assert!(kept.total >= base.total + term.bytes);
        assert!(kept.phase.starts_with("pass"));
        // Pass 2 z-scores them by blocks of whole rows of chunks, (t, x) padded to whole chunks
        // (10 timepoints in chunks of 8 hold 16): three such blocks at a time.
        assert_eq!(kept.phase, "pass 2");
        let (chunk, ..) = gpuprep_io::sink::volume_chunking(10, v);
        assert_eq!(chunk[0], 8);
        let blocks = find(&kept, "z-score blocks in flight").expect("counted");
        assert_eq!(
            blocks.bytes,
            3 * 4 * 16 * (chunk[1] * chunk[2] * 64usize.div_ceil(chunk[3]) * chunk[3]) as u128
        );
    }

    #[test]
    fn synth_needs_a_float64_volume_and_its_copy_per_timepoint_made() {
        let v = 2048u128.pow(3);
        let e = synth_estimate([2, 2048, 2048, 2048], 2, false, 2).unwrap();
        assert_eq!(e.total, BASE_BYTES + 2 * 10 * v);
        let one = synth_estimate([2, 2048, 2048, 2048], 8, true, 1).unwrap();
        assert_eq!(one.total, BASE_BYTES + 16 * v);
    }
}
