// A C ABI over PyTorch's c10d, for rrlhf-dist's Rust side: a process group made from a TCPStore
// rendezvous (Gloo on CPU, NCCL on CUDA), the collectives data-parallel training needs —
// all-reduce, broadcast, barrier — and the two that sharded (ZeRO) training needs:
// reduce-scatter and all-gather of one flat buffer. Every collective is PyTorch's own; this file only
// adapts types and turns C++ exceptions into error strings (Rust owns and frees them).
//
// Tensors arrive as `at::Tensor*` (tch's C tensor handle). A list of tensors is packed into
// flat buffers of at most kBucketBytes each (one collective per bucket) and unpacked in place:
// Gloo's `allreduce(vector)` would otherwise treat the list as copies of one tensor on several
// devices, and one buffer for a whole 8B model would cost another copy of its gradients.

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#ifdef RRLHF_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

constexpr int64_t kBucketBytes = 64 << 20;

// Returned when even a message cannot be allocated; never freed.
char kOutOfMemory[] = "c10d shim: out of memory while reporting an error";

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int world_size;
};

char* copy_message(const char* text) {
  size_t n = std::strlen(text);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out == nullptr) {
    return kOutOfMemory;
  }
  std::memcpy(out, text, n + 1);
  return out;
}

// Runs `body`; returns nullptr on success, else a malloc'd message (c10 errors without their
// C++ backtrace, which says nothing to a Rust caller).
template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception in c10d");
  }
}

std::vector<at::Tensor> gather_list(const void* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*static_cast<const at::Tensor*>(tensors[i]));
  }
  TORCH_CHECK(!out.empty(), "a collective needs at least one tensor");
  for (const auto& t : out) {
    TORCH_CHECK(t.defined(), "undefined tensor passed to a collective");
    TORCH_CHECK(
        t.scalar_type() == out[0].scalar_type() && t.device() == out[0].device(),
        "every tensor of one collective must share dtype and device; got ",
        out[0].scalar_type(), " on ", out[0].device(), " and ", t.scalar_type(), " on ",
        t.device());
  }
  return out;
}

at::Tensor pack(const std::vector<at::Tensor>& list) {
  std::vector<at::Tensor> flat;
  flat.reserve(list.size());
  for (const auto& t : list) {
    flat.push_back(t.detach().reshape({-1}));
  }
  return at::cat(flat);
}

void unpack(const at::Tensor& buffer, std::vector<at::Tensor>& list) {
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& t : list) {
    int64_t n = t.numel();
    t.detach().copy_(buffer.narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
}

// Runs `collective` on consecutive buckets of `list`: each bucket is packed into one flat
// buffer, handed to `collective`, and unpacked in place. Every rank holds the same list, so
// every rank forms the same buckets and issues the same collectives.
template <typename F>
void bucketed(std::vector<at::Tensor>& list, F&& collective) {
  size_t start = 0;
  while (start < list.size()) {
    size_t end = start;
    int64_t bytes = 0;
    do {
      bytes += list[end].numel() * list[end].element_size();
      ++end;
    } while (end < list.size() &&
             bytes + list[end].numel() * list[end].element_size() <= kBucketBytes);
    std::vector<at::Tensor> bucket(list.begin() + start, list.begin() + end);
    std::vector<at::Tensor> buffer{pack(bucket)};
    collective(buffer);
    unpack(buffer[0], bucket);
    start = end;
  }
}

// Checks a (whole, part) pair of flat buffers for reduce-scatter and all-gather: both defined,
// contiguous, one-dimensional, of one dtype and device, and whole = world × part elements.
void check_flat_pair(const at::Tensor& whole, const at::Tensor& part, int world_size,
                     const char* whole_name, const char* part_name) {
  for (const auto* t : {&whole, &part}) {
    TORCH_CHECK(t->defined(), whole_name, "/", part_name, ": undefined tensor");
    TORCH_CHECK(t->dim() == 1 && t->is_contiguous(), whole_name, "/", part_name,
                ": buffers must be flat and contiguous");
  }
  TORCH_CHECK(whole.scalar_type() == part.scalar_type() && whole.device() == part.device(),
              whole_name, " and ", part_name, " must share dtype and device");
  TORCH_CHECK(whole.numel() == part.numel() * world_size, whole_name, " has ", whole.numel(),
              " elements, ", part_name, " ", part.numel(), ": expected ", world_size, " × ",
              part.numel());
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
    case 1:  // average: summed here, divided by the world size afterwards
      return c10d::ReduceOp::SUM;
    case 2:
      return c10d::ReduceOp::MAX;
    case 3:
      return c10d::ReduceOp::MIN;
    default:
      TORCH_CHECK(false, "unknown reduce op ", op);
  }
}

}  // namespace

