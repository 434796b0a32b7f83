use super::*;

fn v(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// The makefile gcc 12's lto-wrapper wrote for Lua's `-flto=auto` link with EL9's flags (two of
/// its five partitions).
const CAPTURED: &str = "/tmp/ccgtSen8.ltrans0.ltrans.o:
\t@gcc  '-xlto' '-c' '-fno-openmp' '-fno-openacc' '-fPIC' '-g' '-m64' '-march=x86-64-v2' '-mtune=generic' '-O2' '-O2' '-fcf-protection=full' '-mtune=generic' '-march=x86-64' '-dumpdir' 'lua.' '-dumpbase' './lua.ltrans0.ltrans' '-fltrans' '-o' '/tmp/ccgtSen8.ltrans0.ltrans.o' '/tmp/ccgtSen8.ltrans0.o'
\t@-touch -r /tmp/ccgtSen8.ltrans0.o /tmp/ccgtSen8.ltrans0.o.tem > /dev/null 2>&1 && mv /tmp/ccgtSen8.ltrans0.o.tem /tmp/ccgtSen8.ltrans0.o
/tmp/ccgtSen8.ltrans1.ltrans.o:
\t@gcc  '-xlto' '-c' '-fno-openmp' '-fno-openacc' '-fPIC' '-g' '-m64' '-march=x86-64-v2' '-mtune=generic' '-O2' '-O2' '-fcf-protection=full' '-mtune=generic' '-march=x86-64' '-dumpdir' 'lua.' '-dumpbase' './lua.ltrans1.ltrans' '-fltrans' '-o' '/tmp/ccgtSen8.ltrans1.ltrans.o' '/tmp/ccgtSen8.ltrans1.o'
\t@-touch -r /tmp/ccgtSen8.ltrans1.o /tmp/ccgtSen8.ltrans1.o.tem > /dev/null 2>&1 && mv /tmp/ccgtSen8.ltrans1.o.tem /tmp/ccgtSen8.ltrans1.o
.PHONY: all
all: \\
\t/tmp/ccgtSen8.ltrans1.ltrans.o \\
\t/tmp/ccgtSen8.ltrans0.ltrans.o
";

#[test]
fn ltrans_recipes_go_through_the_wrapper_and_nothing_else_changes() {
    let (text, rules) = rewrite_makefile(CAPTURED, Path::new("/usr/bin/discomy-cc"));
    assert_eq!(rules, 2);
    let lines: Vec<&str> = text.lines().collect();
    let original: Vec<&str> = CAPTURED.lines().collect();
    assert_eq!(lines.len(), original.len());
    for (new, old) in lines.iter().zip(&original) {
        if old.contains("'-fltrans'") {
            let command = old.strip_prefix("\t@").unwrap();
            assert_eq!(*new, format!("\t@'/usr/bin/discomy-cc' {command}"));
        } else {
            assert_eq!(new, old, "a line other than an LTRANS recipe changed");
        }
    }
    assert!(text.ends_with("ltrans0.ltrans.o\n"));
}

#[test]
fn the_wrapper_path_is_quoted_for_the_shell_and_for_make() {
    let recipe = "x.o:\n\t-+gcc '-xlto' '-fltrans' '-o' 'x.o' 'y.o'\n";
    let (text, rules) = rewrite_makefile(recipe, Path::new("/opt/it's $HOME/discomy-cc"));
    assert_eq!(rules, 1);
    assert_eq!(
        text,
        "x.o:\n\t-+'/opt/it'\\''s $$HOME/discomy-cc' gcc '-xlto' '-fltrans' '-o' 'x.o' 'y.o'\n"
    );
    assert_eq!(rewrite_makefile("all:\n\techo '-fltrans-x'\n", Path::new("/w")).1, 0);
}

#[test]
fn an_ltrans_call_becomes_a_unit_without_its_names() {
    let args = v("-xlto -c -fno-openmp -fPIC -g -O2 -dumpdir lua. -dumpbase ./lua.ltrans0.ltrans \
                  -fltrans -o /tmp/cc.ltrans0.ltrans.o /tmp/cc.ltrans0.o");
    let call = detect(&args).unwrap();
    assert_eq!(call.input, "/tmp/cc.ltrans0.o");
    assert_eq!(call.output, PathBuf::from("/tmp/cc.ltrans0.ltrans.o"));
    assert_eq!(call.name, "./lua.ltrans0.ltrans");
    assert_eq!(call.args, v("-x lto -c -fno-openmp -fPIC -g -O2 -fltrans /tmp/cc.ltrans0.o"));
    // `-x lto` separate, no -dumpbase: named by the input.
    let call = detect(&v("-x lto -c -fltrans -o out.o in.o")).unwrap();
    assert_eq!((call.name.as_str(), call.args), ("in.o", v("-x lto -c -fltrans in.o")));
}

#[test]
fn other_calls_are_not_ltrans_units() {
    for args in [
        "-c -O2 a.c -o a.o",
        "-xlto -c -o out.o in.o",
        "-x lto -c -o out.o in.o",
        "-xlto -fltrans -o out.o in.o",
        "-c -fltrans -o out.o in.o",
        "-xlto -c -fltrans in.o",
        "-xlto -c -fltrans -o out.o in.o other.o",
        "-xlto -c -fltrans -o out.o -o other.o in.o",
        "-xlto -c -fltrans -o",
        "-xlto -c -fltrans -Xassembler x -o out.o in.o",
    ] {
        assert_eq!(detect(&v(args)), None, "{args}");
    }
}

#[test]
fn lto_links_are_the_ones_whose_last_lto_switch_enables_it() {
    assert!(is_lto_link(&v("-o lua -flto=auto lua.o liblua.a")));
    assert!(is_lto_link(&v("-flto -o x x.o")));
    assert!(!is_lto_link(&v("-flto=auto -fno-lto -o x x.o")));
    assert!(!is_lto_link(&v("-flto-partition=one -o x x.o")));
    assert!(!is_lto_link(&v("-o x x.o")));
}

#[test]
fn make_runs_the_copy_with_the_jobs_raised_never_lowered() {
    let os = |s: &str| s.split_whitespace().map(OsString::from).collect::<Vec<_>>();
    let args = os("-f /tmp/cc.mk -j2 all");
    let copy = Some((1, Path::new("/tmp/cc.mk.discomy7")));
    assert_eq!(make_args(&args, copy, None), (os("-f /tmp/cc.mk.discomy7 -j2 all"), false));
    assert_eq!(make_args(&args, copy, Some(16)), (os("-f /tmp/cc.mk.discomy7 -j16 all"), true));
    assert_eq!(make_args(&args, copy, Some(1)), (os("-f /tmp/cc.mk.discomy7 -j2 all"), false));
    // No copy (unreadable, too large, no LTRANS recipe): the original runs.
    assert_eq!(make_args(&args, None, None), (args.clone(), false));
    // A jobserver (no -j): the count is added only when asked for.
    let args = os("-f /tmp/cc.mk all");
    assert_eq!(make_args(&args, None, None), (args.clone(), false));
    assert_eq!(make_args(&args, None, Some(8)), (os("-j8 -f /tmp/cc.mk all"), true));
    assert_eq!(make_args(&os("--version"), None, None), (os("--version"), false));
}
