// Activation checkpointing for rrlhf-model: a custom autograd function that runs a Rust
// closure (one decoder layer) without recording its graph, keeps only the layer's input, and
// in backward runs the closure again with the graph on and back-propagates through it. This is
// the reentrant scheme of `torch.utils.checkpoint`: parameter gradients accumulate into the
// parameters' `.grad` during the inner backward, and the input's gradient flows on.
//
// The closure lives on the Rust side; this file sees it as an opaque context with three
// callbacks (call, drop, free an error message). Tensors cross as `at::Tensor*`, tch's handle.

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace {

// Runs the closure on `input` and writes a new `at::Tensor*` (owned by the caller) to `out`;
// returns null or an error message that `FreeMessage` releases.
using CallFn = char* (*)(void* ctx, const at::Tensor* input, at::Tensor** out);
using DropFn = void (*)(void* ctx);
using FreeMessageFn = void (*)(char* message);

// Owns the Rust closure: dropped with the autograd node (or at once, without a graph).
struct Closure : torch::CustomClassHolder {
  Closure(void* ctx, CallFn call, DropFn drop, FreeMessageFn free_message)
      : ctx(ctx), call_fn(call), drop_fn(drop), free_message(free_message) {}
  Closure(const Closure&) = delete;
  Closure& operator=(const Closure&) = delete;
  ~Closure() override { drop_fn(ctx); }

  at::Tensor call(const at::Tensor& input) const {
    at::Tensor* out = nullptr;
    char* message = call_fn(ctx, &input, &out);
    if (message != nullptr) {
      std::string text(message);
      free_message(message);
      TORCH_CHECK(false, "checkpointed layer failed: ", text);
    }
    TORCH_CHECK(out != nullptr, "checkpointed layer returned no tensor");
    at::Tensor result = std::move(*out);
    delete out;
    return result;
  }

  void* ctx;
  CallFn call_fn;
  DropFn drop_fn;
  FreeMessageFn free_message;
};

class Recompute : public torch::autograd::Function<Recompute> {
 public:
  // `apply` runs this with grad mode off, so the layer's intermediates are not kept.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            c10::intrusive_ptr<Closure> closure, const at::Tensor& input) {
    ctx->save_for_backward({input});
    at::Tensor output = closure->call(input);
    ctx->saved_data["closure"] = at::IValue::make_capsule(std::move(closure));
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto closure = c10::static_intrusive_pointer_cast<Closure>(
        ctx->saved_data["closure"].toCapsule());
    at::Tensor input = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor output;
    {
      at::AutoGradMode grad_on(true);
      output = closure->call(input);
    }
    // Accumulates into every leaf the layer reaches: its parameters and `input`.
    torch::autograd::backward({output}, {grads[0]});
    // One gradient per forward argument: none for the closure.
    return {at::Tensor(), input.grad()};
  }
};

char* copy_message(const char* text) {
  size_t n = std::strlen(text);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, text, n + 1);
  }
  return out;
}

}  // namespace

extern "C" {

void rrlhf_recompute_free_message(char* message) { std::free(message); }

// Whether autograd records operations on this thread (tch has no query for it).
int rrlhf_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

// Applies the closure to `input` as one checkpointed step and writes the output handle to
// `out`. Takes ownership of `ctx` in every case (it is dropped through `drop`). With grad mode
// off, or when nothing needs a gradient, the closure just runs. Returns null on success, else
// a message for `rrlhf_recompute_free_message`.
char* rrlhf_recompute(const at::Tensor* input, void* ctx, CallFn call, DropFn drop,
                      FreeMessageFn free_message, at::Tensor** out) {
  auto closure = c10::make_intrusive<Closure>(ctx, call, drop, free_message);
  try {
    at::Tensor result;
    if (!at::GradMode::is_enabled()) {
      result = closure->call(*input);
    } else {
      // A layer whose input needs no gradient (frozen embeddings) still has trainable
      // parameters: give the function a differentiable input so that backward reaches it.
      at::Tensor x = input->requires_grad() ? *input : input->detach().requires_grad_(true);
      result = Recompute::apply(std::move(closure), x);
    }
    *out = new at::Tensor(std::move(result));
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception in a checkpointed layer");
  }
}

}  // extern "C"
