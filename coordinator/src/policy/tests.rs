//! Unit tests of the pure policy: exploration, fairness, affinity, queueing, loss, locality.

use super::*;

const GCC: ToolchainKey = [1; 32];
const CLANG: ToolchainKey = [2; 32];

/// The defaults, with a node's speed trusted after one sample (tests teach it with one job).
fn base() -> PolicyConfig {
    PolicyConfig { min_samples: 1, ..PolicyConfig::default() }
}

fn node(name: &str, slots: u32, toolchains: &[ToolchainKey]) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        host: name.into(),
        slots,
        cores: slots,
        memory_mb: 4096,
        toolchains: toolchains.to_vec(),
    }
}

fn job(submitter: &str, bytes: u64) -> JobSpec {
    JobSpec {
        submitter: submitter.into(),
        priority: 0,
        toolchain: GCC,
        bytes_in: bytes,
        work: 0,
        unit: 0,
    }
}

fn ok(wall_ms: u64) -> JobStats {
    JobStats { ok: true, wall_ms, cpu_ms: wall_ms, bytes_out: 1 }
}

/// Teaches node `id` a speed of `bps` with one job.
fn measure(s: &mut Scheduler, id: NodeId, bps: u64, now: Millis) {
    let j = s.submit(job("teacher", bps));
    let placed = s.dispatch(now);
    assert!(placed.iter().any(|a| a.job == j && a.node == id), "{placed:?}");
    s.finish(j, ok(1000), now);
}

/// Nodes 1 ("a") and 2 ("b") with these slots, both measured at 1 MB/s.
fn two_measured(a: u32, b: u32) -> Scheduler {
    let mut s = Scheduler::new(base());
    s.add_node(1, node("a", a, &[GCC]), 0);
    s.add_node(2, node("b", b, &[GCC]), 0);
    measure(&mut s, 1, 1_000_000, 0);
    measure(&mut s, 2, 1_000_000, 0);
    s
}

#[test]
fn an_unmeasured_node_is_explored_even_when_a_fast_one_is_free() {
    let mut s = Scheduler::new(base());
    s.add_node(1, node("fast", 4, &[GCC]), 0);
    measure(&mut s, 1, 10_000_000, 0);
    s.add_node(2, node("new", 4, &[GCC]), 10);
    let small = s.submit(job("c", 10));
    let typical = s.submit(job("c", 1000));
    let large = s.submit(job("c", 50_000));
    let placed = s.dispatch(20);
    // A typical (median) job explores the new node; the others go to the fast one.
    let explored = Assignment {
        job: typical,
        node: 2,
        preload: false,
        install: false,
        explore: true,
        hedge_of: None,
    };
    assert!(placed.contains(&explored), "{placed:?}");
    assert_eq!(s.placement(small), Some(1));
    assert_eq!(s.placement(large), Some(1));
    // Only one exploration job at a time on an unmeasured node.
    let c = s.submit(job("c", 10));
    s.dispatch(30);
    assert_eq!(s.placement(c), Some(1));
}

#[test]
fn a_stale_node_is_explored_again() {
    let mut s = Scheduler::new(PolicyConfig { stale_ms: 1000, ..base() });
    s.add_node(1, node("fast", 4, &[GCC]), 0);
    s.add_node(2, node("slow", 4, &[GCC]), 0);
    measure(&mut s, 1, 10_000_000, 0);
    measure(&mut s, 2, 100_000, 0);
    let j = s.submit(job("c", 1000));
    s.dispatch(10);
    assert_eq!(s.placement(j), Some(1), "fresh estimates: the fast node");
    s.finish(j, ok(1), 4500);
    let j = s.submit(job("c", 1000));
    let placed = s.dispatch(5000);
    assert_eq!(s.placement(j), Some(2), "stale: the slow node is measured again");
    assert!(placed[0].explore);
}

