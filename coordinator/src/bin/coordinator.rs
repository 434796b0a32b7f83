//! `discomy-coordinator`: the farm's scheduler daemon. Parsing only; the work is in the library.
fn main() {}
