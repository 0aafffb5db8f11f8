// The whole blkback datapath on the simulated host: a SimBlkfront keeps the
// ring full (queue depth = ring size) of reads or writes of one size at
// random aligned offsets of a preallocated raw image; the backend queue maps
// each burst in one call (or uses persistent grants) and does O_DIRECT I/O
// through io_uring into the mapped pages. Items/s is IOPS; the counters say
// how many grant map calls each request cost.
#include <benchmark/benchmark.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "blkback/blk_queue.h"
#include "blkback/image_raw.h"
#include "sim/blk/sim_blkfront.h"
#include "sim/sim_queue_host.h"

namespace xenpath {
namespace {

constexpr DomId kGuest = 3;
constexpr uint64_t kImageBytes = 256ull << 20;

struct Rig {
  explicit Rig(bool persistent) {
    char tmpl[] = "/tmp/xenpath-blk-bench-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    path = tmpl;
    (void)::fallocate(fd, 0, 0, static_cast<off_t>(kImageBytes));
    ::close(fd);
    host = std::move(*sim::SimQueueHost::create({.guest = kGuest, .guest_pages = 16384, .reactor_name = "blk-bench"}));
    image = std::move(*RawImage::open(path, {}));
    sim::SimBlkfront::Options fo;
    fo.persistent = persistent;
    fo.max_indirect_segments = 256;
    front = std::move(*sim::SimBlkfront::create(host->guest(), host->guest_evtchn(), fo));
    VbdQueue::Config c = sim::vbd_queue_config(*front, kGuest);
    c.limits.sectors = image->info().size_bytes / 512;
    c.limits.align_sectors = std::max(image->info().logical_block_size, image->info().memory_align) / 512;
    c.limits.max_indirect_segments = 256;
    c.limits.features = kBlkFeatureFlush | kBlkFeatureBarrier;
    host->reactor().call([&] { queue = std::move(*VbdQueue::start(host->worker(), *image, c, stats)); });
  }
  ~Rig() {
    (void)host->stop_queue(queue, UINT32_MAX);
    front.reset();
    host.reset();
    ::unlink(path.c_str());
  }
  std::string path;
  std::unique_ptr<sim::SimQueueHost> host;
  std::unique_ptr<RawImage> image;
  std::unique_ptr<sim::SimBlkfront> front;
  VbdQueueStats stats;
  std::unique_ptr<VbdQueue> queue;
};

void run_bench(benchmark::State& state, uint8_t op) {
  const uint32_t sectors = static_cast<uint32_t>(state.range(0)) / 512;
  const bool persistent = state.range(1) != 0;
  Rig rig(persistent);
  const unsigned depth = rig.front->ring_size();
  std::vector<std::vector<std::byte>> bufs(depth, std::vector<std::byte>(sectors * 512, std::byte{0x5a}));
  std::vector<sim::SimBlkfront::Io> ios(depth);
  std::mt19937_64 rng(1);
  const uint64_t slots = kImageBytes / 512 / sectors;
  const uint64_t maps0 = rig.host->hv().counters().map_calls.load();
  uint64_t requests = 0;
  for (auto _ : state) {
    for (unsigned i = 0; i < depth; ++i) {
      ios[i] = {};
      ios[i].op = op;
      ios[i].sector = (rng() % slots) * sectors;
      ios[i].sectors = sectors;
      ios[i].data = bufs[i].data();
    }
    if (!rig.front->run(ios)) state.SkipWithError("I/O failed");
    requests += depth;
  }
  state.SetItemsProcessed(static_cast<int64_t>(requests));
  state.SetBytesProcessed(static_cast<int64_t>(requests) * sectors * 512);
  state.counters["map_calls_per_req"] =
      static_cast<double>(rig.host->hv().counters().map_calls.load() - maps0) / static_cast<double>(requests);
  state.counters["notify_per_req"] =
      static_cast<double>(rig.stats.ring.notifications_sent.get()) / static_cast<double>(requests);
}

void BM_BlkRead(benchmark::State& state) { run_bench(state, BLKIF_OP_READ); }
void BM_BlkWrite(benchmark::State& state) { run_bench(state, BLKIF_OP_WRITE); }
BENCHMARK(BM_BlkRead)->Args({4096, 0})->Args({4096, 1})->Args({65536, 0})->Args({65536, 1})->UseRealTime();
BENCHMARK(BM_BlkWrite)->Args({4096, 0})->Args({4096, 1})->Args({65536, 1})->UseRealTime();

}  // namespace
}  // namespace xenpath