#[test]
fn two_submitters_share_a_full_farm_fairly() {
    let mut s = Scheduler::new(base());
    s.add_node(1, node("n", 2, &[GCC]), 0);
    measure(&mut s, 1, 1_000_000, 0);
    // A huge build queues 100 jobs first, then a small one queues 5.
    let big: Vec<_> = (0..100).map(|_| s.submit(job("big", 1000))).collect();
    let small: Vec<_> = (0..5).map(|_| s.submit(job("small", 1000))).collect();
    let mut served = Vec::new();
    let mut now = 1;
    while served.len() < 20 {
        for a in s.dispatch(now) {
            served.push(a.job);
        }
        // Finish the oldest placed job to free a slot.
        let running: Vec<_> =
            served.iter().copied().filter(|j| s.placement(*j).is_some()).collect();
        if let Some(j) = running.first() {
            s.finish(*j, ok(1), now);
        }
        now += 1;
    }
    let small_served = served.iter().filter(|j| small.contains(j)).count();
    assert_eq!(small_served, 5, "the small build is served within the first 20 jobs: {served:?}");
    assert!(big.iter().any(|j| served.contains(j)));
}

#[test]
fn priority_bands_come_first() {
    let mut s = Scheduler::new(base());
    s.add_node(1, node("n", 1, &[GCC]), 0);
    measure(&mut s, 1, 1_000_000, 0);
    let blocker = s.submit(job("a", 1000));
    s.dispatch(1);
    // Fill the preload room too.
    let pre = s.submit(job("a", 1000));
    s.dispatch(1);
    assert_eq!(s.placement(pre), Some(1));
    let low = s.submit(JobSpec { priority: 10, ..job("low", 1000) });
    let high = s.submit(JobSpec { priority: 0, ..job("high", 1000) });
    assert!(s.dispatch(2).is_empty(), "farm full: both wait");
    s.finish(blocker, ok(1), 3);
    let placed = s.dispatch(3);
    assert_eq!(placed.first().map(|a| a.job), Some(high));
    assert_eq!(s.placement(low), None);
}

#[test]
fn affinity_wins_when_speeds_tie() {
    let mut s = Scheduler::new(base());
    s.add_node(1, node("has-clang", 4, &[CLANG]), 0);
    s.add_node(2, node("has-gcc", 4, &[GCC, CLANG]), 0);
    // Same speed for both (measured with clang, which both hold).
    for id in [1, 2] {
        let j = s.submit(JobSpec { toolchain: CLANG, ..job("t", 1_000_000) });
        let placed = s.dispatch(0);
        let a = placed.iter().find(|a| a.job == j).copied();
        assert!(a.is_some());
        let _ = id;
        s.finish(j, ok(1000), 0);
    }
    for _ in 0..3 {
        let j = s.submit(job("c", 100_000));
        let placed = s.dispatch(10);
        assert_eq!(s.placement(j), Some(2), "{placed:?}");
        assert!(!placed[0].install);
        s.finish(j, ok(100), 10);
    }
}

#[test]
fn one_install_at_a_time_per_node() {
    let mut s = Scheduler::new(PolicyConfig { install_ms: 0.0, ..base() });
    s.add_node(1, node("bare", 4, &[]), 0);
    measure(&mut s, 1, 1_000_000, 0);
    let a = s.submit(JobSpec { toolchain: CLANG, ..job("c", 10) });
    let b = s.submit(JobSpec { toolchain: CLANG, ..job("c", 10) });
    let placed = s.dispatch(1);
    assert_eq!(placed.len(), 1, "{placed:?}");
    assert!(placed[0].install);
    let first = placed[0].job;
    let second = if first == a { b } else { a };
    assert_eq!(s.placement(second), None, "waits for the install");
    s.finish(first, ok(5), 2);
    s.dispatch(2);
    assert_eq!(s.placement(second), Some(1));
}

#[test]
fn a_full_farm_queues_instead_of_refusing() {
    let mut s = Scheduler::new(base());
    s.add_node(1, node("n", 4, &[GCC]), 0);
    measure(&mut s, 1, 1_000_000, 0);
    let jobs: Vec<_> = (0..10).map(|_| s.submit(job("c", 1000))).collect();
    let placed = s.dispatch(1);
    // 4 slots + preload of 1 + 4/4 = 6.
    assert_eq!(placed.len(), 6);
    assert_eq!(placed.iter().filter(|a| a.preload).count(), 2);
    assert_eq!(s.queued(), 4);
    s.finish(placed[0].job, ok(1), 2);
    assert_eq!(s.dispatch(2).len(), 1);
    assert_eq!(s.queued(), 3);
    let _ = jobs;
}

