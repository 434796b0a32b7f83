//! `discomy-sandbox`: runs one program in a throw-away sandbox, for the worker. The engine is
//! `discomy_compilerd::sandbox::engine`.

fn main() -> std::process::ExitCode {
    discomy_compilerd::sandbox::engine::run()
}
