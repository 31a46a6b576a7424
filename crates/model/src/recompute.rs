//! Activation checkpointing: [`checkpoint`] runs a step (one decoder layer) without keeping its
//! intermediate activations and recomputes them during backward, trading one extra forward
//! pass per layer for memory that no longer grows with the layer's internals.
//!
//! tch has no custom autograd functions, so the autograd node lives in the C++ shim
//! `csrc/recompute.cpp` and calls back into the Rust closure. The scheme is the reentrant one of
//! `torch.utils.checkpoint`: the step must be deterministic (no dropout here) and must not
//! mutate state, because it runs twice.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

/// A checkpointed step: takes the layer input, returns its output.
type Step = Box<dyn Fn(&Tensor) -> Tensor + Send>;

type CallFn = unsafe extern "C" fn(*mut c_void, *const C_tensor, *mut *mut C_tensor) -> *mut c_char;
type DropFn = unsafe extern "C" fn(*mut c_void);
type FreeMessageFn = unsafe extern "C" fn(*mut c_char);

#[allow(unsafe_code)]
unsafe extern "C" {
    fn rrlhf_recompute(
        input: *const C_tensor,
        ctx: *mut c_void,
        call: CallFn,
        drop: DropFn,
        free_message: FreeMessageFn,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn rrlhf_recompute_free_message(message: *mut c_char);
    fn rrlhf_grad_enabled() -> c_int;
}

/// Whether autograd records operations on this thread (off inside `tch::no_grad`).
pub fn grad_enabled() -> bool {
    // SAFETY: a query of a thread-local flag, without arguments.
    #[allow(unsafe_code)]
    let on = unsafe { rrlhf_grad_enabled() };
    on != 0
}

/// Applies `step` to `input` under activation checkpointing. With grad mode off it simply runs
/// `step` once. Errors raised inside `step` (during forward or the recomputation in backward)
/// carry its message.
pub fn checkpoint(
    input: &Tensor,
    step: impl Fn(&Tensor) -> Tensor + Send + 'static,
) -> Result<Tensor, TchError> {
    let ctx = Box::into_raw(Box::new(Box::new(step) as Step)).cast::<c_void>();
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `input` is a live tch tensor handle; the shim takes ownership of `ctx` (freed
    // through `drop_step` exactly once) and writes a fresh handle to `out` on success.
    #[allow(unsafe_code)]
    let message = unsafe {
        rrlhf_recompute(
            input.as_ptr(),
            ctx,
            call_step,
            drop_step,
            free_message,
            &mut out,
        )
    };
    if !message.is_null() {
        // SAFETY: a non-null return is a NUL-terminated message malloc'd by the shim.
        #[allow(unsafe_code)]
        let text = unsafe {
            let text = CStr::from_ptr(message).to_string_lossy().into_owned();
            rrlhf_recompute_free_message(message);
            text
        };
        return Err(TchError::Torch(text));
    }
    // SAFETY: on success `out` is a heap `at::Tensor*` that nobody else owns.
    #[allow(unsafe_code)]
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Runs the boxed step on a borrowed input handle; a panic becomes an error message.
#[allow(unsafe_code)]
unsafe extern "C" fn call_step(
    ctx: *mut c_void,
    input: *const C_tensor,
    out: *mut *mut C_tensor,
) -> *mut c_char {
    // SAFETY: `ctx` is the `Step` boxed by `checkpoint`, alive until `drop_step`; `input` is a
    // live handle that the shim keeps for the duration of the call (we take a shallow clone).
    let (step, input) = unsafe {
        (
            &*ctx.cast::<Step>(),
            Tensor::clone_from_ptr(input.cast_mut()),
        )
    };
    match catch_unwind(AssertUnwindSafe(|| step(&input))) {
        Ok(mut output) => {
            // SAFETY: the shim takes over the handle (and deletes it); forget the Rust owner.
            unsafe { *out = output.as_mut_ptr() };
            std::mem::forget(output);
            std::ptr::null_mut()
        }
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("panic without a message");
            CString::new(text.replace('\0', " "))
                .expect("NULs removed")
                .into_raw()
        }
    }
}

#[allow(unsafe_code)]
unsafe extern "C" fn drop_step(ctx: *mut c_void) {
    // SAFETY: called once by the shim for the `ctx` that `checkpoint` leaked.
    drop(unsafe { Box::from_raw(ctx.cast::<Step>()) });
}

#[allow(unsafe_code)]
unsafe extern "C" fn free_message(message: *mut c_char) {
    // SAFETY: `message` came from `CString::into_raw` in `call_step`.
    drop(unsafe { CString::from_raw(message) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn mlp(x: &Tensor, w1: &Tensor, w2: &Tensor) -> Tensor {
        x.matmul(w1).silu().matmul(w2)
    }

    #[test]
    fn gradients_match_the_plain_graph() {
        tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        let w1 = Tensor::randn([8, 16], opts).set_requires_grad(true);
        let w2 = Tensor::randn([16, 8], opts).set_requires_grad(true);
        let x0 = Tensor::randn([4, 8], opts).set_requires_grad(true);

        let plain = mlp(&mlp(&x0, &w1, &w2), &w1, &w2)
            .pow_tensor_scalar(2)
            .sum(Kind::Double);
        plain.backward();
        let want: Vec<Tensor> = [&w1, &w2, &x0].iter().map(|t| t.grad().copy()).collect();
        for t in [&w1, &w2, &x0] {
            let _ = t.grad().zero_();
        }

        let step = |w1: &Tensor, w2: &Tensor| {
            let (w1, w2) = (w1.shallow_clone(), w2.shallow_clone());
            move |x: &Tensor| mlp(x, &w1, &w2)
        };
        let h = checkpoint(&x0, step(&w1, &w2)).unwrap();
        let y = checkpoint(&h, step(&w1, &w2)).unwrap();
        let loss = y.pow_tensor_scalar(2).sum(Kind::Double);
        assert!((loss.double_value(&[]) - plain.double_value(&[])).abs() < 1e-12);
        loss.backward();
        for (got, want) in [&w1, &w2, &x0].iter().map(|t| t.grad()).zip(&want) {
            assert!(got.allclose(want, 1e-12, 1e-12, false), "{got} vs {want}");
        }
    }

    #[test]
    fn a_frozen_input_still_trains_the_parameters() {
        let opts = (Kind::Float, Device::Cpu);
        let w = Tensor::ones([3, 3], opts).set_requires_grad(true);
        let x = Tensor::ones([2, 3], opts);
        let step = {
            let w = w.shallow_clone();
            move |x: &Tensor| x.matmul(&w)
        };
        checkpoint(&x, step).unwrap().sum(Kind::Float).backward();
        assert_eq!(w.grad().sum(Kind::Float).double_value(&[]), 18.0);
    }

    #[test]
    fn a_failing_step_is_an_error_not_a_crash() {
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let err = checkpoint(&x, |x: &Tensor| {
            x.matmul(&Tensor::ones([5, 5], (Kind::Float, Device::Cpu)))
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("checkpointed layer failed"),
            "{err}"
        );
    }

    #[test]
    fn without_grad_mode_the_step_just_runs() {
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| checkpoint(&x, |x: &Tensor| x * 2.0).unwrap());
        assert!(!y.requires_grad());
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 12.0);
    }
}
