//! Integration tests: shaders. Every WGSL kernel, as the GPU backend loads it (`common.wgsl` followed
//! by the kernel), parsed and validated with naga, and the kernel table and the Rust side checked
//! against the WGSL (entry points, bindings, uniform and storage struct layouts, workgroup size,
//! boundary-mode codes); needs no GPU.

use gpuprep_core::params::BoundaryMode;
use gpuprep_gpu::device::WORKGROUP;
use gpuprep_gpu::shaders::{self, Bind, KernelDecl, Specialize};
use naga::valid::ModuleInfo;
use naga::Module;

fn parse(name: &str, src: &str) -> (Module, ModuleInfo) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    // f64 is used by zscore.wgsl (the backend only builds it when the device has SHADER_F64).
    let caps = naga::valid::Capabilities::FLOAT64;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    (module, info)
}

fn validate(name: &str, src: &str) {
    parse(name, src);
}

/// Every combination of the declared values of `decl`'s specialisable constants.
fn variants(decl: &KernelDecl) -> Vec<Vec<(&'static str, u32)>> {
    let mut all = vec![Vec::new()];
    for s in decl.specialize {
        all = all
            .into_iter()
            .flat_map(|v: Vec<(&str, u32)>| {
                s.values.iter().map(move |&x| {
                    let mut v = v.clone();
                    v.push((s.name, x));
                    v
                })
            })
            .collect();
    }
    all
}

#[test]
fn every_kernel_validates_with_common() {
    for (name, _) in shaders::KERNELS {
        let src = shaders::source(name).unwrap();
        validate(name, &src);
    }
}

/// Every declared kernel in every declared variant, as `KernelDecl::source` (the runtime's only
/// way to make one) writes it; each variant really carries its value.
#[test]
fn every_kernel_variant_validates() {
    let mut specialised = 0;
    for decl in shaders::ALL {
        for values in variants(decl) {
            let key = decl.key(&values);
            let src = decl.source(&values).unwrap_or_else(|e| panic!("{e}"));
            for (name, v) in &values {
                assert!(src.contains(&format!("const {name}: u32 = {v}u;")), "{key}");
                specialised += 1;
            }
            validate(&key, &src);
        }
    }
    // median3d, median3d_27 and median3d_9 over the 5 window classes, median3d_small over its 65
    // windows, stockham over the 6 radices, the float32 z-score's self-test with and without its
    // guard.
    assert_eq!(gpuprep_gpu::median3d::SMALL_WINDOWS.len(), 65);
    assert_eq!(specialised, 88);
}

#[test]
fn variant_helper_fails_loudly() {
    let m = shaders::MEDIAN3D;
    let err = |v: &[(&str, u32)]| m.source(v).unwrap_err().to_string();
    assert!(err(&[("MAX_WINDOW", 100)]).contains("not one of"));
    assert!(err(&[]).contains("needs values for"));
    assert!(err(&[("RADIX", 4)]).contains("not a specialisable constant"));
    assert!(shaders::FFT_CHIRP_PRE.source(&[("RADIX", 4)]).is_err());
    // A constant the WGSL does not spell as `const NAME: u32 = <n>u;`.
    let missing = KernelDecl {
        specialize: &[Specialize {
            name: "NO_SUCH",
            values: &[1],
        }],
        ..shaders::ZSCORE_FINALIZE
    };
    let e = missing.source(&[("NO_SUCH", 1)]).unwrap_err().to_string();
    assert!(e.contains("exactly once"), "{e}");
    assert!(m.source(&[("MAX_WINDOW", 729)]).is_ok());
}

/// The table holds every compute entry point of every shader exactly once, and only those.
#[test]
fn kernel_table_lists_every_entry_point() {
    for (i, a) in shaders::ALL.iter().enumerate() {
        for b in &shaders::ALL[i + 1..] {
            assert!(
                (a.shader, a.entry) != (b.shader, b.entry),
                "{} declared twice",
                a.key(&[])
            );
        }
    }
    for (name, _) in shaders::KERNELS {
        let (module, _) = parse(name, &shaders::source(name).unwrap());
        for ep in &module.entry_points {
            assert_eq!(ep.stage, naga::ShaderStage::Compute, "{name}.{}", ep.name);
            assert!(
                shaders::find(name, &ep.name).is_some(),
                "{name}.{} is not declared in gpu::shaders' kernel table",
                ep.name
            );
        }
    }
    for decl in shaders::ALL {
        let (module, _) = parse(decl.shader, &shaders::source(decl.shader).unwrap());
        assert!(
            module.entry_points.iter().any(|e| e.name == decl.entry),
            "{}: no such entry point in shaders/{}.wgsl",
            decl.key(&[]),
            decl.shader
        );
    }
}

