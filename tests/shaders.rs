//! Integration tests: shaders. Every WGSL kernel, as the GPU backend loads it (`common.wgsl` followed
//! by the kernel), parsed and validated with naga; needs no GPU.

use gpuprep_gpu::shaders;

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
    for class in gpuprep_gpu::median3d::WINDOW_CLASSES {
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

/// The straight-line forgetful selection of `median3d_27` (see its comment in shaders/median3d.wgsl):
/// 15 keys held in scalars h0..h14; step s takes the min and max of h{s}..h14 out (the min is never
/// read again, the max slot h14 takes the next window key), and h13 is the median after step 12.
/// Window element d is (z, y, x) = (d / 9, d / 3 % 3, d % 3), as `median3d` walks the window.
fn median27_network() -> String {
    let key = |d: usize| format!("key3(z{}, y{}, x{})", d / 9, (d / 3) % 3, d % 3);
    let mut s = String::new();
    for i in 0..15 {
        s += &format!("    var h{i} = {};\n", key(i));
    }
    s += "    var lo: u32;\n    var hi: u32;\n    var m: u32;\n";
    for step in 0..13 {
        s += &format!("    lo = min(h{step}, h14);\n    hi = max(h{step}, h14);\n");
        for i in step + 1..14 {
            s += &format!(
                "    m = max(lo, h{i});\n    lo = min(lo, h{i});\n    h{i} = min(m, hi);\n    hi = max(m, hi);\n"
            );
        }
        if step < 12 {
            s += &format!("    h14 = {};\n", key(15 + step));
        }
    }
    s
}

/// The generated network in shaders/median3d.wgsl is exactly what `median27_network` writes;
/// `GPUPREP_REGEN=1 cargo test --test tests median27` rewrites it after a change to the generator.
#[test]
fn median27_entry_is_the_generated_network() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/median3d.wgsl");
    let text = std::fs::read_to_string(&path).unwrap();
    let begin = text
        .find("    // BEGIN median27_network")
        .expect("begin marker");
    let body_start = begin + text[begin..].find('\n').unwrap() + 1;
    let end = text
        .find("    // END median27_network")
        .expect("end marker");
    let want = median27_network();
    if std::env::var_os("GPUPREP_REGEN").is_some() {
        let new = format!("{}{}{}", &text[..body_start], want, &text[end..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    assert!(
        text[body_start..end] == want,
        "shaders/median3d.wgsl's median27_network differs from the generator; rerun with GPUPREP_REGEN=1"
    );
}
