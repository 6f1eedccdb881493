//! Integration tests: shaders. Every WGSL kernel, as the GPU backend loads it (`common.wgsl` followed
//! by the kernel), parsed and validated with naga; needs no GPU.

use gpuprep::gpu::shaders;

fn validate(name: &str, src: &str) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    // f64 is used by zscore.wgsl (the backend only builds it when the device has SHADER_F64).
    let caps = naga::valid::Capabilities::FLOAT64;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
}

#[test]
fn every_kernel_validates_with_common() {
    for (name, _) in shaders::KERNELS {
        let src = shaders::source(name).unwrap();
        validate(name, &src);
    }
}

#[test]
fn median_window_variants_validate() {
    let src = shaders::source("median3d").unwrap();
    for class in gpuprep::gpu::median3d::WINDOW_CLASSES {
        let v = src.replace(
            "const MAX_WINDOW: u32 = 343u;",
            &format!("const MAX_WINDOW: u32 = {class}u;"),
        );
        assert!(
            v.contains(&format!("MAX_WINDOW: u32 = {class}u;")),
            "variant text present"
        );
        validate(&format!("median3d[{class}]"), &v);
    }
}

#[test]
fn every_wgsl_file_is_a_registered_kernel() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    files.sort();
    for f in &files {
        let stem = f.trim_end_matches(".wgsl");
        if stem == "common" {
            validate("common", shaders::COMMON);
            continue;
        }
        let on_disk = std::fs::read_to_string(dir.join(f)).unwrap();
        let registered = shaders::KERNELS.iter().find(|(n, _)| *n == stem);
        let (_, src) = registered
            .unwrap_or_else(|| panic!("shaders/{f} is not listed in gpu::shaders::KERNELS"));
        assert_eq!(
            *src, on_disk,
            "shaders/{f} differs from the embedded copy (rebuild)"
        );
    }
}

#[test]
fn fft_radix_variants_validate() {
    let src = shaders::source("fft").unwrap();
    for r in [2, 3, 4, 5, 7] {
        let v = src.replace(
            "const RADIX: u32 = 4u;",
            &format!("const RADIX: u32 = {r}u;"),
        );
        assert!(
            v.contains(&format!("const RADIX: u32 = {r}u;")),
            "variant text present"
        );
        validate(&format!("fft[radix {r}]"), &v);
    }
}