/// The bind-group layout each declaration makes is what its entry point uses: every group-0
/// resource the entry point reaches has a declared binding of its kind (uniform, storage `read`,
/// storage `read_write`) at its index, and every declared binding the entry point leaves unused
/// (the recorder binds a buffer there anyway) is a resource of that kind at that index in the module.
#[test]
fn declared_bindings_match_wgsl() {
    for decl in shaders::ALL {
        let name = decl.key(&[]);
        let (module, info) = parse(&name, &shaders::source(decl.shader).unwrap());
        let i = module
            .entry_points
            .iter()
            .position(|e| e.name == decl.entry)
            .unwrap_or_else(|| panic!("{name}: no entry point"));
        let used = info.get_entry_point(i);
        let mut used_binds = vec![None; decl.binds.len()];
        let mut module_binds = Vec::new();
        for (h, var) in module.global_variables.iter() {
            let Some(rb) = &var.binding else { continue };
            assert_eq!(rb.group, 0, "{name}: {:?} is not in group 0", var.name);
            let kind = match var.space {
                naga::AddressSpace::Uniform => Bind::Uniform,
                naga::AddressSpace::Storage { access } => {
                    if access.contains(naga::StorageAccess::STORE) {
                        Bind::ReadWrite
                    } else {
                        Bind::Read
                    }
                }
                other => panic!("{name}: {:?} in {other:?}", var.name),
            };
            module_binds.push((rb.binding, kind));
            if used[h].is_empty() {
                continue;
            }
            let slot = used_binds.get_mut(rb.binding as usize).unwrap_or_else(|| {
                panic!("{name}: uses binding {} beyond the declared", rb.binding)
            });
            *slot = Some(kind);
        }
        for (i, &declared) in decl.binds.iter().enumerate() {
            match used_binds[i] {
                Some(kind) => assert_eq!(kind, declared, "{name}: binding {i}"),
                None => assert!(
                    module_binds.contains(&(i as u32, declared)),
                    "{name}: binding {i} is declared {declared:?} but the module has no such resource"
                ),
            }
        }
    }
}

/// A struct's layout as (member name, byte offset, type spelled as Rust spells it) and its size.
#[derive(Debug, PartialEq)]
struct Layout {
    members: Vec<(String, usize, String)>,
    size: usize,
}

fn field_type<T, F>(_: fn(&T) -> &F) -> (&'static str, usize) {
    (std::any::type_name::<F>(), std::mem::size_of::<F>())
}

/// The layout of the `#[repr(C)]` Pod struct `$t` with its fields `$f`, listed in order. The fields'
/// sizes must add up to the struct's (Pod has no padding), so a field left out of the list fails.
macro_rules! rust_layout {
    ($t:ty { $($f:ident),* $(,)? }) => {{
        let fields = vec![$((stringify!($f), std::mem::offset_of!($t, $f), field_type(|s: &$t| &s.$f))),*];
        let size = std::mem::size_of::<$t>();
        assert_eq!(
            fields.iter().map(|f| f.2 .1).sum::<usize>(),
            size,
            "{}: list every field",
            stringify!($t)
        );
        Layout {
            members: fields
                .into_iter()
                .map(|(n, o, (t, _))| (n.to_string(), o, t.to_string()))
                .collect(),
            size,
        }
    }};
}

fn wgsl_type(module: &Module, ty: naga::Handle<naga::Type>) -> String {
    let scalar = |s: naga::Scalar| match (s.kind, s.width) {
        (naga::ScalarKind::Uint, 4) => "u32".to_string(),
        (naga::ScalarKind::Sint, 4) => "i32".to_string(),
        (naga::ScalarKind::Float, 4) => "f32".to_string(),
        (naga::ScalarKind::Float, 8) => "f64".to_string(),
        other => format!("{other:?}"),
    };
    match &module.types[ty].inner {
        naga::TypeInner::Scalar(s) => scalar(*s),
        naga::TypeInner::Vector { size, scalar: s } => format!("[{}; {}]", scalar(*s), *size as u8),
        naga::TypeInner::Array {
            base,
            size: naga::ArraySize::Constant(n),
            ..
        } => format!("[{}; {n}]", wgsl_type(module, *base)),
        other => format!("{other:?}"),
    }
}

