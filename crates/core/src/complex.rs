//! The complex types of spectra: single precision as stored (scikit-image's complex64 for float32
//! input), double precision where sums and products need the range.

pub use num_complex::Complex64;

/// One spectrum bin as both backends store it.
pub type C32 = num_complex::Complex<f32>;
