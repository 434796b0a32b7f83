//! The hostile toolchain's parts: the driver script (`EVIL_CC`) and its static helper
//! (`EVIL_TOOL`), a toolchain [`Tree`] built by hand from host files, and what the confinement
//! test observes with (host processes and files, one hostile compile's [`Outcome`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use discomy_protocol::{Digest, EntryKind, Response, ToolchainManifest};

use crate::client::{Client, compile_request, describe, install, strings};

/// The hostile "compiler". The first line of the unit says what to try.
pub(crate) const EVIL_CC: &str = r#"#!/usr/bin/dash
# discomy test fixture: a hostile "compiler". The unit's first line says what to try:
#   hello | write TAG DIR [PREFIX] | read TAG DIR [PREFIX] | net PORT | spin | bomb | cbomb | mem
#   | link TARGET (the output, a symlink to TARGET) | fifo (the output, a FIFO)
#   | text (a text file as the "object") | syscalls (kernel interfaces the filter refuses)
# Otherwise the output is the start of an ELF relocatable object.
unit=unit.i
out=unit.o
prev=
for a in "$@"; do
  case "$a" in *.i) unit="$a" ;; esac
  if [ "$prev" = "-o" ]; then out="$a"; fi
  prev="$a"
done
read -r mode a1 a2 a3 < "$unit" || { echo "evil-cc: cannot read $unit" >&2; exit 3; }
case "$mode" in
hello)
  echo "evil-cc: hello from $(pwd), args: $*"
  ;;
write)
  for t in "/etc/discomy-marker-$a1" "/usr/discomy-marker-$a1" "/discomy-marker-$a1" \
      "../discomy-marker-$a1" "$a2/discomy-marker-$a1" "$a2/worker0.work/discomy-marker-$a1" \
      "/usr/bin/evil-cc" "$a3/etc/discomy-marker-$a1" \
      "$a3$a2/discomy-marker-$a1"; do
    if (echo pwned > "$t") 2>/dev/null; then echo "WROTE $t"; else echo "denied $t"; fi
  done
  ;;
read)
  for f in /etc/passwd /etc/shadow /usr/share/discomy-leak "$a2/secret-$a1" \
      /proc/1/root/etc/passwd "$a3/etc/passwd" "$a3$a2/secret-$a1"; do
    if (while IFS= read -r l; do echo "LEAK $f: $l"; done < "$f") 2>/dev/null; then
      echo "opened $f"
    else
      echo "unreadable $f"
    fi
  done
  ;;
net)
  /usr/bin/evil-tool net 127.0.0.1 "$a1"
  echo "evil-tool exit $?"
  ;;
spin)
  while :; do :; done
  ;;
bomb)
  bomb() { bomb | bomb & }
  while :; do bomb; done
  ;;
cbomb)
  /usr/bin/evil-tool bomb
  echo "evil-tool exit $?"
  ;;
mem)
  /usr/bin/evil-tool mem 2048
  echo "evil-tool exit $?"
  ;;
link)
  /usr/bin/evil-tool link "$a1" "$out"
  exit 0
  ;;
fifo)
  /usr/bin/evil-tool fifo "$out"
  exit 0
  ;;
syscalls)
  /usr/bin/evil-tool syscalls
  ;;
text)
  printf 'not an object\n' > "$out"
  exit 0
  ;;
*)
  echo "evil-cc: unknown mode $mode" >&2
  exit 4
  ;;
esac
printf '\177ELF\002\001\001\000\000\000\000\000\000\000\000\000\001\000' > "$out"
exit 0
"#;