fn wgsl_layout(shader: &str, name: &str) -> Layout {
    let (module, _) = parse(shader, &shaders::source(shader).unwrap());
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{shader}: no struct {name}"));
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{shader}: {name} is not a struct");
    };
    Layout {
        members: members
            .iter()
            .map(|m| {
                (
                    m.name.clone().unwrap_or_default(),
                    m.offset as usize,
                    wgsl_type(&module, m.ty),
                )
            })
            .collect(),
        size: *span as usize,
    }
}

/// Each Rust struct the host uploads has the layout naga computes for the WGSL struct of the same
/// role: member names, offsets and types, and size.
#[test]
fn uniform_structs_match_wgsl() {
    use gpuprep_gpu::{fft, median3d, register, shift, zscore, zscore_f32};
    let pairs = [
        (
            "fft",
            "Params",
            rust_layout!(fft::FftUniform {
                n,
                stride,
                lines,
                radix,
                ns,
                tw_offset,
                m,
                chirp_offset,
                bhat_offset,
                total,
                scale,
                group,
                radices,
                tw_inv_offset,
                phase,
                scale_bits,
                flags,
                nx,
                window,
                wz,
                wy,
                wx,
                nz,
                ny
            }),
        ),
        (
            "median3d",
            "Params",
            rust_layout!(median3d::MedianUniform {
                nz,
                ny,
                nx,
                mode,
                sz,
                sy,
                sx,
                cval,
                total,
                rank,
                z_prepadded,
                _pad1
            }),
        ),
        (
            "cross_power",
            "Params",
            rust_layout!(register::CrossUniform {
                total,
                phase,
                d0,
                d1,
                d2,
                axis,
                r,
                scale_bits,
                window,
                wz,
                wy,
                wx,
                z0,
                _pad0,
                _pad1,
                _pad2
            }),
        ),
        (
            "cross_power",
            "Partial",
            rust_layout!(register::Partial { val, idx, re, im }),
        ),
        (
            "shift",
            "Params",
            rust_layout!(shift::ShiftUniform {
                n,
                stride,
                width,
                total,
                tap_offset,
                final_pass,
                use_mask,
                nz,
                ny,
                nx,
                cval,
                _pad0
            }),
        ),
        ("shift", "Tap", rust_layout!(shift::Tap { idx, w })),
        (
            "zscore",
            "Params",
            rust_layout!(zscore::ZscoreUniform {
                total,
                count,
                ddof,
                constant_zero
            }),
        ),
        (
            "zscore_f32",
            "Params",
            rust_layout!(zscore_f32::ZscoreF32Uniform {
                total,
                count,
                ddof,
                constant_zero,
                opaque_zero,
                _pad0,
                _pad1,
                _pad2
            }),
        ),
    ];
    for (shader, name, rust) in pairs {
        assert_eq!(
            rust,
            wgsl_layout(shader, name),
            "{shader}.wgsl struct {name}"
        );
    }
}

/// The float32 z-score is the path for devices without SHADER_F64: it must validate without naga's
/// FLOAT64 capability (and `zscore.wgsl`, the f64 one, must not, or this test proves nothing).
#[test]
fn zscore_f32_needs_no_f64() {
    let check = |name: &str| {
        let src = shaders::source(name).unwrap();
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    check("zscore_f32").unwrap_or_else(|e| panic!("zscore_f32.wgsl needs a capability: {e}"));
    assert!(
        check("zscore").is_err(),
        "zscore.wgsl validated without FLOAT64"
    );
}

/// The value of the `u32` constant `name` in `module`.
fn const_u32(module: &Module, name: &str) -> Option<u32> {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))?;
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => Some(v),
        ref other => panic!("{name} = {other:?} is not a u32 literal"),
    }
}

/// `WORKGROUP` (the host's invocations per workgroup) is `WG` of common.wgsl and every entry
/// point's `@workgroup_size`.
#[test]
fn workgroup_size_matches_wgsl() {
    let (module, _) = parse("common", shaders::COMMON);
    assert_eq!(const_u32(&module, "WG"), Some(WORKGROUP));
    for (name, _) in shaders::KERNELS {
        let (module, _) = parse(name, &shaders::source(name).unwrap());
        for ep in &module.entry_points {
            assert_eq!(ep.workgroup_size, [WORKGROUP, 1, 1], "{name}.{}", ep.name);
        }
    }
}

