//! A c10d process group: configuration, construction and the safe wrappers over the shim's
//! collectives.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fmt;
use std::ptr::NonNull;
use std::str::FromStr;
use std::time::Duration;

use tch::{Device, Tensor};

use crate::ffi;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("distributed config: {0}")]
    Config(String),
    #[error("c10d: {0}")]
    C10d(String),
}

/// The communication library under the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors (and the test suite): Gloo over TCP.
    Gloo,
    /// CUDA tensors: NCCL.
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// What `torch.distributed` picks for a device: NCCL for CUDA, Gloo otherwise.
    pub fn for_device(device: Device) -> Self {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    /// Whether this build can create the backend (NCCL needs a CUDA libtorch at build time).
    pub fn available(self) -> bool {
        match self {
            Backend::Gloo => true,
            // SAFETY: a constant query without arguments.
            Backend::Nccl => unsafe { ffi::rrlhf_c10d_has_nccl() != 0 },
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = DistError;
    fn from_str(s: &str) -> Result<Self, DistError> {
        match s {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            other => Err(DistError::Config(format!(
                "unknown backend {other:?} (expected \"gloo\" or \"nccl\")"
            ))),
        }
    }
}

/// How a reduction combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size.
    Avg,
    Max,
    Min,
}

impl ReduceOp {
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
        }
    }
}

/// Where and how a rank joins its group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub backend: Backend,
    /// `HOST:PORT` of the TCPStore; rank 0 listens there, the others connect to it.
    pub store: String,
    pub rank: usize,
    pub world_size: usize,
    /// How long the rendezvous and each collective may wait for the slowest rank.
    pub timeout: Duration,
}

impl GroupConfig {
    fn store_host_port(&self) -> Result<(String, u16), DistError> {
        let bad = || {
            DistError::Config(format!(
                "store must be HOST:PORT with a port in 1..=65535, got {:?}",
                self.store
            ))
        };
        let (host, port) = self.store.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok((host.to_owned(), port))
    }

    pub fn validate(&self) -> Result<(), DistError> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(DistError::Config(format!(
                "rank {} is outside a world of {}",
                self.rank, self.world_size
            )));
        }
        if self.timeout.is_zero() {
            return Err(DistError::Config("timeout must be > 0".into()));
        }
        self.store_host_port().map(|_| ())
    }
}

/// A member of a c10d process group. Collectives block until every rank has issued the same
/// call (or the group's timeout passes, which is an error).
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    world_size: usize,
    backend: Backend,
}

// SAFETY: c10d stores and backends are not bound to the thread that made them; the group is
// used from one thread at a time (`&self` methods are not called concurrently: it is !Sync).
unsafe impl Send for ProcessGroup {}

impl fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

/// Turns a shim result into `Ok` or the message it carried (and frees the message).
fn check(message: *mut c_char) -> Result<(), DistError> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string malloc'd by the shim, freed once here.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above.
    unsafe { ffi::rrlhf_c10d_free_message(message) };
    Err(DistError::C10d(text))
}

impl ProcessGroup {
    /// Joins the group: rank 0 starts the TCPStore, every rank then waits (up to the timeout)
    /// until all `world_size` ranks have connected.
    pub fn new(cfg: &GroupConfig) -> Result<Self, DistError> {
        cfg.validate()?;
        if !cfg.backend.available() {
            return Err(DistError::Config(format!(
                "backend {}: this rrlhf was built without it (no CUDA libtorch or NCCL headers)",
                cfg.backend
            )));
        }
        let (host, port) = cfg.store_host_port()?;
        let host = CString::new(host).map_err(|e| DistError::Config(e.to_string()))?;
        let backend = CString::new(cfg.backend.name()).expect("static name");
        let rank = c_int::try_from(cfg.rank).map_err(|e| DistError::Config(e.to_string()))?;
        let world =
            c_int::try_from(cfg.world_size).map_err(|e| DistError::Config(e.to_string()))?;
        let timeout_ms = i64::try_from(cfg.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; `raw` is written only on success.
        check(unsafe {
            ffi::rrlhf_c10d_group_new(
                backend.as_ptr(),
                host.as_ptr(),
                port,
                rank,
                world,
                timeout_ms,
                &mut raw,
            )
        })?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| DistError::C10d("the shim returned no group and no error".into()))?;
        Ok(Self {
            raw,
            rank: cfg.rank,
            world_size: cfg.world_size,
            backend: cfg.backend,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn handles(tensors: &[Tensor]) -> Vec<*const c_void> {
        tensors
            .iter()
            .map(|t| t.as_ptr() as *const c_void)
            .collect()
    }

    /// Reduces every tensor across the ranks, in place (one packed transfer for the whole list;
    /// the tensors must share dtype and device).
    pub fn all_reduce(&self, tensors: &[Tensor], op: ReduceOp) -> Result<(), DistError> {
        let handles = Self::handles(tensors);
        // SAFETY: the handles point at live tensors borrowed for the duration of the call.
        check(unsafe {
            ffi::rrlhf_c10d_all_reduce(
                self.raw.as_ptr(),
                handles.as_ptr(),
                handles.len(),
                op.code(),
            )
        })
    }

    /// Overwrites every tensor with rank `root`'s values, in place.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), DistError> {
        if root >= self.world_size {
            return Err(DistError::Config(format!(
                "broadcast root {root} is outside a world of {}",
                self.world_size
            )));
        }
        let handles = Self::handles(tensors);
        // SAFETY: as in `all_reduce`; root < world size fits a c_int (checked at creation).
        check(unsafe {
            ffi::rrlhf_c10d_broadcast(
                self.raw.as_ptr(),
                handles.as_ptr(),
                handles.len(),
                root as c_int,
            )
        })
    }

    /// Sums (`Sum`) or averages (`Avg`) the flat buffer `input` of `world × k` elements across
    /// the ranks and writes this rank's `k`-element part of the result — elements
    /// `rank·k .. (rank+1)·k` — to `output`. The building block of sharded (ZeRO) gradients.
    pub fn reduce_scatter(
        &self,
        input: &Tensor,
        output: &Tensor,
        op: ReduceOp,
    ) -> Result<(), DistError> {
        let code = match op {
            ReduceOp::Sum | ReduceOp::Avg => op.code(),
            other => {
                return Err(DistError::Config(format!(
                    "reduce-scatter sums or averages, not {other:?}"
                )));
            }
        };
        // SAFETY: both handles point at live tensors borrowed for the duration of the call.
        check(unsafe {
            ffi::rrlhf_c10d_reduce_scatter(
                self.raw.as_ptr(),
                input.as_ptr() as *const c_void,
                output.as_ptr() as *const c_void,
                code,
            )
        })
    }

    /// Writes every rank's flat `input` (`k` elements), in rank order, into `output`
    /// (`world × k` elements): how sharded weights are put back together.
    pub fn all_gather(&self, input: &Tensor, output: &Tensor) -> Result<(), DistError> {
        // SAFETY: as in `reduce_scatter`.
        check(unsafe {
            ffi::rrlhf_c10d_all_gather(
                self.raw.as_ptr(),
                input.as_ptr() as *const c_void,
                output.as_ptr() as *const c_void,
            )
        })
    }

    /// Returns once every rank has reached its barrier.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the group is live.
        check(unsafe { ffi::rrlhf_c10d_barrier(self.raw.as_ptr()) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by `rrlhf_c10d_group_new`, freed exactly once.
        unsafe { ffi::rrlhf_c10d_group_free(self.raw.as_ptr()) };
    }
}
