//! WGSL sources, embedded at compile time. Every kernel is `common.wgsl` followed by its own file;
//! `tests/shaders.rs` validates exactly these concatenations with naga.

pub const COMMON: &str = include_str!("../../../shaders/common.wgsl");

/// Every kernel shader: (name, its own source without `common.wgsl`).
pub const KERNELS: &[(&str, &str)] = &[
    ("median3d", include_str!("../../../shaders/median3d.wgsl")),
    ("zscore", include_str!("../../../shaders/zscore.wgsl")),
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
