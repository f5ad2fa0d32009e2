// A C face for libtorch's c10d (the engine under torch.distributed): a TCPStore rendezvous,
// a Gloo process group (NCCL when built with DLLM_DIST_NCCL) and the collectives data parallel
// training needs, on the at::Tensor* that tch hands out as C_tensor*.
//
// Every function catches C++ exceptions: a failure comes back as a non-zero return and a
// message in *err (free it with dist_free_error), never as an exception crossing into Rust.

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DLLM_DIST_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

char* copy_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

// Runs `body`, turning an exception into -1 and its message.
template <typename Body>
int guarded(char** err, Body body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("an unknown C++ exception");
  }
  return -1;
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::AVG);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    case 3:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    default:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
  }
}

}  // namespace

extern "C" {

void dist_free_error(char* err) { std::free(err); }

// Connects to (or, with is_server, hosts) the TCPStore at host:port, then creates the process
// group under `prefix`. backend: 0 Gloo, 1 NCCL (device = local GPU index).
void* dist_init(const char* host, uint16_t port, int rank, int size, int is_server,
                int64_t timeout_ms, const char* prefix, const char* gloo_host,
                const char* gloo_interface, int backend, int device, char** err) {
  Group* group = nullptr;
  int rc = guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = is_server != 0;
    // Every rank must say how many workers there are (else "1/2 clients joined" time-outs).
    options.numWorkers = static_cast<std::size_t>(size);
    options.waitWorkers = false;
    options.timeout = timeout;
    options.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    c10::intrusive_ptr<c10d::Backend> made;
    if (backend == 1) {
#ifdef DLLM_DIST_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = timeout;
      made = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, nccl_options);
#else
      (void)device;
      throw std::runtime_error(
          "this build of dllm-rl has no NCCL (it was compiled without the CUDA headers; "
          "scripts/setup installs them)");
#endif
    } else {
      auto gloo_options = c10d::ProcessGroupGloo::Options::create(timeout);
      if (gloo_interface != nullptr && gloo_interface[0] != '\0') {
        gloo_options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(std::string(gloo_interface)));
      } else if (gloo_host != nullptr && gloo_host[0] != '\0') {
        gloo_options->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname(std::string(gloo_host)));
      } else {
        gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      made = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, gloo_options);
    }
    group = new Group{store, made};
  });
  return rc == 0 ? group : nullptr;
}

void dist_destroy(void* group) { delete static_cast<Group*>(group); }

int dist_all_reduce(void* group, at::Tensor* tensor, int op, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = reduce_op(op);
    static_cast<Group*>(group)->backend->allreduce(tensors, options)->wait();
  });
}

// `input` holds size * numel(output) elements; rank r receives the reduction of chunk r.
int dist_reduce_scatter(void* group, at::Tensor* output, at::Tensor* input, int op, char** err) {
  return guarded(err, [&] {
    c10d::ReduceScatterOptions options;
    options.reduceOp = reduce_op(op);
    static_cast<Group*>(group)->backend->_reduce_scatter_base(*output, *input, options)->wait();
  });
}

// `output` holds size * numel(input) elements: rank r's input lands in chunk r.
int dist_all_gather(void* group, at::Tensor* output, at::Tensor* input, char** err) {
  return guarded(err, [&] {
    static_cast<Group*>(group)->backend->_allgather_base(*output, *input)->wait();
  });
}

int dist_broadcast(void* group, at::Tensor* tensor, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    static_cast<Group*>(group)->backend->broadcast(tensors, options)->wait();
  });
}

int dist_barrier(void* group, char** err) {
  return guarded(err, [&] { static_cast<Group*>(group)->backend->barrier()->wait(); });
}

// The store's counter `key` after adding `value` (0 reads it without waiting).
int dist_store_add(void* group, const char* key, int64_t value, int64_t* result, char** err) {
  return guarded(err, [&] { *result = static_cast<Group*>(group)->store->add(std::string(key), value); });
}

}  // extern "C"