#[test]
fn a_lost_node_gives_its_jobs_back() {
    let mut s = two_measured(2, 4);
    let jobs: Vec<_> = (0..4).map(|_| s.submit(job("c", 1000))).collect();
    s.dispatch(1);
    let on_a: Vec<_> = jobs.iter().copied().filter(|j| s.placement(*j) == Some(1)).collect();
    assert!(!on_a.is_empty());
    let back = s.node_lost(1, 2);
    assert_eq!(back.len(), on_a.len());
    s.dispatch(3);
    for j in jobs {
        assert_eq!(s.placement(j), Some(2));
    }
    assert_eq!(s.silent_since(100), vec![2]);
}

#[test]
fn the_submitters_host_takes_small_builds_and_is_relieved_in_large_ones() {
    let mut s = Scheduler::new(PolicyConfig { fill_weight: 0.0, ..base() });
    s.add_node(1, node("me", 4, &[GCC]), 0);
    s.add_node(2, node("donor", 4, &[GCC]), 0);
    measure(&mut s, 1, 1_000_000, 0);
    measure(&mut s, 2, 1_000_000, 0);
    let first = s.submit(job("me", 1000));
    s.dispatch(1);
    assert_eq!(s.placement(first), Some(1), "a small build stays home");
    let many: Vec<_> = (0..8).map(|_| s.submit(job("me", 1000))).collect();
    s.dispatch(1);
    let home = many.iter().filter(|j| s.placement(**j) == Some(1)).count();
    let away = many.iter().filter(|j| s.placement(**j) == Some(2)).count();
    assert!(away > home, "a large build goes out: home {home}, away {away}");
}

#[test]
fn the_cost_history_sends_a_unit_that_was_expensive_before_to_the_fast_node() {
    let mut s = Scheduler::new(PolicyConfig { fill_weight: 0.0, ..base() });
    s.add_node(1, node("fast", 1, &[GCC]), 0);
    s.add_node(2, node("slow", 1, &[GCC]), 0);
    measure(&mut s, 1, 2_000_000, 0);
    measure(&mut s, 2, 1_000_000, 0);
    // Unit 7 is small (10 kB of its own source) but costs like 80 kB; unit 8 is 20 kB and cheap.
    let heavy = JobSpec { unit: 7, ..job("c", 10_000) };
    let light = JobSpec { unit: 8, ..job("c", 20_000) };
    let rate = |node| if node == 1 { 2_000_000.0 } else { 1_000_000.0 };
    let mut now = 10;
    for _build in 0..2 {
        let jobs = [(s.submit(heavy.clone()), 80_000.0), (s.submit(light.clone()), 20_000.0)];
        s.dispatch(now);
        for (j, cost) in jobs {
            let node = s.placement(j).expect("placed");
            s.finish(j, ok((cost / rate(node) * 1000.0) as u64), now + 100);
        }
        now += 1000;
    }
    // The next build: by size alone the light unit would take the fast node.
    let h = s.submit(heavy);
    let l = s.submit(light);
    s.dispatch(now);
    assert_eq!(s.placement(h), Some(1), "the unit that cost more goes to the fast node");
    assert_eq!(s.placement(l), Some(2));
    // An unseen unit is estimated by its size.
    let fresh = s.submit(JobSpec { unit: 9, ..job("c", 5_000) });
    assert_eq!(s.jobs.get(&fresh).map(|j| j.work), Some(5_000.0));
}

