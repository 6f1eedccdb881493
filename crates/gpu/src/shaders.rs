//! The WGSL sources (embedded at compile time) and the kernel table: every entry point declared once
//! with its bindings and the constants it may be specialised on, and the one helper that makes a
//! specialised source. Data and text only; `device::kernels` builds pipelines from the table, and
//! `tests/shaders.rs` checks the table and the Rust uniform structs against the WGSL with naga.
//!
//! Every kernel is `common.wgsl` followed by its own file.

use gpuprep_core::error::{Error, Result};

pub const COMMON: &str = include_str!("../../../shaders/common.wgsl");

/// Every kernel shader: (name, its own source without `common.wgsl`).
pub const KERNELS: &[(&str, &str)] = &[
    ("median3d", include_str!("../../../shaders/median3d.wgsl")),
    ("zscore", include_str!("../../../shaders/zscore.wgsl")),
    (
        "zscore_f32",
        include_str!("../../../shaders/zscore_f32.wgsl"),
    ),
    ("shift", include_str!("../../../shaders/shift.wgsl")),
    ("fft", include_str!("../../../shaders/fft.wgsl")),
    (
        "cross_power",
        include_str!("../../../shaders/cross_power.wgsl"),
    ),
];

/// The full source of kernel shader `name` (`common.wgsl` + the kernel), or `None`.
pub fn source(name: &str) -> Option<String> {
    KERNELS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| format!("{COMMON}\n// ---- {name}.wgsl ----\n{s}"))
}

/// The binding kinds a kernel's bind group is made of, in binding order (binding 0 is the uniform
/// the recorder packs; the storage buffers follow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// A `const NAME: u32 = <n>u;` of a kernel's WGSL that the host replaces by one of `values` before
/// building the pipeline. These constants size function-local arrays (`array<u32, MAX_WINDOW>`,
/// `array<vec2<f32>, RADIX>`), which WGSL's pipeline-overridable constants cannot do (an `override`
/// may size only workgroup arrays), hence text.
#[derive(Clone, Copy, Debug)]
pub struct Specialize {
    pub name: &'static str,
    /// Every value the host may ask for; `tests/shaders.rs` validates each.
    pub values: &'static [u32],
}

/// One WGSL entry point: its shader file, entry name, bindings and specialisable constants.
#[derive(Clone, Copy, Debug)]
pub struct KernelDecl {
    pub shader: &'static str,
    pub entry: &'static str,
    pub binds: &'static [Bind],
    pub specialize: &'static [Specialize],
}

/// Declares each kernel as a `pub const` and lists them all in `ALL`, so that no declaration can be
/// left out of the list the tests walk.
macro_rules! kernel_table {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident = $shader:ident::$entry:ident($($bind:ident),*) $([$($var:ident in $vals:expr),*])?;
    )*) => {
        $(
            $(#[doc = $doc])*
            pub const $name: KernelDecl = KernelDecl {
                shader: stringify!($shader),
                entry: stringify!($entry),
                binds: &[$(Bind::$bind),*],
                specialize: &[$($(Specialize { name: stringify!($var), values: &$vals }),*)?],
            };
        )*
        /// Every declared kernel.
        pub const ALL: &[KernelDecl] = &[$($name),*];
    };
}