/// A static helper: `net HOST PORT` connects, `mem MIB` allocates and touches memory, `bomb`
/// forks forever, `link TARGET PATH` makes a symlink, `fifo PATH` a FIFO.
pub(crate) const EVIL_TOOL: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "net") == 0) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { printf("net: socket failed: %s\n", strerror(errno)); return 1; }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[3]));
    inet_pton(AF_INET, argv[2], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
      printf("net: CONNECTED\n");
      (void)!write(fd, "pwned\n", 6);
      return 0;
    }
    printf("net: connect failed: %s\n", strerror(errno));
    return 1;
  }
  if (argc >= 3 && strcmp(argv[1], "mem") == 0) {
    long want = atol(argv[2]), got = 0;
    for (; got < want; got += 64) {
      char *p = malloc(64L << 20);
      if (!p) { printf("mem: malloc failed after %ld MiB\n", got); return 1; }
      memset(p, 1, 64L << 20);
      printf("mem: %ld MiB\n", got + 64);
      fflush(stdout);
    }
    printf("mem: TOUCHED ALL %ld MiB\n", got);
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "syscalls") == 0) {
    /* Kernel interfaces a compiler never needs: each must fail with ENOSYS (the filter). */
    char params[512];
    memset(params, 0, sizeof params);
    struct { const char *name; long nr, a, b, c; } t[] = {
      {"unshare-user", SYS_unshare, CLONE_NEWUSER, 0, 0},
      {"unshare-mount", SYS_unshare, CLONE_NEWNS, 0, 0},
      {"setns", SYS_setns, 0, 0, 0},
      {"ptrace-traceme", SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0},
      {"io_uring_setup", 425, 1, (long)params, 0},
      {"bpf", SYS_bpf, 0, 0, 0},
      {"perf_event_open", SYS_perf_event_open, (long)params, 0, -1},
      {"keyctl", SYS_keyctl, 0, 0, 0},
      {"userfaultfd", SYS_userfaultfd, 0, 0, 0},
    };
    for (unsigned i = 0; i < sizeof t / sizeof t[0]; i++) {
      errno = 0;
      long r = syscall(t[i].nr, t[i].a, t[i].b, t[i].c, 0, 0);
      if (r < 0 && errno == ENOSYS) printf("syscall %s: filtered\n", t[i].name);
      else printf("syscall %s: REACHED (%ld, %s)\n", t[i].name, r, strerror(errno));
    }
    errno = 0;
    long child = syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0);
    if (child == 0) _exit(0);
    if (child > 0) waitpid((pid_t)child, 0, 0);
    if (child < 0 && errno == ENOSYS) printf("syscall clone-newnet: filtered\n");
    else printf("syscall clone-newnet: REACHED (%ld, %s)\n", child, strerror(errno));
    /* An ordinary child still works (glibc's fork and posix_spawn fall back from clone3). */
    pid_t p = fork();
    if (p == 0) _exit(7);
    int st = 0;
    if (p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 7)
      printf("fork: works\n");
    else
      printf("fork: BROKEN\n");
    return 0;
  }
  if (argc >= 4 && strcmp(argv[1], "link") == 0) return symlink(argv[2], argv[3]) == 0 ? 0 : 1;
  if (argc >= 3 && strcmp(argv[1], "fifo") == 0) return mkfifo(argv[2], 0644) == 0 ? 0 : 1;
  if (argc >= 2 && strcmp(argv[1], "bomb") == 0) {
    /* A fork bomb that does not give up when fork fails (dash does). */
    for (;;) (void)fork();
  }
  return 2;
}
"#;

/// A toolchain tree built by hand: entries by path, and the content of each blob.
#[derive(Default, Clone)]
pub(crate) struct Tree {
    entries: BTreeMap<String, EntryKind>,
    blobs: HashMap<Digest, Vec<u8>>,
}

impl Tree {
    pub(crate) fn file(&mut self, path: &str, data: Vec<u8>, executable: bool) {
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        self.blobs.insert(digest, data);
        self.entries.insert(path.to_owned(), EntryKind::File { digest, size, executable });
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.entries.insert(path.to_owned(), EntryKind::Symlink { target: target.to_owned() });
    }