extern "C" {

void rrlhf_c10d_free_message(char* message) {
  if (message != kOutOfMemory) {
    std::free(message);
  }
}

int rrlhf_c10d_has_nccl() {
#ifdef RRLHF_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

char* rrlhf_c10d_group_new(
    const char* backend, const char* host, uint16_t port, int rank, int world_size,
    int64_t timeout_ms, void** out) {
  return guarded([&] {
    *out = nullptr;
    std::chrono::milliseconds timeout(timeout_ms);
    c10d::TCPStoreOptions store_options;
    store_options.port = port;
    store_options.isServer = rank == 0;
    store_options.numWorkers = world_size;
    store_options.waitWorkers = false;  // the backend's own rendezvous waits for every rank
    store_options.timeout = timeout;
    auto group = std::make_unique<Group>();
    group->world_size = world_size;
    group->store = c10::make_intrusive<c10d::TCPStore>(std::string(host), store_options);
    std::string name(backend);
    if (name == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
      group->backend =
          c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, rank, world_size, options);
    } else if (name == "nccl") {
#ifdef RRLHF_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      group->backend =
          c10::make_intrusive<c10d::ProcessGroupNCCL>(group->store, rank, world_size, options);
#else
      TORCH_CHECK(false,
                  "backend \"nccl\": this build of rrlhf found no CUDA libtorch and nccl.h "
                  "(torch wheel with CUDA and its nvidia-nccl package) when it was compiled");
#endif
    } else {
      TORCH_CHECK(false, "unknown backend \"", name, "\" (expected \"gloo\" or \"nccl\")");
    }
    *out = group.release();
  });
}

void rrlhf_c10d_group_free(void* group) { delete static_cast<Group*>(group); }

char* rrlhf_c10d_all_reduce(void* handle, const void* const* tensors, size_t n, int op) {
  return guarded([&] {
    auto* group = static_cast<Group*>(handle);
    auto list = gather_list(tensors, n);
    c10d::AllreduceOptions options;
    options.reduceOp = reduce_op(op);
    bucketed(list, [&](std::vector<at::Tensor>& buffer) {
      group->backend->allreduce(buffer, options)->wait();
      if (op == 1) {
        buffer[0].div_(group->world_size);
      }
    });
  });
}

char* rrlhf_c10d_broadcast(void* handle, const void* const* tensors, size_t n, int root) {
  return guarded([&] {
    auto* group = static_cast<Group*>(handle);
    auto list = gather_list(tensors, n);
    c10d::BroadcastOptions options;
    options.rootRank = root;
    bucketed(list, [&](std::vector<at::Tensor>& buffer) {
      group->backend->broadcast(buffer, options)->wait();
    });
  });
}

// Reduces `input` (world × k elements) across the ranks and leaves rank r's k-element part of
// the result in `output` (op 0 sum, 1 average).
char* rrlhf_c10d_reduce_scatter(void* handle, const void* input, const void* output, int op) {
  return guarded([&] {
    auto* group = static_cast<Group*>(handle);
    at::Tensor in = *static_cast<const at::Tensor*>(input);
    at::Tensor out = *static_cast<const at::Tensor*>(output);
    check_flat_pair(in, out, group->world_size, "reduce-scatter: input", "output");
    TORCH_CHECK(op == 0 || op == 1, "reduce-scatter: only sum and average");
    c10d::ReduceScatterOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    group->backend->_reduce_scatter_base(out, in, options)->wait();
    if (op == 1) {
      out.div_(group->world_size);
    }
  });
}

// Concatenates every rank's `input` (k elements) in rank order into `output` (world × k).
char* rrlhf_c10d_all_gather(void* handle, const void* input, const void* output) {
  return guarded([&] {
    auto* group = static_cast<Group*>(handle);
    at::Tensor in = *static_cast<const at::Tensor*>(input);
    at::Tensor out = *static_cast<const at::Tensor*>(output);
    check_flat_pair(out, in, group->world_size, "all-gather: output", "input");
    group->backend->_allgather_base(out, in, c10d::AllgatherOptions())->wait();
  });
}

char* rrlhf_c10d_barrier(void* handle) {
  return guarded([&] { static_cast<Group*>(handle)->backend->barrier()->wait(); });
}

}  // extern "C"
