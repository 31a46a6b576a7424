//! Releasing a parameter's gradient (`param.grad = None` in PyTorch), which tch does not
//! offer: zeroing keeps the memory, and sharded training (ZeRO-2) frees every gradient once it
//! has been reduced into the shard that owns it. The shim is `csrc/grad.cpp`.

use tch::Tensor;
use torch_sys::C_tensor;

#[allow(unsafe_code)]
unsafe extern "C" {
    fn rrlhf_release_grad(param: *const C_tensor);
}

/// Drops `param`'s gradient, if it has one; the next backward that reaches `param` allocates a
/// new one (as for a parameter that never had a gradient).
pub fn release_grad(param: &Tensor) {
    // SAFETY: `param` is a live tch handle for the duration of the call; the shim only resets
    // the gradient slot of the tensor it points at.
    #[allow(unsafe_code)]
    unsafe {
        rrlhf_release_grad(param.as_ptr())
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_released_gradient_is_gone_and_the_next_backward_starts_afresh() {
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 2.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        release_grad(&w);
        assert!(!w.grad().defined(), "released");
        release_grad(&w);
        (&w * 3.0).sum(Kind::Float).backward();
        let g = Vec::<f32>::try_from(&w.grad()).unwrap();
        assert_eq!(g, vec![3.0; 3], "not accumulated onto the old gradient");
    }
}
