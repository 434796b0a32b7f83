//! discomy-bench: side-by-side benchmarks (placeholder until the bench helper lands).
fn main() {}
