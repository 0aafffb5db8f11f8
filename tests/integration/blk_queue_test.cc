// The VBD queue datapath end to end on the simulated host: a simulated
// blkfront (each ABI, ring orders 0 and 4, persistent grants on and off)
// writes patterns through direct and indirect requests, flushes, barriers,
// discards, reads everything back and checks every byte (and the image file
// itself); hostile requests get the answer blkif.h and Linux give, and no
// grant mapping outlives the queue.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <thread>
#include <tuple>
#include <vector>

#include "blkback/blk_queue.h"
#include "blkback/image_raw.h"
#include "sim/blk/sim_blkfront.h"
#include "tests/fixtures/blk_files.h"
#include "tests/fixtures/queue_rig.h"

namespace xenpath {
namespace {

using sim::SimBlkfront;
using test::fill_pattern;
using test::TempFile;
using Io = SimBlkfront::Io;

constexpr DomId kGuest = 9;
constexpr uint64_t kImageBytes = 64ull << 20;

struct RigOptions {
  BlkProtocol protocol = BlkProtocol::kNative;
  unsigned ring_order = 0;
  bool persistent = false;
  bool read_only = false;
  uint32_t features = kBlkFeatureFlush | kBlkFeatureBarrier | kBlkFeatureDiscard;
  uint32_t max_indirect = kBlkDefaultMaxIndirectSegments;
};

// Backend (reactor thread) + frontend (this thread) over one simulated host.
class Rig : public test::QueueRig {
 public:
  explicit Rig(const RigOptions& o)
      : QueueRig({.guest = kGuest, .guest_pages = 8192, .reactor_name = "blk-queue-test"}),
        opts_(o),
        file_(kImageBytes) {
    RawImage::Options io;
    io.read_only = o.read_only;
    auto img = RawImage::open(file_.path, io);
    EXPECT_TRUE(img) << error_string(img.error());
    image_ = std::move(*img);

    const ImageInfo& info = image_->info();
    limits_.sectors = info.size_bytes / 512;
    limits_.sector_size = 512;
    limits_.align_sectors = std::max(info.logical_block_size, info.memory_align) / 512;
    limits_.read_only = o.read_only;
    limits_.max_indirect_segments = o.max_indirect;
    limits_.features = o.features;

    SimBlkfront::Options fo;
    fo.protocol = o.protocol;
    fo.ring_order = o.ring_order;
    fo.persistent = o.persistent;
    fo.max_indirect_segments = o.max_indirect;
    auto f = SimBlkfront::create(guest(), guest_evtchn(), fo);
    EXPECT_TRUE(f) << error_string(f.error());
    front_ = std::move(*f);
    start_queue();
  }

  ~Rig() {
    stop_queue();
    front_.reset();
  }

  void start_queue() {
    VbdQueue::Config c = sim::vbd_queue_config(*front_, kGuest);
    c.limits = limits_;
    c.log_prefix = "vbd 9/51712: ";
    reactor().call([&] {
      auto q = VbdQueue::start(worker(), *image_, c, stats_, [this](int err) {
        halt_error_ = err;
        halts_.fetch_add(1);
      });
      EXPECT_TRUE(q) << error_string(q.error());
      if (q) queue_ = std::move(*q);
    });
  }

  // Stops the queue (retrying while I/O is in flight) and destroys it.
  void stop_queue() {
    QueueRig::stop_queue(queue_, 5000, [] { std::this_thread::sleep_for(std::chrono::milliseconds(1)); });
  }