#[test]
fn the_plan_index_follows_nodes_as_they_change() {
    let mut s = Scheduler::new(PolicyConfig { fill_weight: 0.0, ..base() });
    s.add_node(1, node("a", 1, &[GCC]), 0);
    s.add_node(2, node("b", 1, &[GCC]), 0);
    // Unmeasured nodes are only explored: not in the plan's index.
    assert_eq!(s.index.iter().count(), 0);
    measure(&mut s, 1, 1_000_000, 0);
    measure(&mut s, 2, 2_000_000, 0);
    let order: Vec<NodeId> = s.index.iter().map(|(_, id)| id).collect();
    assert_eq!(order, vec![2, 1], "fastest bound first");
    // Foreign load on the fast node drops it behind the other.
    let busy = LoadReport { foreign_load: 800, ..LoadReport::default() };
    s.report_load(2, busy, 1);
    let order: Vec<NodeId> = s.index.iter().map(|(_, id)| id).collect();
    assert_eq!(order, vec![1, 2]);
    let j = s.submit(job("c", 1000));
    s.dispatch(2);
    assert_eq!(s.placement(j), Some(1));
    // A lost node leaves the index.
    s.node_lost(1, 3);
    let order: Vec<NodeId> = s.index.iter().map(|(_, id)| id).collect();
    assert_eq!(order, vec![2]);
}

#[test]
fn a_stalled_node_gets_no_new_jobs_and_its_jobs_are_hedged_elsewhere() {
    let mut s = two_measured(1, 1);
    let unit = |u: UnitKey| JobSpec { unit: u, ..job("c", 1_000_000) };
    // Unit 7 runs once, so its cost is known (about 1 s on either node).
    let first = s.submit(unit(7));
    s.dispatch(10);
    s.finish(first, ok(1000), 1010);
    let again = s.submit(unit(7));
    let placed = s.dispatch(2000);
    assert_eq!(placed.len(), 1);
    let (stuck, other) = if placed[0].node == 1 { (1, 2) } else { (2, 1) };
    // Within twice its estimate (plus grace) nothing happens.
    assert!(s.dispatch(3500).is_empty());
    // Well past it, with nothing finished there: a twin goes to the other node.
    let hedged = s.dispatch(4200);
    assert_eq!(hedged.len(), 1, "{hedged:?}");
    assert_eq!((hedged[0].node, hedged[0].hedge_of), (other, Some(again)));
    let twin = hedged[0].job;
    // The stalled node takes nothing new: the next job waits for (is preloaded on) the other.
    let next = s.submit(unit(8));
    s.dispatch(4300);
    assert_eq!(s.placement(next), Some(other));
    // The twin wins: the original is withdrawn. The emptied node stays out until it reports
    // (a stopped node would not), then is judged afresh.
    s.finish(twin, ok(1000), 5200);
    assert_eq!(s.placement(again), None);
    let after = s.submit(unit(9));
    let placed = s.dispatch(5300);
    assert_ne!(s.placement(after), Some(stuck), "{placed:?}");
    s.finish(next, ok(1000), 5400);
    s.report_load(stuck, LoadReport::default(), 5500);
    let later = s.submit(unit(10));
    let placed = s.dispatch(5600);
    assert!(placed.iter().all(|a| a.hedge_of.is_none()), "{placed:?}");
    assert!(s.placement(after) == Some(stuck) || s.placement(later) == Some(stuck), "{placed:?}");
}

#[test]
fn units_never_measured_are_not_hedged() {
    let mut s = two_measured(1, 1);
    let fresh = s.submit(JobSpec { unit: 9, ..job("c", 1_000) });
    assert_eq!(s.dispatch(10).len(), 1);
    // Its cost is a guess from its size: however late it is, it is not judged.
    assert!(s.dispatch(60_000).is_empty());
    assert!(s.placement(fresh).is_some());
}

/// A node may claim any number of toolchains: the scheduler keeps a bounded, sorted list, and
/// still finds the ones it kept.
#[test]
fn toolchain_lists_are_bounded() {
    let mut s = Scheduler::new(base());
    let mut claimed: Vec<ToolchainKey> = (0..20_000u32)
        .map(|i| {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k
        })
        .collect();
    claimed.push(GCC);
    s.add_node(1, node("greedy", 2, &claimed), 0);
    for i in 0..20_000u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&(i + 1_000_000).to_be_bytes());
        s.add_toolchain(1, k);
    }
    let held = &s.nodes[&1].toolchains;
    assert_eq!(held.len(), MAX_TOOLCHAINS_PER_NODE);
    assert!(held.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
    assert!(s.nodes[&1].holds(&claimed[0]));
}
