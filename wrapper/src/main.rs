//! `discomy-cc`: thin entry point; everything lives in [`discomy_wrapper::run`].

fn main() -> std::process::ExitCode {
    discomy_wrapper::run(std::env::args_os().collect())
}