  const RigOptions opts_;
  TempFile file_;
  std::unique_ptr<RawImage> image_;
  std::unique_ptr<SimBlkfront> front_;
  VbdLimits limits_;
  VbdQueueStats stats_;
  std::unique_ptr<VbdQueue> queue_;
  std::atomic<int> halts_{0};
  int halt_error_ = 0;
};

// An I/O with its own buffer.
struct Transfer {
  Transfer(uint8_t op, uint64_t sector, uint32_t sectors, uint8_t first_sect = 0, bool indirect = false)
      : buf(static_cast<size_t>(sectors) * 512) {
    io.op = op;
    io.sector = sector;
    io.sectors = sectors;
    io.first_sect = first_sect;
    io.indirect = indirect;
    io.data = buf.data();
  }
  std::vector<std::byte> buf;
  Io io;
};

struct Shape {
  uint64_t sector;
  uint32_t sectors;
  uint8_t first_sect;
  bool indirect;
};

// Shapes covering: a lone sector mid-page, a page, a full direct request,
// just past the direct limit, a large indirect one, a page crossing, and a
// forced small indirect one. Scaled to the image's I/O granularity.
std::vector<Shape> shapes(const VbdLimits& l, bool with_indirect) {
  const uint32_t a = l.align_sectors;
  std::vector<Shape> s = {
      {0, 1 * a, static_cast<uint8_t>(a == 1 ? 3 : 0), false},
      {8 * a, 8, 0, false},
      {64 * a, 88, 0, false},
      {20000 * a, 7 * a, static_cast<uint8_t>(a == 1 ? 1 : 0), false},
  };
  if (with_indirect) {
    s.push_back({1024 * a, 96, 0, false});       // 12 pages: indirect
    s.push_back({4096 * a, 200 * 8, 0, false});  // 200 pages
    s.push_back({30000 * a, 16, 0, true});       // 2 pages, indirect on request
  }
  return s;
}

std::vector<Transfer> make(uint8_t op, const std::vector<Shape>& sh, uint32_t seed) {
  std::vector<Transfer> t;
  t.reserve(sh.size());
  for (const Shape& s : sh) {
    t.emplace_back(op, s.sector, s.sectors, s.first_sect, s.indirect);
    if (op != BLKIF_OP_READ) fill_pattern(t.back().buf.data(), t.back().buf.size(), s.sector * 512, seed);
  }
  return t;
}

Status run(Rig& rig, std::vector<Transfer>& ts) {
  std::vector<Io> ios;
  for (auto& t : ts) ios.push_back(t.io);
  Status st = rig.front_->run(ios);
  for (size_t i = 0; i < ts.size(); ++i) ts[i].io.status = ios[i].status;
  return st;
}

void expect_all(const std::vector<Transfer>& ts, int16_t status) {
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_EQ(ts[i].io.status, status) << "transfer " << i;
}

void expect_pattern(Rig& rig, const std::vector<Shape>& sh, uint32_t seed) {
  auto reads = make(BLKIF_OP_READ, sh, 0);
  ASSERT_TRUE(run(rig, reads));
  expect_all(reads, BLKIF_RSP_OKAY);
  for (size_t i = 0; i < sh.size(); ++i) {
    std::vector<std::byte> want(reads[i].buf.size());
    fill_pattern(want.data(), want.size(), sh[i].sector * 512, seed);
    ASSERT_EQ(reads[i].buf, want) << "shape " << i << " read back differs";
    // The image file holds the same bytes.
    ASSERT_EQ(rig.file_.read(sh[i].sector * 512, want.size()), want) << "shape " << i << " not in the file";
  }
}

std::string matrix_name(const std::tuple<BlkProtocol, unsigned, bool>& p) {
  std::string abi = std::get<0>(p) == BlkProtocol::kNative   ? "native"
                    : std::get<0>(p) == BlkProtocol::kX86_32 ? "x86_32"
                                                             : "x86_64";
  return abi + "_order" + std::to_string(std::get<1>(p)) + (std::get<2>(p) ? "_persistent" : "_mapped");
}

class BlkQueueMatrix : public ::testing::TestWithParam<std::tuple<BlkProtocol, unsigned, bool>> {};

TEST_P(BlkQueueMatrix, PatternsFlushBarrierDiscardVerified) {
  RigOptions o;
  o.protocol = std::get<0>(GetParam());
  o.ring_order = std::get<1>(GetParam());
  o.persistent = std::get<2>(GetParam());
  Rig rig(o);
  ASSERT_TRUE(rig.queue_);
  EXPECT_EQ(rig.queue_->ring_size(), o.ring_order == 0 ? 32u : 512u);
  const auto sh = shapes(rig.limits_, true);

  auto writes = make(BLKIF_OP_WRITE, sh, 1);
  Status wst = run(rig, writes);
  ASSERT_TRUE(wst) << error_string(wst.error());
  expect_all(writes, BLKIF_RSP_OKAY);
  std::vector<Transfer> flush;
  flush.emplace_back(BLKIF_OP_FLUSH_DISKCACHE, 0, 0);
  ASSERT_TRUE(run(rig, flush));
  expect_all(flush, BLKIF_RSP_OKAY);
  expect_pattern(rig, sh, 1);

  // A flush carrying data, a barrier carrying data, a bare barrier.
  std::vector<Shape> two = {sh[1], sh[2]};
  std::vector<Transfer> ordered;
  ordered.emplace_back(BLKIF_OP_FLUSH_DISKCACHE, two[0].sector, two[0].sectors);
  fill_pattern(ordered.back().buf.data(), ordered.back().buf.size(), two[0].sector * 512, 2);
  ordered.emplace_back(BLKIF_OP_WRITE_BARRIER, two[1].sector, two[1].sectors);
  fill_pattern(ordered.back().buf.data(), ordered.back().buf.size(), two[1].sector * 512, 2);
  ordered.emplace_back(BLKIF_OP_WRITE_BARRIER, 0, 0);
  ASSERT_TRUE(run(rig, ordered));
  expect_all(ordered, BLKIF_RSP_OKAY);
  expect_pattern(rig, two, 2);

  // Discard the big region: zeroes afterwards.
  if (rig.image_->info().discard) {
    std::vector<Transfer> d;
    d.emplace_back(BLKIF_OP_DISCARD, sh[5].sector, 0);
    d.back().io.discard_sectors = sh[5].sectors;
    ASSERT_TRUE(run(rig, d));
    expect_all(d, BLKIF_RSP_OKAY);
    auto r = make(BLKIF_OP_READ, {sh[5]}, 0);
    ASSERT_TRUE(run(rig, r));
    expect_all(r, BLKIF_RSP_OKAY);
    for (std::byte b : r[0].buf) ASSERT_EQ(b, std::byte{0});
    EXPECT_EQ(rig.stats_.discards.get(), 1u);
  }

  const VbdQueueStats& s = rig.stats_;
  EXPECT_EQ(s.errors.total(), 0u);
  EXPECT_EQ(s.ring.error_responses.get(), 0u);
  EXPECT_EQ(s.writes.get(), sh.size());
  EXPECT_EQ(s.flushes.get(), 2u);
  EXPECT_EQ(s.barriers.get(), 2u);
  // Three indirect shapes, written and read back once; the discard check
  // reads the big one again.
  EXPECT_EQ(s.indirect.get(), 6u + (rig.image_->info().discard ? 1u : 0u));
  EXPECT_EQ(s.in_flight.get(), 0u);
  EXPECT_EQ(s.ring.requests.get(), s.ring.responses.get());
  EXPECT_GT(s.ring.notifications_sent.get(), 0u);

  if (o.persistent) {
    // The frontend reuses its pool: a second pass maps nothing new.
    ASSERT_NE(rig.queue_->persistent(), nullptr);
    EXPECT_GT(rig.queue_->persistent()->live_entries(), 0u);
    // Room for a Linux blkfront's whole pool (32 slots x 33 grants), as
    // Linux blkback's max_persistent_grants, and for a full ring of direct
    // requests on bigger rings.
    EXPECT_GE(rig.queue_->persistent()->max_pages(),
              std::max<uint32_t>(kLinuxMaxPersistentGrants, rig.queue_->ring_size() * kBlkDirectSegments));
    const uint64_t calls = rig.map_calls();
    expect_pattern(rig, {sh[0], sh[3], sh[4], sh[6]}, 1);
    EXPECT_EQ(rig.map_calls(), calls);
    EXPECT_GT(rig.queue_->persistent()->stats().hits.get(), 0u);
  }
  rig.stop_queue();
  EXPECT_EQ(rig.live_maps(), 0u);
}

INSTANTIATE_TEST_SUITE_P(AllAbis, BlkQueueMatrix,
                         ::testing::Combine(::testing::Values(BlkProtocol::kNative, BlkProtocol::kX86_32,
                                                              BlkProtocol::kX86_64),
                                            ::testing::Values(0u, 4u), ::testing::Bool()),
                         [](const auto& info) { return matrix_name(info.param); });

TEST(BlkQueue, OneMapCallPerBurstAndOneUnmapWhenItIsDone) {
  Rig rig({});
  ASSERT_TRUE(rig.queue_);
  const uint32_t a = rig.limits_.align_sectors;
  std::vector<Transfer> reads;
  for (int i = 0; i < 8; ++i) reads.emplace_back(BLKIF_OP_READ, static_cast<uint64_t>(i) * 64 * a, 8);
  const uint64_t calls = rig.map_calls();
  const uint64_t unmaps = rig.hv().counters().unmap_calls.load();
  ASSERT_TRUE(run(rig, reads));
  expect_all(reads, BLKIF_RSP_OKAY);
  // Eight requests published together: one burst, one map, one unmap.
  EXPECT_EQ(rig.map_calls() - calls, 1u);
  EXPECT_EQ(rig.hv().counters().unmap_calls.load() - unmaps, 1u);
  EXPECT_EQ(rig.stats_.ring.batches.get(), 1u);
  // Reads and writes mixed: one writable and one read-only map.
  std::vector<Transfer> mixed;
  for (int i = 0; i < 4; ++i) {
    mixed.emplace_back(BLKIF_OP_WRITE, static_cast<uint64_t>(i) * 64 * a, 8);
    mixed.emplace_back(BLKIF_OP_READ, 4096 + static_cast<uint64_t>(i) * 64 * a, 8);
  }
  const uint64_t calls2 = rig.map_calls();
  ASSERT_TRUE(run(rig, mixed));
  expect_all(mixed, BLKIF_RSP_OKAY);
  EXPECT_EQ(rig.map_calls() - calls2, 2u);
}

TEST(BlkQueue, BarrierOrdersWritesAroundIt) {
  Rig rig({});
  ASSERT_TRUE(rig.queue_);
  const uint64_t sector = 512 * rig.limits_.align_sectors;
  const uint32_t n = 64;  // 8 pages
  // Three writes of one range in one burst: before, the barrier, after.
  std::vector<Transfer> t;
  for (uint8_t op : {BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_WRITE}) {
    t.emplace_back(op, sector, n);
    fill_pattern(t.back().buf.data(), t.back().buf.size(), sector * 512, 10 + static_cast<uint32_t>(t.size()));
  }
  ASSERT_TRUE(run(rig, t));
  expect_all(t, BLKIF_RSP_OKAY);
  // The last write came after the barrier, which came after the first: the
  // last one's data is what stays, every time.
  expect_pattern(rig, {{sector, n, 0, false}}, 13);
  EXPECT_EQ(rig.stats_.barriers.get(), 1u);
  EXPECT_EQ(rig.stats_.barrier_drains.get(), 1u);  // the first write was in flight
}

// --- Hostile and refused requests -------------------------------------------

BlkRequest raw_read(uint64_t id, uint64_t sector, GrantRef ref, uint8_t first = 0, uint8_t last = 7) {
  BlkRequest r;
  r.ring_op = r.op = BLKIF_OP_READ;
  r.id = id;
  r.sector = sector;
  r.nr_segments = 1;
  r.seg[0] = BlkSegment{ref, first, last};
  return r;
}

TEST(BlkQueue, HostileRequestsAreAnsweredAndLeakNothing) {
  RigOptions o;
  o.features = kBlkFeatureFlush;  // no barrier, no discard
  Rig rig(o);
  ASSERT_TRUE(rig.queue_);
  auto& f = *rig.front_;
  auto good = f.grant_page(false);
  auto ro = f.grant_page(true);
  ASSERT_TRUE(good && ro);
  const uint64_t live0 = rig.live_maps();

  std::vector<BlkRequest> reqs;
  reqs.push_back(raw_read(1, 0, *good));  // fine
  BlkRequest unknown = raw_read(2, 0, *good);
  unknown.ring_op = unknown.op = 7;
  reqs.push_back(unknown);  // EOPNOTSUPP
  BlkRequest reserved = raw_read(3, 0, *good);
  reserved.ring_op = reserved.op = BLKIF_OP_RESERVED_1;
  reqs.push_back(reserved);                                     // EOPNOTSUPP
  reqs.push_back(raw_read(4, 0, *good, 0, 8));                  // bad segment
  reqs.push_back(raw_read(5, rig.limits_.sectors - 4, *good));  // past the end
  reqs.push_back(raw_read(6, 8, *ro));                          // a read into a read-only grant
  reqs.push_back(raw_read(7, 8, 0x7fffff));                     // never granted
  BlkRequest barrier = raw_read(8, 0, *good);
  barrier.ring_op = barrier.op = BLKIF_OP_WRITE_BARRIER;
  reqs.push_back(barrier);  // not offered
  BlkRequest zero = raw_read(9, 0, *good);
  zero.nr_segments = 0;
  reqs.push_back(zero);  // no segments
  BlkRequest many = raw_read(10, 0, *good);
  many.nr_segments = 12;
  reqs.push_back(many);  // too many direct segments
  BlkRequest ind = raw_read(11, 0, *good);
  ind.ring_op = BLKIF_OP_INDIRECT;
  ind.indirect = true;
  ind.nr_segments = 300;  // over the 256 offered
  ind.nr_indirect_pages = 1;
  ind.indirect_grefs[0] = *good;
  reqs.push_back(ind);
  BlkRequest badind = raw_read(12, 0, *good);
  badind.ring_op = BLKIF_OP_INDIRECT;
  badind.indirect = true;
  badind.nr_segments = 4;
  badind.nr_indirect_pages = 1;
  badind.indirect_grefs[0] = 0x7ffffe;  // descriptor page never granted
  reqs.push_back(badind);
  BlkRequest indop = badind;
  indop.id = 13;
  indop.op = BLKIF_OP_FLUSH_DISKCACHE;  // indirect carries only reads and writes
  reqs.push_back(indop);
  reqs.push_back(raw_read(14, 16, *good));  // fine, same burst as the culprits

  for (const auto& r : reqs) ASSERT_TRUE(f.push_raw(r));
  ASSERT_TRUE(f.kick());
  auto rsp = f.wait_responses(static_cast<unsigned>(reqs.size()), std::chrono::seconds(5));
  ASSERT_TRUE(rsp) << error_string(rsp.error());
  std::map<uint64_t, sim::BlkResponse> by_id;
  for (const auto& r : *rsp) by_id[r.id] = r;
  ASSERT_EQ(by_id.size(), reqs.size());
  const std::map<uint64_t, int16_t> want = {{1, BLKIF_RSP_OKAY},   {2, BLKIF_RSP_EOPNOTSUPP}, {3, BLKIF_RSP_EOPNOTSUPP},
                                            {4, BLKIF_RSP_ERROR},  {5, BLKIF_RSP_ERROR},      {6, BLKIF_RSP_ERROR},
                                            {7, BLKIF_RSP_ERROR},  {8, BLKIF_RSP_EOPNOTSUPP}, {9, BLKIF_RSP_ERROR},
                                            {10, BLKIF_RSP_ERROR}, {11, BLKIF_RSP_ERROR},     {12, BLKIF_RSP_ERROR},
                                            {13, BLKIF_RSP_ERROR}, {14, BLKIF_RSP_OKAY}};
  for (const auto& [id, st] : want) EXPECT_EQ(by_id[id].status, st) << "request " << id;
  // Responses echo the operation (the inner one for indirect requests).
  EXPECT_EQ(by_id[2].op, 7);
  EXPECT_EQ(by_id[12].op, BLKIF_OP_READ);
  EXPECT_EQ(by_id[13].op, BLKIF_OP_FLUSH_DISKCACHE);

  const BlkErrorStats& e = rig.stats_.errors;
  EXPECT_EQ(e.get(BlkReason::kUnknownOp), 2u);
  EXPECT_EQ(e.get(BlkReason::kNotNegotiated), 1u);
  EXPECT_EQ(e.get(BlkReason::kBadSegment), 1u);
  EXPECT_EQ(e.get(BlkReason::kOutOfRange), 1u);
  EXPECT_EQ(e.get(BlkReason::kMapFailed), 2u);
  EXPECT_EQ(e.get(BlkReason::kBadSegmentCount), 3u);
  EXPECT_EQ(e.get(BlkReason::kIndirectMapFailed), 1u);
  EXPECT_EQ(e.get(BlkReason::kBadIndirectOp), 1u);
  EXPECT_GE(rig.stats_.map_fallbacks.get(), 1u);
  // Only the ring stays mapped; the grants can be revoked.
  EXPECT_EQ(rig.live_maps(), live0);
  EXPECT_TRUE(f.domain().end_access(*good));
  EXPECT_TRUE(f.domain().end_access(*ro));
  rig.stop_queue();
  EXPECT_EQ(rig.live_maps(), 0u);
}

TEST(BlkQueue, ReadOnlyVbdRefusesWrites) {
  RigOptions o;
  o.read_only = true;
  o.features = 0;
  Rig rig(o);
  ASSERT_TRUE(rig.queue_);
  std::vector<Transfer> t;
  t.emplace_back(BLKIF_OP_WRITE, 0, 8);
  t.emplace_back(BLKIF_OP_READ, 0, 8);
  ASSERT_TRUE(run(rig, t));
  EXPECT_EQ(t[0].io.status, BLKIF_RSP_ERROR);
  EXPECT_EQ(t[1].io.status, BLKIF_RSP_OKAY);
  EXPECT_EQ(rig.stats_.errors.get(BlkReason::kReadOnly), 1u);
}

TEST(BlkQueue, ProducerOverflowHaltsTheQueueOnce) {
  Rig rig({});
  ASSERT_TRUE(rig.queue_);
  std::vector<Transfer> t;
  t.emplace_back(BLKIF_OP_READ, 0, 8);
  ASSERT_TRUE(run(rig, t));
  // The guest claims far more requests than the ring holds.
  rig.front_->set_req_prod_raw(rig.front_->req_prod_pvt() + 1000);
  ASSERT_TRUE(rig.front_->notify());
  for (int i = 0; i < 2000 && rig.halts_.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(rig.halts_.load(), 1);
  EXPECT_EQ(rig.halt_error_, EPROTO);
  EXPECT_EQ(rig.stats_.ring.halted.get(), 1u);
  ASSERT_TRUE(rig.front_->notify());  // more events change nothing
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(rig.halts_.load(), 1);
  bool halted = false;
  rig.reactor().call([&] { halted = rig.queue_->halted(); });
  EXPECT_TRUE(halted);
  rig.stop_queue();
  EXPECT_EQ(rig.live_maps(), 0u);
}

TEST(BlkQueue, StopWaitsForInFlightIo) {
  Rig rig({});
  ASSERT_TRUE(rig.queue_);
  // Fill the ring with large writes and stop while they are in flight.
  std::vector<Transfer> t;
  for (int i = 0; i < 32; ++i) t.emplace_back(BLKIF_OP_WRITE, static_cast<uint64_t>(i) * 1024, 88);
  std::vector<Io> ios;
  for (auto& x : t) ios.push_back(x.io);
  std::thread guest([&] { (void)rig.front_->run(ios, std::chrono::milliseconds(500)); });
  for (int i = 0; i < 1000 && rig.stats_.ring.requests.get() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  rig.stop_queue();  // EBUSY until the I/O in flight completed
  guest.join();
  EXPECT_EQ(rig.live_maps(), 0u);
}

}  // namespace
}  // namespace xenpath
