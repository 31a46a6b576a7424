// Gradient memory for rrlhf: tch can read and zero a parameter's `.grad` but not drop it, and
// sharded (ZeRO-2) training must give that memory back once a gradient has been reduced into
// its owner's shard. Resetting the handle releases the storage; the next backward allocates a
// fresh gradient, as it does for a parameter that never had one.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/variable.h>

extern "C" {

// Drops the gradient of the tensor behind the tch handle `param` (a no-op when it has none).
void rrlhf_release_grad(const at::Tensor* param) {
  at::Tensor t = *param;
  t.mutable_grad().reset();
}

}  // extern "C"
