//! A pipe that makes the child wait for the parent.
//!
//! Some setup can only happen from outside once the child exists (writing its
//! uid map, later moving a network interface in or placing it in a cgroup),
//! and the child must not go on before that is done.

use anyhow::{bail, Context, Result};
use nix::unistd::{pipe, read, write};
use std::os::fd::OwnedFd;

pub struct Sync {
    read_end: Option<OwnedFd>,
    write_end: Option<OwnedFd>,
}

impl Sync {
    /// Create it before clone(2): parent and child each get both ends.
    pub fn new() -> Result<Sync> {
        let (read_end, write_end) = pipe().context("create the sync pipe")?;
        Ok(Sync { read_end: Some(read_end), write_end: Some(write_end) })
    }

    /// Child: block until the parent says go. If the parent dies or gives up
    /// instead, the pipe closes without a byte and the child stops too.
    pub fn wait_for_parent(&mut self) -> Result<()> {
        drop(self.write_end.take()); // else we would hold our own pipe open
        let read_end = self.read_end.take().context("sync pipe already used")?;
        let mut byte = [0u8];
        match read(&read_end, &mut byte) {
            Ok(1) => Ok(()),
            _ => bail!("the runtime gave up before the container was ready"),
        }
    }

    /// Parent: let the child go on.
    pub fn release_child(&mut self) -> Result<()> {
        drop(self.read_end.take());
        let write_end = self.write_end.take().context("sync pipe already used")?;
        write(&write_end, b"1").context("release the child")?;
        Ok(())
    }
}
