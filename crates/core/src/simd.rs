//! The vector level the CPU kernels run at, chosen at run time, and the `dispatch!` macro that
//! compiles a kernel once per level.
//!
//! Its users (the registration's upsampled DFT, cross-power and power sums, the shift's passes in
//! `gpuprep-cpu`, and the z-score's sweeps here, which both backends' runs share)
//! write their hot loops over fixed-width lanes (arrays or contiguous rows with no data-dependent
//! branch), compiled three times on x86-64: for the portable baseline (SSE2) and
//! under `#[target_feature]` for AVX2+FMA and AVX-512, the best the CPU has being taken at run
//! time (`is_x86_feature_detected!`). A portable binary thus gets the wide paths without
//! `-C target-cpu=native`. On other targets only the baseline exists (NEON is part of aarch64's).
//!
//! The levels compute the same operations in the same order, without fused multiply-adds (a
//! multiply and an add are never contracted by rustc), so every level gives the same bits; the
//! tests check that on every level the machine has. `GPUPREP_CPU_SIMD=scalar|avx2|avx512` caps
//! the level (a level the CPU lacks falls back to the best it has below it).

use std::sync::OnceLock;

/// A vector level, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The target's baseline (SSE2 on x86-64, NEON on aarch64).
    Scalar,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX-512 F/VL/DQ/BW (x86-64).
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

/// The environment variable that caps the level.
pub const ENV: &str = "GPUPREP_CPU_SIMD";

/// Every level this CPU can run, lowest first.
pub fn available() -> Vec<Level> {
    let mut v = vec![Level::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Level::Avx2);
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512bw")
            {
                v.push(Level::Avx512);
            }
        }
    }
    v
}

/// The level the kernels run at: the best available, capped by `GPUPREP_CPU_SIMD` (read once).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = *available().last().expect("scalar is always available");
        match std::env::var(ENV) {
            Ok(v) => match parse(&v) {
                Some(cap) => best.min(cap),
                None => {
                    eprintln!(
                        "warning: {ENV}={v:?} is not one of scalar, avx2, avx512; using {}",
                        best.name()
                    );
                    best
                }
            },
            Err(_) => best,
        }
    })
}

fn parse(v: &str) -> Option<Level> {
    match v.trim().to_ascii_lowercase().as_str() {
        "scalar" | "none" | "off" => Some(Level::Scalar),
        "avx2" => Some(Level::Avx2),
        "avx512" | "avx-512" => Some(Level::Avx512),
        _ => None,
    }
}

/// Calls `$body(args)` compiled for `$level` (a `Level`, at most one of `available()`): defines
/// one `#[target_feature]` copy of the call per x86-64 level, into which the `#[inline(always)]`
/// body is inlined. Everything the body's hot loop calls must inline too (`#[inline(always)]` or
/// small generic std code), or it runs at the baseline.
#[doc(hidden)]
#[macro_export]
macro_rules! __simd_dispatch {
    ($level:expr, $body:path, ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $crate::simd::dispatch!($level, $body, [], ($($arg: $ty),*) $(-> $ret)?)
    };
    // `[T: Bound]`: generic parameters of the copies, inferred from the arguments.
    ($level:expr, $body:path, [$($g:tt)*], ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn avx2<$($g)*>($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
        fn avx512<$($g)*>($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }
        match $level {
            // SAFETY: `Level::Avx2`/`Avx512` only come from `available()`, which detected the features.
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Level::Avx512 => unsafe { avx512($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Level::Avx2 => unsafe { avx2($($arg),*) },
            _ => $body($($arg),*),
        }
    }};
}
pub use crate::__simd_dispatch as dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_scalar_is_always_there() {
        assert_eq!(parse("scalar"), Some(Level::Scalar));
        assert_eq!(parse(" AVX2 "), Some(Level::Avx2));
        assert_eq!(parse("avx512"), Some(Level::Avx512));
        assert_eq!(parse("sse9"), None);
        let a = available();
        assert_eq!(a[0], Level::Scalar);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(a.contains(&level()));
    }
}
