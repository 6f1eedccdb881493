//! Graphics APIs: which backends an `Api` names, the instance for it, and the adapter listing of
//! `gpuprep info`.

use gpuprep_core::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

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

pub(super) fn instance(api: Api) -> wgpu::Instance {
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
