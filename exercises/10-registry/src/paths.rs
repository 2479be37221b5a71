//! Where the runtime keeps things on the host, in one place. /run is a
//! tmpfs on most systems, so what is there dies with a reboot, like the
//! processes it describes; /var/lib keeps what must outlive them.

/// The per-mapping copies of root filesystems that `--userns` makes (a cache).
pub const USERNS_CACHE: &str = "/var/lib/workshop/userns";
/// The IPAM leases: one file per address in use.
pub const LEASES: &str = "/run/workshop/ipam";
/// The container records: one file per running container.
pub const RECORDS: &str = "/run/workshop/containers";
/// The containers' layers: kept ones stay until `rm`.
pub const CONTAINERS: &str = "/var/lib/workshop/containers";
/// The image store: layers by digest, images, tags (step 10; see store.rs).
pub const STORE: &str = "/var/lib/workshop/store";
/// The named volumes.
pub const VOLUMES: &str = "/var/lib/workshop/volumes";
