//! The generated fleets the `sim` command compares policies on (uniform, hetero, wan, loaded,
//! flaky); the node model is `discomy_coordinator::plan::fleet`.

use discomy_coordinator::plan::fleet::SimNode;

/// A named fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Its name in the output.
    pub name: &'static str,
    /// Its nodes.
    pub nodes: Vec<SimNode>,
}

/// The generated fleets.
pub fn fleets() -> Vec<Fleet> {
    let (lan, home) = (SimNode::lan, SimNode::home);
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
