//! host_scheduler: the green light. A builder gets a new job only when it has room for one: a
//! free slot, enough free disk for a build tree and enough memory to give each of its builds
//! the configured share. Pure: decided from the builder's own report and what it holds.

use discomy_protocol::ops::BuilderReport;

use super::job_queue::QueueConfig;

/// Whether `report`'s builder, which holds `holding` live attempts, may start another.
pub fn green_light(report: &BuilderReport, holding: u32, config: &QueueConfig) -> bool {
    let builds = u64::from(holding) + 1;
    report.wants_work
        && holding < report.slots
        && report.disk_free_bytes >= config.min_free_disk_bytes
        && report.memory_bytes / builds >= config.min_job_memory_bytes
        && !report.chroots.is_empty()
        && !report.arches.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(slots: u32, memory_gib: u64, disk_gib: u64) -> BuilderReport {
        BuilderReport {
            builder: "b1".into(),
            slots,
            memory_bytes: memory_gib << 30,
            disk_free_bytes: disk_gib << 30,
            arches: vec!["x86_64".into()],
            chroots: vec!["rocky-9".into()],
            held: Vec::new(),
            wants_work: true,
        }
    }

    #[test]
    fn room_in_slots_memory_and_disk() {
        let config = QueueConfig::default();
        assert!(green_light(&report(2, 4, 10), 0, &config));
        assert!(green_light(&report(2, 4, 10), 1, &config));
        assert!(!green_light(&report(2, 4, 10), 2, &config), "slots full");
        assert!(!green_light(&report(4, 2, 10), 2, &config), "memory for two builds only");
        assert!(!green_light(&report(2, 4, 0), 0, &config), "disk full");
        let mut leaving = report(2, 4, 10);
        leaving.wants_work = false;
        assert!(!green_light(&leaving, 0, &config));
    }
}
