//! Where the runtimes keep things on the host, said once for the harness and
//! the xtask (which includes this file with `#[path]`). The runtimes say it in
//! their own `paths.rs`, since each step is a standalone crate.

/// Runtime state that dies with a reboot (a tmpfs on most systems).
pub const RUN: &str = "/run/workshop";
/// The container records (step 06 on): one file per running container.
pub const RECORDS: &str = "/run/workshop/containers";
/// The IPAM leases (step 05 on): one file per address in use.
pub const LEASES: &str = "/run/workshop/ipam";
/// What outlives a reboot: images, container layers, volumes, caches.
pub const LIB: &str = "/var/lib/workshop";
/// Kept container layers (step 07 on).
pub const CONTAINERS: &str = "/var/lib/workshop/containers";
/// Imported images (steps 07 to 09).
pub const IMAGES: &str = "/var/lib/workshop/images";
/// The content-addressed image store (step 10 on): layers/, l/, images/, tags/, tmp/, lock.
pub const STORE: &str = "/var/lib/workshop/store";
/// Named volumes (step 08 on).
pub const VOLUMES: &str = "/var/lib/workshop/volumes";
/// The per-mapping copies of the rootfs that `--userns` makes (a cache, step 04 on).
pub const USERNS_CACHE: &str = "/var/lib/workshop/userns";