/// The one-pass FFT kernels' workgroup memory is what the host plans lines against: `WG_HALF`
/// elements a half, two halves, `WG_BYTES` in all.
#[test]
fn fft_workgroup_memory_matches_wgsl() {
    use gpuprep_gpu::fft::{WG_BYTES, WG_HALF};
    let (module, _) = parse("fft", &shaders::source("fft").unwrap());
    assert_eq!(const_u32(&module, "WG_HALF"), Some(WG_HALF as u32));
    let (_, sh) = module
        .global_variables
        .iter()
        .find(|(_, v)| v.name.as_deref() == Some("sh"))
        .expect("fft.wgsl declares `sh`");
    assert_eq!(sh.space, naga::AddressSpace::WorkGroup);
    let size = module.types[sh.ty].inner.size(module.to_ctx());
    assert_eq!(size, WG_BYTES, "sh is two halves of WG_HALF vec2<f32>");
}

/// `BoundaryMode::code()` is the `MODE_*` constant of common.wgsl for every mode, and common.wgsl
/// has no other `MODE_*` constant.
#[test]
fn boundary_mode_codes_match_wgsl() {
    let (module, _) = parse("common", shaders::COMMON);
    for m in BoundaryMode::ALL {
        let name = format!("MODE_{}", m.name().to_uppercase());
        assert_eq!(const_u32(&module, &name), Some(m.code()), "{name}");
    }
    let modes = module
        .constants
        .iter()
        .filter(|(_, c)| c.name.as_deref().is_some_and(|n| n.starts_with("MODE_")))
        .count();
    assert_eq!(modes, BoundaryMode::ALL.len());
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

/// The comparator pairs `cx(&{var}i, &{var}j)` of the WGSL function `fun` in shaders/median3d.wgsl.
fn wgsl_network(fun: &str, var: &str) -> Vec<(usize, usize)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/median3d.wgsl");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find(&format!("fn {fun}(")).expect("network function");
    let body = &text[start..start + text[start..].find("\n}").unwrap()];
    body.split("cx(&")
        .skip(1)
        .map(|call| {
            let args: Vec<usize> = call[..call.find(')').unwrap()]
                .split(',')
                .map(|a| {
                    let a = a.trim().trim_start_matches('&');
                    a.strip_prefix(var)
                        .unwrap_or_else(|| panic!("{fun}: cx of {a}, not of {var}N"))
                        .parse()
                        .unwrap()
                })
                .collect();
            (args[0], args[1])
        })
        .collect()
}

/// `median3d_27`'s networks, checked by the 0-1 principle as the CPU twin checks its tables: the
/// 9-sorter sorts every 0-1 input whose triples are sorted, and the merge leaves rank k of two sorted
/// 0-1 lists of 9 on wire MERGE9_RANK[k], for the ranks the shader reads (4..=13). The tile the shader
/// declares is the one the host dispatches.
#[test]
fn median27_tile_networks_sort_and_merge() {
    let sort9 = wgsl_network("sort_column", "s");
    let merge9 = wgsl_network("median_of_columns", "m");
    assert_eq!((sort9.len(), merge9.len()), (16, 30));
    let apply = |v: &mut Vec<u8>, net: &[(usize, usize)]| {
        for &(i, j) in net {
            let (a, b) = (v[i], v[j]);
            v[i] = a.min(b);
            v[j] = a.max(b);
        }
    };
    // A sorted 0-1 triple or list of n is its count of zeros.
    let sorted = |zeros: usize, n: usize| (0..n).map(|k| (k >= zeros) as u8).collect::<Vec<u8>>();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                let mut v = [sorted(a, 3), sorted(b, 3), sorted(c, 3)].concat();
                apply(&mut v, &sort9);
                assert!(
                    v.windows(2).all(|w| w[0] <= w[1]),
                    "sort9 of triples {a} {b} {c}: {v:?}"
                );
            }
        }
    }
    const MERGE9_RANK: [usize; 18] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 9, 17];
    for a in 0..10 {
        for b in 0..10 {
            let mut v = [sorted(a, 9), sorted(b, 9)].concat();
            let mut want = v.clone();
            want.sort();
            apply(&mut v, &merge9);
            for k in 4..=13 {
                assert_eq!(
                    v[MERGE9_RANK[k]], want[k],
                    "merge9 of {a}, {b} zeros: rank {k}"
                );
            }
        }
    }
    let src = gpuprep_gpu::shaders::KERNELS
        .iter()
        .find(|(n, _)| *n == "median3d")
        .unwrap()
        .1;
    let [tx, ty] = gpuprep_gpu::median3d::TILE_27;
    assert!(src.contains(&format!("const TX: u32 = {tx}u;")));
    assert!(src.contains(&format!("const TY: u32 = {ty}u;")));
    assert!(src.contains(&format!("const HX: u32 = {}u;", tx + 2)));
    assert!(src.contains(&format!("const HY: u32 = {}u;", ty + 2)));
    assert_eq!(tx * ty, 64, "one invocation per output of the tile");
}

