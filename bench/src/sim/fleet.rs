//! Simulated fleets: node speeds, slots, links, foreign load and failures; a few generated ones.

/// One simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    /// Name.
    pub name: String,
    /// The host it runs on (a submitter's name when it is that submitter's own machine).
    pub host: String,
    /// Compile speed relative to the trace's recording host.
    pub speed: f64,
    /// Concurrent compiles.
    pub slots: u32,
    /// One-way latency, seconds.
    pub latency_s: f64,
    /// Link bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Foreign CPU load, 0–1000: the node computes at `speed * (1 - load/1000)`.
    pub foreign_load: u16,
    /// When the node dies, if it does.
    pub fails_at_s: Option<f64>,
}

/// A named fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Its name in the output.
    pub name: &'static str,
    /// Its nodes.
    pub nodes: Vec<SimNode>,
}

fn lan(name: &str, speed: f64, slots: u32) -> SimNode {
    SimNode {
        name: name.into(),
        host: name.into(),
        speed,
        slots,
        latency_s: 0.0005,
        bandwidth: 100e6,
        foreign_load: 0,
        fails_at_s: None,
    }
}

fn home(submitter: &str, speed: f64, slots: u32) -> SimNode {
    SimNode { latency_s: 0.0, bandwidth: f64::INFINITY, ..lan(submitter, speed, slots) }
}

/// The generated fleets.
pub fn fleets() -> Vec<Fleet> {
    let hetero = || {
        vec![
            home("dev-a", 1.0, 2),
            lan("fast", 2.0, 4),
            lan("mid-1", 1.0, 4),
            lan("mid-2", 1.0, 2),
            lan("old", 0.5, 4),
            lan("pi", 0.25, 4),
        ]
    };
    let mut wan = hetero();
    for n in wan.iter_mut().skip(1) {
        n.latency_s = 0.010;
        n.bandwidth = 20e6;
    }
    let mut loaded = hetero();
    loaded[1].foreign_load = 600;
    loaded[2].foreign_load = 300;
    let mut flaky = hetero();
    flaky[1].fails_at_s = Some(0.8);
    vec![
        Fleet {
            name: "uniform",
            nodes: vec![
                home("dev-a", 1.0, 2),
                lan("n1", 1.0, 4),
                lan("n2", 1.0, 4),
                lan("n3", 1.0, 4),
                lan("n4", 1.0, 4),
            ],
        },
        Fleet { name: "hetero", nodes: hetero() },
        Fleet { name: "wan", nodes: wan },
        Fleet { name: "loaded", nodes: loaded },
        Fleet { name: "flaky", nodes: flaky },
    ]
}
