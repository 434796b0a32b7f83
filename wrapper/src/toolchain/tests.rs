//! Tests of toolchain collection and its cache.

use super::extras::plugins_in_specs;
use super::*;

#[test]
fn ldd_output_is_parsed() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f11)\n\
                \t/lib64/ld-linux-x86-64.so.2 (0x00007f11)\n";
    let libs = parse_ldd(text, Path::new("/x")).unwrap();
    assert_eq!(
        libs,
        [
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/lib64/ld-linux-x86-64.so.2")
        ]
    );
    assert!(parse_ldd("\tstatically linked\n", Path::new("/x")).unwrap().is_empty());
    assert!(matches!(
        parse_ldd("\tlibfoo.so.1 => not found\n", Path::new("/x")),
        Err(ToolchainError::MissingLibrary { .. })
    ));
}

#[test]
fn plugins_are_found_in_red_hat_specs() {
    let text = "*cc1_options:\n+ %{!fno-use-annobin:%{!iplugindir*:%:find-plugindir()} \
                -fplugin=annobin}\n\n*x:\n-fplugin=gcc-annobin -fplugin=/opt/p.so\n";
    assert_eq!(plugins_in_specs(text), ["annobin", "gcc-annobin", "/opt/p.so"]);
}

#[test]
fn symlinks_are_recorded_component_by_component() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    fs::create_dir_all(root.join("real/bin")).unwrap();
    fs::write(root.join("real/bin/tool-1"), b"x").unwrap();
    std::os::unix::fs::symlink("real", root.join("link")).unwrap();
    std::os::unix::fs::symlink("tool-1", root.join("real/bin/tool")).unwrap();
    std::os::unix::fs::symlink("../real/./bin/tool", root.join("real/up")).unwrap();
    let mut tree = Tree::default();
    let real = tree.add(&root.join("link/up")).unwrap();
    assert_eq!(real, root.join("real/bin/tool-1"));
    let links: Vec<(String, String)> = tree
        .nodes
        .iter()
        .filter_map(|(p, n)| match n {
            Node::Symlink(t) => Some((p.clone(), t.clone())),
            Node::File => None,
        })
        .collect();
    let r = root.to_str().unwrap();
    assert_eq!(
        links,
        [
            (format!("{r}/link"), "real".to_string()),
            (format!("{r}/real/bin/tool"), "tool-1".to_string()),
            (format!("{r}/real/up"), "../real/./bin/tool".to_string()),
        ]
    );
    std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
    assert!(matches!(tree.add(&root.join("loop")), Err(ToolchainError::SymlinkLoop(_))));
}
