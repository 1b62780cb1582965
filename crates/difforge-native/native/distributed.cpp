// Data-parallel collectives through PyTorch's own c10d, as exported by the libtorch difforge
// links: a TCPStore for the rendezvous, then a ProcessGroupGloo (CPU tensors) or, in a CUDA
// build, a ProcessGroupNCCL (CUDA tensors). Exactly what torch.distributed runs under
// `init_process_group`, without Python. The functions follow guard.h's convention.
//
// The gloo headers ProcessGroupGloo.hpp includes are not in the wheel: third_party/gloo holds
// the ones of the gloo commit torch 2.11 was built with (see third_party/gloo/README).

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DIFFORGE_NATIVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "guard.h"

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

using difforge_native::fail;
using difforge_native::guarded;

namespace {

// One process group: the store it met its peers through and the backend that runs collectives.
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

c10::intrusive_ptr<c10d::Store> connect_store(const char* host, int port, int world, bool server, const char* prefix,
                                               std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(port);
  opts.isServer = server;
  // As torch.distributed.TCPStore(world_size=world) does on every rank: clients count themselves
  // in, and the server waits until all have.
  // The server does not wait for the clients itself: check_peers below does, comparing how
  // each rank was started first (a server waiting for a WORLD_SIZE of clients that another
  // rank disagrees with would only time out).
  opts.numWorkers = static_cast<std::size_t>(world);
  opts.waitWorkers = false;
  opts.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(host, opts);
  if (prefix != nullptr && prefix[0] != '\0') store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
  return store;
}

// Every rank publishes how it was started (`mine`: world size, backend, config hash); rank 0
// compares every other rank's with its own and the others compare rank 0's, so ranks started
// differently fail at once naming the difference, instead of timing out inside the backend's
// rendezvous (Gloo's connectFullMesh retried for five timeouts).
void check_peers(c10d::Store& store, int rank, int world, const std::string& mine, std::chrono::milliseconds timeout) {
  auto key = [](int r) { return "difforge/started/" + std::to_string(r); };
  store.set(key(rank), std::vector<uint8_t>(mine.begin(), mine.end()));
  std::vector<int> peers;
  if (rank == 0) {
    for (int r = 1; r < world; ++r) peers.push_back(r);
  } else {
    peers.push_back(0);
  }
  for (int r : peers) {
    try {
      store.wait({key(r)}, timeout);
    } catch (const std::exception&) {
      throw std::runtime_error("rank " + std::to_string(r) + " did not join within " + std::to_string(timeout.count() / 1000) +
                               " s (train.dist_timeout_s): is it running, with the same MASTER_ADDR and MASTER_PORT?");
    }
    auto bytes = store.get(key(r));
    std::string theirs(bytes.begin(), bytes.end());
    if (theirs != mine) {
      throw std::invalid_argument("rank " + std::to_string(r) + " was started with " + theirs + ", rank " + std::to_string(rank) + " with " + mine +
                                  ": start every rank with the same WORLD_SIZE, train.dist_backend and config");
    }
  }
}

// The network device Gloo binds: an interface by name (GLOO_SOCKET_IFNAME, as torch reads it),
// else a host or address, else the one this machine's hostname resolves to (loopback if none).
std::shared_ptr<gloo::transport::Device> gloo_device(const char* interface, const char* host) {
  if (interface != nullptr && interface[0] != '\0') return c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  if (host != nullptr && host[0] != '\0') return c10d::ProcessGroupGloo::createDeviceForHostname(host);
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

c10::intrusive_ptr<c10d::Backend> make_backend(const std::string& name, const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                               const char* interface, const char* host, std::chrono::milliseconds timeout, int cuda_device) {
  if (name == "gloo") {
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(gloo_device(interface, host));
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
  }
  if (name == "nccl") {
#ifdef DIFFORGE_NATIVE_NCCL
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    // The watchdog, which ends the process when a collective hangs, fires well after our own
    // wait(timeout) gives up: the trainer first learns which rank stopped and says so.
    opts->timeout = timeout * 2 + std::chrono::seconds(30);
    auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
    if (cuda_device >= 0) {
      // As init_process_group(device_id=...): the communicator is made now, on this rank's
      // card, so a wrong device or a peer that cannot connect fails here rather than at the
      // first collective.
      const at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_device));
      group->setBoundDeviceId(device);
      group->eagerConnectSingleDevice(device);
    }
    return group;
#else
    throw std::invalid_argument("the nccl backend needs a CUDA build of difforge (a libtorch with libtorch_cuda)");
#endif
  }
  throw std::invalid_argument("unknown backend \"" + name + "\": expected gloo or nccl");
}

