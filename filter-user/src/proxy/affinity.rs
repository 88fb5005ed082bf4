//! Which CPUs each shard thread is pinned to, and pinning the calling thread. Public so the
//! bench's I/O-floor relay (`benches/src/bin/relay_floor.rs`) pins its threads the same way.

/// The ids of the CPUs this process may run on (empty when they cannot be read).
#[must_use]
pub fn usable_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// The CPUs shard `n` of `shards` is pinned to, out of the CPUs the process may use (`all`).
///
/// With at least as many shards as CPUs each shard gets one CPU (`n mod CPUs`), so shards never
/// migrate and keep their caches. With fewer shards the CPUs are dealt out round-robin and a
/// shard may run on any CPU of its share: one shard on a 2-CPU host pinned to CPU 0 would sit on
/// whichever CPU the scheduler also puts the other work of the host, while the other idles
/// (measured with the bench relay: 1–10% fewer requests/s than spreading it).
#[must_use]
pub fn cores_for(n: usize, shards: usize, all: &[usize]) -> Vec<usize> {
    if all.is_empty() || shards == 0 {
        return Vec::new();
    }
    if shards >= all.len() {
        return vec![all[n % all.len()]];
    }
    all.iter()
        .copied()
        .skip(n % shards)
        .step_by(shards)
        .collect()
}

/// Pins the calling thread (shard `n`, for the log) to `cores`; empty leaves it as it is. Best
/// effort: a failure is logged and the thread runs unpinned.
pub fn pin_current(n: usize, cores: &[usize]) {
    if cores.is_empty() {
        return;
    }
    let mut set = nix::sched::CpuSet::new();
    for &c in cores {
        if let Err(e) = set.set(c) {
            tracing::warn!(shard = n, cpu = c, "cannot pin the shard to this CPU: {e}");
            return;
        }
    }
    if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        tracing::warn!(shard = n, ?cores, "cannot pin the shard: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::cores_for;

    #[test]
    fn one_core_each_when_shards_cover_the_cores() {
        let all = [0, 1, 2, 3];
        let got: Vec<_> = (0..4).map(|n| cores_for(n, 4, &all)).collect();
        assert_eq!(got, [vec![0], vec![1], vec![2], vec![3]]);
        // More shards than cores: they wrap around, still one core each.
        assert_eq!(cores_for(5, 6, &all), vec![1]);
    }

    #[test]
    fn fewer_shards_share_the_cores_without_overlap() {
        let all = [0, 1, 2, 3, 4];
        assert_eq!(cores_for(0, 1, &all), vec![0, 1, 2, 3, 4]);
        assert_eq!(cores_for(0, 2, &all), vec![0, 2, 4]);
        assert_eq!(cores_for(1, 2, &all), vec![1, 3]);
        // CPU ids need not be contiguous (a taskset or cgroup may leave gaps).
        assert_eq!(cores_for(1, 2, &[2, 5, 7]), vec![5]);
    }

    #[test]
    fn nothing_known_leaves_the_affinity_alone() {
        assert!(cores_for(0, 2, &[]).is_empty());
    }
}