/// `median3d_27` and `median3d_9` are straight-line code in naga's IR: no loop and no function-local
/// array in their entry points or in any function they call (shader compilers zero-fill and bounds-clamp private arrays, and
/// may keep them in memory rather than registers). The generic `median3d`, which selects in a private
/// array, is the walk's own check: it must be caught.
#[test]
fn straight_line_medians_have_no_local_arrays_or_loops() {
    let src = shaders::MEDIAN3D_27
        .source(&[("MAX_WINDOW", 27)])
        .unwrap_or_else(|e| panic!("{e}"));
    let (module, _) = parse("median3d", &src);
    let faults_of = |entry: &str| {
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == entry)
            .unwrap();
        let mut reached = Vec::new();
        let faults = straight_line_faults(&module, &ep.function, entry, &mut reached);
        (faults, reached.len())
    };
    let (faults, reached) = faults_of("median3d_27");
    assert!(faults.is_empty(), "median3d_27: {faults:?}");
    // It reaches its helpers (load_triple, sort_column, median_of_columns, cx, key3, extend_index, ...).
    assert!(reached >= 6, "the walk saw only {reached} called functions");
    // The 1x3x3 entry point likewise (cx, med3, key3, extend_index, source_z, voxel, ...).
    let (faults, reached) = faults_of("median3d_9");
    assert!(faults.is_empty(), "median3d_9: {faults:?}");
    assert!(reached >= 5, "the walk saw only {reached} called functions");
    let (faults, _) = faults_of("median3d");
    assert!(
        faults.iter().any(|f| f.contains("loop")) && faults.iter().any(|f| f.contains("array")),
        "the walk missed median3d's selection loop and window array: {faults:?}"
    );
    // `median3d_small` gathers its window by loops of constant bounds into an array of 27 (for the
    // shader compiler to unroll); its selection, `select27`, is straight-line on named scalars.
    let (h, select27) = module
        .functions
        .iter()
        .find(|(_, f)| f.name.as_deref() == Some("select27"))
        .expect("select27");
    let mut reached = vec![h];
    let faults = straight_line_faults(&module, select27, "select27", &mut reached);
    assert!(faults.is_empty(), "select27: {faults:?}");
    assert!(select27.local_variables.len() >= 27, "one variable per key");
}

/// Loops and function-local arrays in `f` and, once each, in every function it calls.
fn straight_line_faults(
    module: &Module,
    f: &naga::Function,
    name: &str,
    reached: &mut Vec<naga::Handle<naga::Function>>,
) -> Vec<String> {
    let mut faults = Vec::new();
    for (_, var) in f.local_variables.iter() {
        if let naga::TypeInner::Array { .. } = module.types[var.ty].inner {
            faults.push(format!("{name}: local array {:?}", var.name));
        }
    }
    let mut calls = Vec::new();
    visit_statements(&f.body, &mut |st| match st {
        naga::Statement::Loop { .. } => faults.push(format!("{name}: a loop")),
        naga::Statement::Call { function, .. } => calls.push(*function),
        _ => {}
    });
    for h in calls {
        if !reached.contains(&h) {
            reached.push(h);
            let g = &module.functions[h];
            let g_name = g.name.clone().unwrap_or_default();
            faults.extend(straight_line_faults(module, g, &g_name, reached));
        }
    }
    faults
}

fn visit_statements(block: &naga::Block, visit: &mut impl FnMut(&naga::Statement)) {
    for st in block.iter() {
        visit(st);
        match st {
            naga::Statement::Block(b) => visit_statements(b, visit),
            naga::Statement::If { accept, reject, .. } => {
                visit_statements(accept, visit);
                visit_statements(reject, visit);
            }
            naga::Statement::Switch { cases, .. } => {
                for c in cases {
                    visit_statements(&c.body, visit);
                }
            }
            naga::Statement::Loop {
                body, continuing, ..
            } => {
                visit_statements(body, visit);
                visit_statements(continuing, visit);
            }
            _ => {}
        }
    }
}
