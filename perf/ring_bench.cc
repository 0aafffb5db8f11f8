// Foundation costs, each next to its limit in the same run:
// - a request's trip through BackRing (private copy, response, push with the
//   notification check) against a plain copy of the same bytes (the floor
//   any backend pays to read a request safely);
// - grant mapping on the simulated host in batches of 1 and 32 pages: what
//   batching saves per page (report the ratio of the two per-page times).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/ring.h"
#include "common/ring_types.h"
#include "sim/front_ring.h"
#include "sim/sim_host.h"

namespace xenpath {
namespace {

struct Aligned {
  explicit Aligned(size_t n) : p(std::aligned_alloc(kPageSize, n)) { std::memset(p, 0, n); }
  ~Aligned() { std::free(p); }
  void* p;
};

void BM_BackRingRoundTrip(benchmark::State& state) {
  const unsigned batch = static_cast<unsigned>(state.range(0));
  Aligned mem(kPageSize);
  sim::SimFrontRing<BlkifRing> front;
  BackRing<BlkifRing> back;
  (void)front.init(mem.p, kPageSize);
  (void)back.attach(mem.p, kPageSize);
  std::vector<blkif_request> in(batch);
  std::vector<blkif_response> out(batch);
  blkif_request req{};
  req.operation = BLKIF_OP_READ;
  req.nr_segments = 1;
  for (auto _ : state) {
    for (unsigned i = 0; i < batch; ++i) front.push(req);
    front.flush();
    auto n = back.consume(in);
    for (unsigned i = 0; i < *n; ++i) {
      back.emplace_response([&](blkif_response& rsp) { rsp.id = in[i].id; });
    }
    benchmark::DoNotOptimize(back.flush());
    front.take_responses(out);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * batch);
}
BENCHMARK(BM_BackRingRoundTrip)->Arg(1)->Arg(32);

// The floor: copying the same request and response bytes once each.
void BM_CopyFloor(benchmark::State& state) {
  const unsigned batch = static_cast<unsigned>(state.range(0));
  std::vector<blkif_request> src(batch), dst(batch);
  std::vector<blkif_response> rsrc(batch), rdst(batch);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), batch * sizeof(blkif_request));
    std::memcpy(rdst.data(), rsrc.data(), batch * sizeof(blkif_response));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * batch);
}
BENCHMARK(BM_CopyFloor)->Arg(1)->Arg(32);

void BM_SimGrantMap(benchmark::State& state) {
  const unsigned batch = static_cast<unsigned>(state.range(0));
  auto host = sim::SimHost::create({});
  auto* dom = *(*host)->create_domain(1, 256, "bench");
  std::vector<GrantRef> refs;
  for (unsigned i = 0; i < batch; ++i) refs.push_back(*dom->grant_access(kDom0, *dom->alloc_pages(1), false));
  auto gnt = std::move(*(*host)->open_grant_table(kDom0));
  for (auto _ : state) {
    auto m = gnt->map(1, refs, true);
    benchmark::DoNotOptimize(m->data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * batch);
  state.counters["pages_per_call"] = batch;
}
BENCHMARK(BM_SimGrantMap)->Arg(1)->Arg(32);

}  // namespace
}  // namespace xenpath
