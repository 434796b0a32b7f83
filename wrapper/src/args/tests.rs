//! Tests of the argument classification.

use super::*;

fn v(args: &str) -> Vec<String> {
    args.split_whitespace().map(String::from).collect()
}

fn unit(args: &str) -> Unit {
    match classify("gcc", &v(args)) {
        Class::Distribute(u) => u,
        other => panic!("{args}: expected distributable, got {other:?}"),
    }
}

fn is_local(args: &str) -> bool {
    matches!(classify("gcc", &v(args)), Class::Local(_))
}

fn is_passthrough(args: &str) -> bool {
    matches!(classify("gcc", &v(args)), Class::Passthrough(_))
}

#[test]
fn simple_compile_splits_cpp_and_compile_args() {
    let u = unit("-O2 -Wall -Iinc -DX=1 -include cfg.h -c src/a.c -o obj/a.o");
    assert_eq!(u.source, "src/a.c");
    assert_eq!(u.output, PathBuf::from("obj/a.o"));
    assert_eq!(u.language, Language::C);
    assert_eq!(u.compile_args, v("-O2 -Wall"));
    assert_eq!(u.cpp_args, v("-O2 -Wall -Iinc -DX=1 -include cfg.h src/a.c"));
    assert!(u.dep_args.is_empty());
}

#[test]
fn default_output_and_assembly() {
    assert_eq!(unit("-c dir/x.cpp").output, PathBuf::from("x.o"));
    let s = unit("-S x.c");
    assert_eq!(s.output, PathBuf::from("x.s"));
    assert_eq!(s.output_kind, OutputKind::Assembly);
    assert_eq!(unit("-c x.cpp").language, Language::Cxx);
}

#[test]
fn cxx_driver_compiles_c_files_as_cxx() {
    let Class::Distribute(u) = classify("g++", &v("-c x.c")) else { panic!() };
    assert_eq!(u.language, Language::Cxx);
    let Class::Distribute(u) = classify("g++", &v("-x c -c x.c")) else { panic!() };
    assert_eq!(u.language, Language::C);
}

#[test]
fn dependency_files_follow_the_driver() {
    let u = unit("-MD -c a.c -o obj/a.o");
    assert_eq!(u.dep_args, v("-MF obj/a.d -MQ obj/a.o"));
    let u = unit("-MMD -MF x.d -c a.c");
    assert_eq!(u.dep_args, v("-MQ a.o"));
    let u = unit("-MD -MT t -c a.c");
    assert_eq!(u.dep_args, v("-MF a.d"));
    assert!(unit("-c a.c -MP").dep_args.is_empty());
}

#[test]
fn non_compiles_pass_through() {
    assert!(is_passthrough("a.o b.o -o prog"));
    assert!(is_passthrough("-E a.c"));
    assert!(is_passthrough("-M a.c"));
    assert!(is_passthrough("--version"));
    assert!(is_passthrough("-c"));
}

#[test]
fn unsafe_or_unknown_compiles_stay_local() {
    for args in [
        "-c a.c b.c",
        "-c conftest.c",
        "-march=native -c a.c",
        "-fprofile-generate -c a.c",
        "--coverage -c a.c",
        "-c a.c -o -",
        "-wrapper /bin/sh,-c,touch -c a.c",
        "@args -c a.c",
        "-specs=no-such.specs -c a.c",
        "-specs /x.specs -c a.c",
        "-B/tmp -c a.c",
        "-save-temps -c a.c",
        "-frandom-seed -c a.c",
        "-x assembler-with-cpp -c a.S",
        "-c a.s",
        "-c - ",
        "--frobnicate -c a.c",
        "-frecord-gcc-switches -c a.c",
        "-c a.i",
        "-gsplit-dwarf -gno-record-gcc-switches -c a.c",
        "-Wa,-adhln=x.lst -c a.c",
        "-c a.c x.o",
    ] {
        assert!(is_local(args), "{args} should be local: {:?}", classify("gcc", &v(args)));
    }
}

#[test]
fn specs_and_plugins_distribute_with_absolute_paths() {
    let u = unit("-specs=/usr/lib/rpm/redhat/redhat-hardened-cc1 -fplugin=annobin -c a.c");
    assert_eq!(
        u.compile_args,
        v("-specs=/usr/lib/rpm/redhat/redhat-hardened-cc1 -fplugin=annobin")
    );
    let u = unit("-fplugin=/opt/p/x.so -fplugin-arg-x-k=v -c a.c");
    assert_eq!(u.compile_args, v("-fplugin=/opt/p/x.so -fplugin-arg-x-k=v"));
}

#[test]
fn every_lto_form_distributes() {
    for lto in ["-flto", "-flto=auto", "-flto=4", "-flto=jobserver"] {
        for fat in ["-ffat-lto-objects", "-fno-fat-lto-objects"] {
            let u = unit(&format!("-O2 {lto} {fat} -frandom-seed=a.o -c a.c"));
            assert_eq!(u.compile_args, v(&format!("-O2 {lto} {fat} -frandom-seed=a.o")));
        }
    }
    assert!(is_local("-frandom-seed -c a.c"));
}

#[test]
fn debug_without_recorded_switches_distributes() {
    let u = unit("-g -gno-record-gcc-switches -c a.c");
    assert_eq!(u.compile_args, v("-g -gno-record-gcc-switches"));
    assert!(!is_local("-g0 -c a.c"));
    assert!(!u.needs_sources);
}

#[test]
fn debug_with_recorded_switches_needs_source_mode() {
    for args in ["-g -c a.c", "-O2 -g3 -c a.c", "-g -grecord-gcc-switches -c a.c"] {
        assert!(unit(args).needs_sources, "{args}");
    }
}

#[test]
fn dependency_files_as_the_driver_names_them() {
    assert_eq!(unit("-c a.c").deps, Deps::None);
    let file = |user_only, file: &str, targets: &str| Deps::File {
        user_only,
        file: file.into(),
        targets: v(targets),
    };
    assert_eq!(unit("-MD -c src/a.c -o out/a.o").deps, file(false, "out/a.d", "-MQ out/a.o"));
    assert_eq!(unit("-MMD -MP -c a.c").deps, file(true, "a.d", "-MP -MQ a.o"));
    assert_eq!(
        unit("-MT x.o -MD -MP -MF .deps/x.Tpo -c x.c -o x.o").deps,
        file(false, ".deps/x.Tpo", "-MT x.o -MP")
    );
    assert!(matches!(unit("-Wp,-MD,a.d -c a.c").deps, Deps::Unsupported(_)));
}

#[test]
fn source_args_drop_output_and_dependency_options() {
    let u = unit(
        "-O2 -MD -MF x.d -MT t -MQ q -MP -Wp,-MD,y.d,-D_FORTIFY_SOURCE=2 -Wp,-MMD,z.d \
         -I inc -DX=1 -c a.c -o out/a.o",
    );
    assert_eq!(u.source_args, v("-O2 -Wp,-D_FORTIFY_SOURCE=2 -I inc -DX=1 -c a.c"));
    assert_eq!(unit("-c a.c -o a.o -MFx.d").source_args, v("-c a.c"));
}

#[test]
fn recorded_debug_info_is_cacheable_and_distributable() {
    assert!(!is_local("-g -c a.c"));
    assert!(cacheable("gcc", &v("-O2 -g -c a.c")).is_some());
    assert!(cacheable("gcc", &v("-gsplit-dwarf -c a.c")).is_none());
    assert!(cacheable("gcc", &v("a.o -o prog")).is_none());
}

#[test]
fn missing_option_value_passes_through() {
    assert!(is_passthrough("-c a.c -o"));
}