    /// A host file at `path`, resolved one component at a time: every symlink met on the way
    /// (`/lib` → `usr/lib`, …) becomes a symlink entry with its literal target, the file itself
    /// a file entry at its real path.
    fn host(&mut self, path: &Path) {
        let mut pending: Vec<OsString> =
            path.components().rev().filter_map(|c| normal(c).map(OsString::from)).collect();
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&name);
            let meta = fs::symlink_metadata(&next)
                .unwrap_or_else(|e| panic!("{} (for {}): {e}", next.display(), path.display()));
            if meta.file_type().is_symlink() {
                hops += 1;
                assert!(hops < 40, "symlink loop at {}", next.display());
                let target = fs::read_link(&next).unwrap();
                self.symlink(next.to_str().unwrap(), target.to_str().unwrap());
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::ParentDir => pending.push("..".into()),
                        c => pending.extend(normal(c).map(OsString::from)),
                    }
                }
            } else {
                cur = next;
            }
        }
        let meta = fs::metadata(&cur).unwrap();
        assert!(meta.is_file(), "{} is not a file", cur.display());
        let executable = meta.permissions().mode() & 0o111 != 0;
        self.file(cur.to_str().unwrap(), fs::read(&cur).unwrap(), executable);
    }

    /// A host program and the libraries `ldd` names for it, the loader included.
    pub(crate) fn host_program(&mut self, program: &Path) {
        self.host(program);
        let out = Command::new("ldd").arg(program).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = line.rsplit("=>").next().unwrap_or("").trim();
            let lib = lib.split(" (").next().unwrap_or("").trim();
            if lib.starts_with('/') {
                self.host(Path::new(lib));
            }
        }
    }

    pub(crate) fn manifest(&self, name: &str, driver: &str) -> ToolchainManifest {
        let manifest = ToolchainManifest {
            name: name.to_owned(),
            driver: driver.to_owned(),
            entries: self
                .entries
                .iter()
                .map(|(path, kind)| discomy_protocol::TreeEntry {
                    path: path.clone(),
                    kind: kind.clone(),
                })
                .collect(),
        };
        manifest.validate().unwrap();
        manifest
    }

    pub(crate) fn install(
        &self,
        client: &mut Client,
        manifest: &ToolchainManifest,
    ) -> Result<Digest, Box<Response>> {
        install(client, manifest, &|d| self.blobs[d].clone())
    }
}

fn normal(c: Component<'_>) -> Option<&std::ffi::OsStr> {
    match c {
        Component::Normal(n) => Some(n),
        Component::ParentDir => Some("..".as_ref()),
        _ => None,
    }
}

/// Processes on this host running the hostile driver or its helper (forks keep the command line).
pub(crate) fn evil_processes() -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("/usr/bin/evil-cc") || cmdline.contains("/usr/bin/evil-tool") {
            out.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    out
}

/// Every path under `dir` whose name contains `tag`.
pub(crate) fn names_with(dir: &Path, tag: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(tag) {
            out.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(names_with(&path, tag));
        }
    }
    out
}

/// Removes files that a failed confinement left on the host, also when the test panics.
pub(crate) struct RemoveOnDrop(pub(crate) Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// Records `what` as a problem unless `ok`.
pub(crate) fn check(problems: &mut Vec<String>, ok: bool, what: String) {
    if !ok {
        problems.push(what);
    }
}

/// What one hostile compile produced: the reply, its text, and how long it took.
pub(crate) struct Outcome {
    pub(crate) response: Response,
    pub(crate) text: String,
    pub(crate) elapsed: Duration,
}

impl Outcome {
    pub(crate) fn compiled_ok(&self) -> bool {
        matches!(&self.response, Response::Compiled(r) if r.exit_code == 0)
    }

    pub(crate) fn stdout(&self) -> String {
        match &self.response {
            Response::Compiled(r) => String::from_utf8_lossy(&r.stdout).into_owned(),
            _ => String::new(),
        }
    }
}

pub(crate) fn run_evil(client: &mut Client, identity: Digest, unit: &str) -> Outcome {
    let started = Instant::now();
    let (body, response) =
        client.call_raw(&compile_request(identity, "evil-cc", &strings(&["-O2"]), unit.as_bytes()));
    let elapsed = started.elapsed();
    let mut text = describe(&response);
    text.push_str(&String::from_utf8_lossy(&body));
    eprintln!("[e2e] evil-cc `{}` after {elapsed:.1?}: {}", unit.trim(), describe(&response));
    client.ping(unit.trim());
    Outcome { response, text, elapsed }
}
