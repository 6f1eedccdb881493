//! Kernels built from the table in `shaders.rs`: a compute pipeline and its bind-group layout per
//! declared entry point (and per specialisation), built once inside a validation error scope and
//! cached on the context, every wgpu object labelled `gpuprep.<key>`.

use super::context::GpuContext;
use crate::shaders::{Bind, KernelDecl};
use gpuprep_core::error::{Error, Result};
use std::sync::Arc;

/// A compute pipeline and its bind-group layout.
pub struct Kernel {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub binds: Vec<Bind>,
}

impl GpuContext {
    /// The kernel `decl` (which must declare no specialisable constant), built on first use.
    pub fn pipeline(&self, decl: &KernelDecl) -> Result<Arc<Kernel>> {
        self.pipeline_variant(decl, &[])
    }

    /// The kernel `decl` with its constants set to `values` (`KernelDecl::source`), built on
    /// first use.
    pub fn pipeline_variant(
        &self,
        decl: &KernelDecl,
        values: &[(&str, u32)],
    ) -> Result<Arc<Kernel>> {
        let key = decl.key(values);
        if let Some(k) = self.kernels.borrow().get(&key) {
            return Ok(k.clone());
        }
        let src = decl.source(values)?;
        self.build(key, src, decl.entry, decl.binds)
    }

    /// Build and cache the kernel `key` from the full WGSL `src`.
    fn build(&self, key: String, src: String, entry: &str, binds: &[Bind]) -> Result<Arc<Kernel>> {
        let label = format!("gpuprep.{key}");
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        let module = if self.unchecked_shaders() {
            // SAFETY: the experiment `GPUPREP_GPU_UNCHECKED=1` opts into it (see
            // `UNCHECKED_ENV`): every kernel guards its own indices against its uniforms' sizes,
            // which the host sets from the buffers it binds, and tests/gpu.rs checks that such a
            // build gives the checked build's bits on lavapipe.
            unsafe {
                self.device
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        } else {
            self.device.create_shader_module(desc)
        };
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
                    // The recorder packs a batch's uniforms into one buffer and binds each
                    // dispatch's at its offset: with the offset dynamic, one bind group serves
                    // every batch (`GpuContext::bind_group`).
                    has_dynamic_offset: matches!(b, Bind::Uniform),
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
        let k = Arc::new(Kernel {
            label,
            pipeline,
            layout,
            binds: binds.to_vec(),
        });
        self.kernels.borrow_mut().insert(key, k.clone());
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_context;
    use crate::shaders::{Specialize, FFT_STOCKHAM, MEDIAN3D};

    #[test]
    fn kernels_are_built_once_per_declaration_and_variant() {
        let Some(ctx) = test_context() else { return };
        let a = ctx
            .pipeline_variant(&MEDIAN3D, &[("MAX_WINDOW", 729)])
            .unwrap();
        let b = ctx
            .pipeline_variant(&MEDIAN3D, &[("MAX_WINDOW", 729)])
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.label, "gpuprep.median3d.median3d[MAX_WINDOW=729]");
        assert_eq!(a.binds, MEDIAN3D.binds);
        let c = ctx
            .pipeline_variant(&MEDIAN3D, &[("MAX_WINDOW", 27)])
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        // Undeclared values and missing values are errors, not silent defaults.
        assert!(ctx
            .pipeline_variant(&MEDIAN3D, &[("MAX_WINDOW", 100)])
            .is_err());
        assert!(ctx.pipeline(&FFT_STOCKHAM).is_err());
    }

    /// A dispatch on buffers bound before reuses their bind group (the second median below creates
    /// none) and computes on the buffers' new contents; a buffer made in between empties the cache.
    #[test]
    fn bind_groups_are_reused_until_a_buffer_is_made() {
        use gpuprep_core::params::MedianParams;
        use ndarray::Array3;
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let Some(ctx) = test_context() else { return };
        let shape = [5, 7, 11];
        let mut rng = StdRng::seed_from_u64(3);
        let mut vol = || Array3::from_shape_simple_fn(shape, || rng.random::<f32>());
        let p = MedianParams::default();
        let src = ctx.storage("test.src", 5 * 7 * 11 * 4).unwrap();
        let dst = ctx.storage("test.dst", 5 * 7 * 11 * 4).unwrap();
        // Median of `v` through `src` and `dst`, with the bind groups it created.
        let median = |v: &Array3<f32>| {
            ctx.upload(&src, v.as_slice().unwrap());
            let before = ctx.counters();
            let mut rec = ctx.recorder();
            crate::median3d::record(&ctx, &mut rec, &src, &dst, shape, &p).unwrap();
            rec.submit().unwrap();
            let created = (ctx.counters() - before).bind_groups;
            let got = ctx.read::<f32>(&dst, v.len()).unwrap();
            let want = gpuprep_cpu::median3d::median3d(v.view(), &p);
            assert_eq!(got, want.into_raw_vec_and_offset().0);
            created
        };
        assert_eq!(median(&vol()), 1);
        assert_eq!(
            median(&vol()),
            0,
            "the same buffers: the bind group is reused"
        );
        assert!(!ctx.bind_groups.borrow().is_empty());
        let _other = ctx.storage("test.other", 64).unwrap();
        assert!(
            ctx.bind_groups.borrow().is_empty(),
            "a new buffer empties the cache"
        );
        assert_eq!(median(&vol()), 1);
    }

    /// WGSL that naga rejects (a zero-length private array) and a missing entry point are
    /// `Error`s naming the kernel, through the table's own path; the good kernel builds afterwards.
    #[test]
    fn invalid_declared_kernels_are_errors_not_panics() {
        let Some(ctx) = test_context() else { return };
        let zero = KernelDecl {
            specialize: &[Specialize {
                name: "MAX_WINDOW",
                values: &[0],
            }],
            ..MEDIAN3D
        };
        let err = ctx
            .pipeline_variant(&zero, &[("MAX_WINDOW", 0)])
            .err()
            .expect("invalid WGSL must fail");
        assert!(
            err.to_string()
                .contains("gpuprep.median3d.median3d[MAX_WINDOW=0]"),
            "{err}"
        );
        let missing = KernelDecl {
            entry: "no_such_entry",
            ..MEDIAN3D
        };
        assert!(ctx
            .pipeline_variant(&missing, &[("MAX_WINDOW", 343)])
            .is_err());
        assert!(ctx
            .pipeline_variant(&MEDIAN3D, &[("MAX_WINDOW", 343)])
            .is_ok());
    }
}