std::vector<at::Tensor> tensors_of(at::Tensor** handles, int n) {
  std::vector<at::Tensor> out;
  out.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) out.push_back(*handles[i]);
  return out;
}

void wait(const Group& g, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(g.timeout)) throw std::runtime_error("the collective did not finish within the timeout");
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default:
      throw std::invalid_argument("unknown reduce op");
  }
}

}  // namespace

extern "C" {

// 1 when ProcessGroupNCCL was compiled in.
int dfn_built_with_nccl() {
#ifdef DIFFORGE_NATIVE_NCCL
  return 1;
#else
  return 0;
#endif
}

// Meets the other `world - 1` processes through the TCPStore at host:port (rank 0 hosts it when
// `store_server` is 1; under torchrun's agent store every rank is a client) and builds the
// backend ("gloo" or "nccl"). Every wait, the rendezvous included, ends after `timeout_ms`.
int dfn_group_new(const char* backend, const char* host, int port, int rank, int world, int store_server, const char* store_prefix,
                  const char* gloo_interface, const char* gloo_host, int64_t timeout_ms, const char* fingerprint, int cuda_device, void** out) {
  *out = nullptr;
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto group = std::make_unique<Group>();
    group->timeout = timeout;
    group->store = connect_store(host, port, world, store_server != 0, store_prefix, timeout);
    check_peers(*group->store, rank, world, fingerprint, timeout);
    group->backend = make_backend(backend, group->store, rank, world, gloo_interface, gloo_host, timeout, cuda_device);
    *out = group.release();
  });
}

// Reduces each of the `n` tensors across all processes, in place (op: 0 sum, 1 max, 2 min).
int dfn_group_all_reduce(void* group, at::Tensor** tensors, int n, int op) {
  return guarded([&] {
    auto& g = *static_cast<Group*>(group);
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      works.push_back(g.backend->allreduce(one, opts));
    }
    for (auto& w : works) wait(g, w);
  });
}

// Copies each of the `n` tensors of process `root` into the others' tensors.
int dfn_group_broadcast(void* group, at::Tensor** tensors, int n, int root) {
  return guarded([&] {
    auto& g = *static_cast<Group*>(group);
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      works.push_back(g.backend->broadcast(one, opts));
    }
    for (auto& w : works) wait(g, w);
  });
}

// Gathers every process's `input` into `outputs` (one tensor per rank, in rank order).
int dfn_group_all_gather(void* group, at::Tensor* input, at::Tensor** outputs, int n) {
  return guarded([&] {
    auto& g = *static_cast<Group*>(group);
    std::vector<std::vector<at::Tensor>> outs{tensors_of(outputs, n)};
    std::vector<at::Tensor> in{*input};
    wait(g, g.backend->allgather(outs, in));
  });
}

// Returns when every process has called it.
int dfn_group_barrier(void* group) {
  return guarded([&] {
    auto& g = *static_cast<Group*>(group);
    wait(g, g.backend->barrier());
  });
}

// Adds `delta` to the store's counter `key` and returns its new value in *value (delta 0 reads
// it without blocking): the store doubles as a place for heartbeats.
int dfn_group_store_add(void* group, const char* key, int64_t delta, int64_t* value) {
  return guarded([&] { *value = static_cast<Group*>(group)->store->add(key, delta); });
}

void dfn_group_free(void* group) {
  // A destructor that throws (a peer already gone) must not cross into Rust either. NCCL wants
  // an explicit shutdown first (else it warns at every exit that resources may leak).
  guarded([&] {
    auto* g = static_cast<Group*>(group);
    g->backend->shutdown();
    delete g;
  });
}

}  // extern "C"