kernel_table! {
    /// The median of each voxel's window (Wirth's selection over `MAX_WINDOW` keys).
    MEDIAN3D = median3d::median3d(Uniform, Read, ReadWrite)
        [MAX_WINDOW in crate::median3d::WINDOW_CLASSES];
    /// The 3x3x3 median as a branch-free network (same module, so the same size class applies).
    MEDIAN3D_27 = median3d::median3d_27(Uniform, Read, ReadWrite)
        [MAX_WINDOW in crate::median3d::WINDOW_CLASSES];
    /// The 1x3x3 median from sorted columns, straight-line (same module and size class).
    MEDIAN3D_9 = median3d::median3d_9(Uniform, Read, ReadWrite)
        [MAX_WINDOW in crate::median3d::WINDOW_CLASSES];
    /// Other windows of at most 27 elements: a pruned selection network, one variant a window.
    MEDIAN3D_SMALL = median3d::median3d_small(Uniform, Read, ReadWrite)
        [SMALL in crate::median3d::SMALL_WINDOWS];
    /// One radix-`RADIX` Stockham stage.
    FFT_STOCKHAM = fft::stockham(Uniform, Read, Read, ReadWrite) [RADIX in crate::fft::RADICES];
    FFT_CHIRP_PRE = fft::chirp_pre(Uniform, Read, Read, ReadWrite);
    FFT_POINTWISE = fft::pointwise(Uniform, Read, Read, ReadWrite);
    FFT_CHIRP_POST = fft::chirp_post(Uniform, Read, Read, ReadWrite);
    /// Every Stockham stage of an axis in one pass through workgroup memory, in place on binding 3.
    FFT_STOCKHAM_WG = fft::stockham_wg(Uniform, Read, Read, ReadWrite);
    /// `stockham_wg` and the power sums of what it writes, per workgroup.
    FFT_STOCKHAM_WG_POWER = fft::stockham_wg_power(Uniform, Read, Read, ReadWrite, ReadWrite);
    /// `stockham_wg` and the peak of |.| of what it writes, per workgroup.
    FFT_STOCKHAM_WG_PEAK = fft::stockham_wg_peak(Uniform, Read, Read, ReadWrite, ReadWrite);
    /// Bluestein's transform of an axis in one pass through workgroup memory, in place on binding 3.
    FFT_BLUESTEIN_WG = fft::bluestein_wg(Uniform, Read, Read, ReadWrite);
    /// The registration's forward z pass, cross-power and inverse z pass in one pass.
    FFT_CROSS_Z_WG = fft::cross_z_wg(Uniform, Read, Read, ReadWrite, ReadWrite, Read);
    CROSS_TO_COMPLEX = cross_power::to_complex(Uniform, Read, ReadWrite);
    CROSS_POWER = cross_power::cross_power(Uniform, Read, ReadWrite);
    CROSS_ARGMAX_ABS = cross_power::argmax_abs(Uniform, Read, ReadWrite, ReadWrite);
    CROSS_SUM_SQ = cross_power::sum_sq(Uniform, Read, ReadWrite, ReadWrite);
    CROSS_CONTRACT = cross_power::contract(Uniform, Read, Read, ReadWrite);
    CROSS_SMOOTH = cross_power::gaussian_smooth(Uniform, ReadWrite, Read);
    /// One axis of a translation: each output sample a row of weights on its line.
    SHIFT_AXIS = shift::axis(Uniform, Read, Read, Read, ReadWrite);
    ZSCORE_ACCUMULATE = zscore::accumulate(Uniform, Read, ReadWrite, ReadWrite);
    ZSCORE_FINALIZE = zscore::finalize(Uniform, Read, Read, ReadWrite, ReadWrite);
    ZSCORE_NORMALIZE = zscore::normalize(Uniform, Read, Read, Read, ReadWrite);
    /// The float32-only z-score of f64 accuracy (devices without SHADER_F64).
    ZSCORE_F32_ACCUMULATE = zscore_f32::accumulate(Uniform, Read, ReadWrite, ReadWrite, ReadWrite);
    ZSCORE_F32_FINALIZE = zscore_f32::finalize(Uniform, Read, Read, Read, ReadWrite, ReadWrite);
    ZSCORE_F32_NORMALIZE = zscore_f32::normalize(Uniform, Read, Read, Read, ReadWrite);
    /// TwoSum and TwoProduct on given pairs: the start-up check that the compiler keeps them exact.
    ZSCORE_F32_SELFTEST = zscore_f32::selftest(Uniform, Read, ReadWrite) [OPAQUE in [0, 1]];
}

/// The declaration of `shader`'s entry point `entry`, if the table has one.
pub fn find(shader: &str, entry: &str) -> Option<&'static KernelDecl> {
    ALL.iter().find(|k| k.shader == shader && k.entry == entry)
}

impl KernelDecl {
    /// `shader.entry`, followed by `[NAME=value]` for each specialised constant: the cache key and,
    /// after `gpuprep.`, the label of every wgpu object of the kernel.
    pub fn key(&self, values: &[(&str, u32)]) -> String {
        let mut key = format!("{}.{}", self.shader, self.entry);
        for (name, v) in values {
            key.push_str(&format!("[{name}={v}]"));
        }
        key
    }

    /// The kernel's full source with each constant of `values` set: the one way variants are made
    /// (the runtime and `tests/shaders.rs` both call it). `values` must give every constant the
    /// declaration lists, once, with a declared value, and each must be spelled exactly once in the
    /// WGSL as `const NAME: u32 = <digits>u;`; anything else is an error.
    pub fn source(&self, values: &[(&str, u32)]) -> Result<String> {
        let name = self.key(&[]);
        let fail = |m: String| Err(Error::Gpu(format!("kernel {name}: {m}")));
        let Some(mut src) = source(self.shader) else {
            return fail(format!("no shader named {:?}", self.shader));
        };
        if values.len() != self.specialize.len() {
            return fail(format!(
                "needs values for {:?}, got {values:?}",
                self.specialize.iter().map(|s| s.name).collect::<Vec<_>>()
            ));
        }
        for &(var, v) in values {
            let Some(spec) = self.specialize.iter().find(|s| s.name == var) else {
                return fail(format!("{var} is not a specialisable constant"));
            };
            if !spec.values.contains(&v) {
                return fail(format!("{var} = {v} is not one of {:?}", spec.values));
            }
            let decl = format!("const {var}: u32 = ");
            let mut hits = src.match_indices(&decl).map(|(i, _)| i);
            let (Some(at), None) = (hits.next(), hits.next()) else {
                return fail(format!("the WGSL must spell `{decl}<n>u;` exactly once"));
            };
            let start = at + decl.len();
            let digits = src[start..].bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || !src[start + digits..].starts_with("u;") {
                return fail(format!("the WGSL must spell `{decl}<n>u;` exactly once"));
            }
            src.replace_range(start..start + digits, &v.to_string());
        }
        Ok(src)
    }
}
