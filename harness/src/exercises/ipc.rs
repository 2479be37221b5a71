//! Exercise 01: `--ipc private` gives the container an IPC namespace of its own.
//!
//! The proof is a SysV shared memory segment: one the host makes must be
//! invisible inside, and one made inside must vanish with the container.

use super::{Exercise, Graded};
use crate::Ctx;
use anyhow::{ensure, Context, Result};

pub fn exercise() -> Exercise {
    Exercise {
        number: 1,
        name: "01-uts",
        title: "the IPC namespace (--ipc private)",
        checks: vec![
            Graded::new(1, "ipc::private_hides_the_hosts_segments", 5, private_hides_the_hosts_segments),
            Graded::new(1, "ipc::segments_made_inside_die_with_it", 3, segments_made_inside_die_with_it),
            Graded::new(1, "ipc::host_shares_the_hosts_segments", 2, host_shares_the_hosts_segments),
        ],
        needs_the_holes: &[],
    }
}

/// A SysV shared memory key of this check's own, removed (if it exists) on drop.
struct Segment(i32);

impl Segment {
    fn new() -> Segment {
        static COUNT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Segment(0x5753_0000 + ((std::process::id() as i32 & 0xff) << 8) + (n & 0xff))
    }

    /// Made on the host, the way a learner would: the probe, run outside any container.
    fn on_the_host(ctx: &Ctx) -> Result<Segment> {
        let segment = Segment::new();
        let outcome = crate::Run::raw(&ctx.workshop.probe).args(["--shm-create", &segment.key()]).output()?;
        outcome.expect_status(0)?;
        crate::Probe::parse(&outcome)?.action(0)?.expect_ok().context("create a segment on the host")?;
        ensure!(segment.on_host(), "the segment made on the host is not there");
        Ok(segment)
    }

    fn key(&self) -> String {
        self.0.to_string()
    }

    /// Whether the host's IPC namespace has a segment with this key.
    fn on_host(&self) -> bool {
        // SAFETY: shmget(2) takes no pointers.
        unsafe { libc::shmget(self.0, 0, 0) >= 0 }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: shmget(2) takes no pointers; IPC_RMID ignores the buffer argument.
        unsafe {
            let id = libc::shmget(self.0, 0, 0);
            if id >= 0 {
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
        }
    }
}

fn host_ipc_namespace() -> Result<String> {
    Ok(std::fs::read_link("/proc/self/ns/ipc")?.to_string_lossy().into_owned())
}

fn private_hides_the_hosts_segments(ctx: &Ctx) -> Result<()> {
    let segment = Segment::on_the_host(ctx)?;
    let find = ["--shm-find", &segment.key()];
    // Control: without --ipc the container shares the host's namespace (step 01).
    let seen = ctx.probe(&[], &find)?;
    seen.action(0)?
        .expect_ok()
        .context("control: without --ipc the container should find the host's segment")?;
    let seen = ctx.probe(&["--ipc", "private"], &find)?;
    seen.action(0)?
        .expect_errno(libc::ENOENT)
        .context("with --ipc private, a segment the host made must be invisible inside (ENOENT)")?;
    let inside = seen.ns("ipc")?;
    ensure!(
        !host_ipc_namespace()?.contains(&inside.to_string()),
        "with --ipc private the container is still in the host's IPC namespace ({inside})"
    );
    Ok(())
}

fn segments_made_inside_die_with_it(ctx: &Ctx) -> Result<()> {
    let segment = Segment::new();
    let seen = ctx.probe(&["--ipc", "private"], &["--shm-create", &segment.key()])?;
    seen.action(0)?
        .expect_ok()
        .context("with --ipc private, the container should be able to make a segment")?;
    ensure!(
        !segment.on_host(),
        "a segment made inside with --ipc private (key {}) is on the host after the container exited: \
         it should have lived and died in the container's own IPC namespace",
        segment.0
    );
    Ok(())
}

fn host_shares_the_hosts_segments(ctx: &Ctx) -> Result<()> {
    let segment = Segment::on_the_host(ctx)?;
    let seen = ctx.probe(&["--ipc", "host"], &["--shm-find", &segment.key()])?;
    seen.action(0)?.expect_ok().context("with --ipc host, the container should find the host's segment")?;
    let inside = seen.ns("ipc")?;
    ensure!(
        host_ipc_namespace()?.contains(&inside.to_string()),
        "with --ipc host the container should share the host's IPC namespace; it has its own ({inside})"
    );
    Ok(())
}
