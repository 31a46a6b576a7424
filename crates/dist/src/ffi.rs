//! The C ABI of `csrc/c10d_shim.cpp`. Every fallible function returns null on success or a
//! message the caller frees with `rrlhf_c10d_free_message`.

use std::ffi::{c_char, c_int, c_void};

unsafe extern "C" {
    pub fn rrlhf_c10d_free_message(message: *mut c_char);
    pub fn rrlhf_c10d_has_nccl() -> c_int;
    pub fn rrlhf_c10d_group_new(
        backend: *const c_char,
        host: *const c_char,
        port: u16,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn rrlhf_c10d_group_free(group: *mut c_void);
    pub fn rrlhf_c10d_all_reduce(
        group: *mut c_void,
        tensors: *const *const c_void,
        n: usize,
        op: c_int,
    ) -> *mut c_char;
    pub fn rrlhf_c10d_broadcast(
        group: *mut c_void,
        tensors: *const *const c_void,
        n: usize,
        root: c_int,
    ) -> *mut c_char;
    pub fn rrlhf_c10d_reduce_scatter(
        group: *mut c_void,
        input: *const c_void,
        output: *const c_void,
        op: c_int,
    ) -> *mut c_char;
    pub fn rrlhf_c10d_all_gather(
        group: *mut c_void,
        input: *const c_void,
        output: *const c_void,
    ) -> *mut c_char;
    pub fn rrlhf_c10d_barrier(group: *mut c_void) -> *mut c_char;
}
