// The load generator's verify mode end to end: SimBlkHost (the production
// vbd backend over the xenbus driver on the simulated host), BlkLoad on each
// ring of a disk, mixed random reads and writes with flushes, every byte
// read back checked against the last acknowledged write, over the feature
// matrix (protocol, ring order, queues, persistent grants, indirect
// descriptors); then a sequential read of the whole region. And the
// checker's teeth: corruption behind the backend's back, and a backend that
// drops data (the null image), are detected.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "blkback/image_null.h"
#include "sim/blk/sim_blkhost.h"
#include "sim/blk/sim_blkload.h"
#include "tests/fixtures/blk_files.h"

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using sim::BlkLoad;
using sim::BlkLoadSpec;
using sim::SimBlkHost;
using test::TempFile;

constexpr uint64_t kImageBytes = 32ull << 20;

// Drives every load from this thread until all are done.
::testing::AssertionResult run_all(const std::vector<BlkLoad*>& loads, std::chrono::milliseconds limit = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    bool all_done = false;
    const unsigned completions = BlkLoad::poll_all(loads, all_done);
    if (all_done) return ::testing::AssertionSuccess();
    if (std::chrono::steady_clock::now() > deadline) return ::testing::AssertionFailure() << "loads did not finish";
    if (completions == 0) {
      if (Status st = BlkLoad::wait_any(loads, 10ms); !st) {
        return ::testing::AssertionFailure() << "wait: " << error_string(st.error());
      }
    }
  }
}

struct Features {
  BlkProtocol protocol;
  unsigned ring_order;
  unsigned queues;
  bool persistent;
  bool indirect;
};

std::string name_of(const ::testing::TestParamInfo<Features>& p) {
  const Features& f = p.param;
  std::string proto = f.protocol == BlkProtocol::kNative   ? "native"
                      : f.protocol == BlkProtocol::kX86_32 ? "x86_32"
                                                           : "x86_64";
  return proto + "_order" + std::to_string(f.ring_order) + "_q" + std::to_string(f.queues) +
         (f.persistent ? "_persistent" : "_grantmap") + (f.indirect ? "_indirect" : "_direct");
}

class BlkVerifyBase {
 protected:
  void make_host(VbdOptions vo = {}) {
    spdlog::set_level(spdlog::level::warn);
    SimBlkHost::Options o;
    o.workers = 1;
    vo.max_queues = 4;
    o.vbd = std::move(vo);
    o.guest_pages = 16384;
    auto h = SimBlkHost::create(o);
    ASSERT_TRUE(h) << error_string(h.error());
    host_ = std::move(*h);
    auto ev = host_->open_guest_event_channel();
    ASSERT_TRUE(ev);
    evtchn_ = *ev;
  }
  void destroy_host() {
    loads_.clear();
    if (host_) {
      host_.reset();  // detaches every disk
    }
  }

  std::unique_ptr<SimBlkHost> host_;
  EventChannel* evtchn_ = nullptr;
  std::vector<std::unique_ptr<BlkLoad>> loads_;
};

class BlkVerifyMatrix : public BlkVerifyBase, public ::testing::TestWithParam<Features> {
 protected:
  void SetUp() override { make_host(); }
  void TearDown() override { destroy_host(); }
};

TEST_P(BlkVerifyMatrix, MixedRandomWithFlushesThenFullReadBack) {
  const Features f = GetParam();
  TempFile file(kImageBytes);  // sparse: zeros, as verify wants
  SimBlkHost::FrontOptions fo;
  fo.protocol = f.protocol;
  fo.ring_order = f.ring_order;
  fo.queues = f.queues;
  fo.persistent = f.persistent;
  fo.indirect = f.indirect;
  auto d = host_->attach(51712, file.path, fo, *evtchn_);
  ASSERT_TRUE(d) << error_string(d.error());
  SimBlkHost::Disk& disk = **d;
  ASSERT_EQ(disk.bytes, kImageBytes);
  EXPECT_EQ(disk.persistent, f.persistent);
  EXPECT_EQ(disk.max_indirect_segments != 0, f.indirect);
  ASSERT_EQ(disk.queues.size(), f.queues);

  // 48 KiB blocks are 12 segments, one more than a direct request carries:
  // indirect requests. Without indirect, 8 KiB blocks (two direct segments). Each queue owns its region (the
  // verify state is per load).
  const uint32_t bs = f.indirect ? 49152 : 8192;
  constexpr uint64_t kBlocks = 48;
  std::vector<BlkLoad*> loads;
  for (unsigned q = 0; q < f.queues; ++q) {
    BlkLoadSpec s;
    s.queue_depth = 8;
    s.block_size = bs;
    s.read_percent = 50;
    s.random = true;
    s.offset_bytes = q * kBlocks * bs;
    s.span_bytes = kBlocks * bs;
    s.flush_every = 16;
    s.verify = true;
    s.seed = 100 + q;
    s.max_ops = 240 / f.queues + 40;
    auto l = BlkLoad::create(*disk.queues[q], disk.bytes, s, 51712);
    ASSERT_TRUE(l) << error_string(l.error());
    loads.push_back(l->get());
    loads_.push_back(std::move(*l));
  }
  ASSERT_TRUE(run_all(loads));
  for (BlkLoad* l : loads) {
    const auto& st = l->stats();
    EXPECT_EQ(st.errors.get(), 0u);
    EXPECT_EQ(st.mismatches.get(), 0u);
    EXPECT_EQ(st.reads.get() + st.writes.get(), l->spec().max_ops);
    EXPECT_GT(st.reads.get(), 0u);
    EXPECT_GT(st.writes.get(), 0u);
    EXPECT_EQ(st.flushes.get(), st.writes.get() / 16);
    EXPECT_EQ(st.latency.count(), st.ops.get());
    EXPECT_EQ(st.in_flight.get(), 0u);
  }
  // Phase 2: every block of every region read back and checked (written
  // ones against their last generation, the others as zeros).
  for (BlkLoad* l : loads) {
    BlkLoadSpec s = l->spec();
    s.read_percent = 100;
    s.random = false;
    s.flush_every = 0;
    s.max_ops = kBlocks;
    ASSERT_TRUE(l->next_phase(s));
  }
  ASSERT_TRUE(run_all(loads));
  for (BlkLoad* l : loads) EXPECT_EQ(l->stats().mismatches.get(), 0u);

  // The backend saw what the options promise.
  const VbdDevice* dev = host_->device(51712);
  ASSERT_NE(dev, nullptr);
  ASSERT_EQ(dev->queue_count(), f.queues);
  uint64_t indirect = 0;
  uint64_t flushes = 0;
  for (size_t q = 0; q < dev->queue_count(); ++q) {
    indirect += dev->queue_stats(q).indirect.get();
    flushes += dev->queue_stats(q).flushes.get();
    EXPECT_GT(dev->queue_stats(q).ring.requests.get(), 0u) << "queue " << q << " idle";
  }
  EXPECT_EQ(indirect != 0, f.indirect);
  EXPECT_GT(flushes, 0u);
  if (f.persistent) {
    EXPECT_GT(disk.queues[0]->pool_pages(), 0u);
  } else {
    EXPECT_EQ(disk.queues[0]->pool_pages(), 0u);
  }
  ASSERT_TRUE(host_->detach(51712));
  EXPECT_EQ(host_->host().counters().mapped_pages_live.load(), 0u);
}

// Every value of every axis appears; each pair of protocol and the other
// axes' values is covered at least once.
INSTANTIATE_TEST_SUITE_P(Features, BlkVerifyMatrix,
                         ::testing::Values(Features{BlkProtocol::kNative, 0, 1, true, true},
                                           Features{BlkProtocol::kX86_32, 4, 4, false, true},
                                           Features{BlkProtocol::kX86_64, 0, 4, true, false},
                                           Features{BlkProtocol::kNative, 4, 1, false, false},
                                           Features{BlkProtocol::kX86_32, 0, 1, true, false},
                                           Features{BlkProtocol::kX86_64, 4, 1, false, true},
                                           Features{BlkProtocol::kNative, 0, 4, false, true},
                                           Features{BlkProtocol::kX86_32, 4, 1, true, true}),
                         name_of);

class BlkVerifyDetects : public BlkVerifyBase, public ::testing::Test {
 protected:
  void TearDown() override { destroy_host(); }

  // Writes every block of [0, blocks * bs) sequentially, verify on.
  BlkLoad* write_region(SimBlkHost::Disk& disk, uint32_t bs, uint64_t blocks) {
    BlkLoadSpec s;
    s.queue_depth = 8;
    s.block_size = bs;
    s.read_percent = 0;
    s.random = false;
    s.span_bytes = blocks * bs;
    s.verify = true;
    s.max_ops = blocks;
    auto l = BlkLoad::create(*disk.queues[0], disk.bytes, s, disk.devid);
    EXPECT_TRUE(l) << error_string(l.error());
    if (!l) return nullptr;
    loads_.push_back(std::move(*l));
    BlkLoad* load = loads_.back().get();
    EXPECT_TRUE(run_all({load}));
    EXPECT_EQ(load->stats().writes.get(), blocks);
    EXPECT_EQ(load->stats().errors.get(), 0u);
    return load;
  }
  void read_region(BlkLoad& l, uint64_t blocks) {
    BlkLoadSpec s = l.spec();
    s.read_percent = 100;
    s.max_ops = blocks;
    ASSERT_TRUE(l.next_phase(s));
    ASSERT_TRUE(run_all({&l}));
    EXPECT_EQ(l.stats().reads.get(), blocks);
  }
};

TEST_F(BlkVerifyDetects, CorruptionBehindTheBackendsBack) {
  make_host();
  TempFile file(kImageBytes);
  auto d = host_->attach(768, file.path, {}, *evtchn_);
  ASSERT_TRUE(d) << error_string(d.error());
  constexpr uint32_t kBs = 4096;
  constexpr uint64_t kBlocks = 32;
  BlkLoad* l = write_region(**d, kBs, kBlocks);
  ASSERT_NE(l, nullptr);
  // Three kinds of damage: one flipped byte in block 3, block 10 holding
  // block 11's data (a misdirected write), block 20 back to zeros (a lost
  // write).
  const int fd = ::open(file.path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::vector<std::byte> buf(kBs);
  ASSERT_EQ(::pread(fd, buf.data(), kBs, 3 * kBs + 0), static_cast<ssize_t>(kBs));
  buf[1000] ^= std::byte{0x40};
  ASSERT_EQ(::pwrite(fd, buf.data(), kBs, 3 * kBs), static_cast<ssize_t>(kBs));
  ASSERT_EQ(::pread(fd, buf.data(), kBs, 11 * kBs), static_cast<ssize_t>(kBs));
  ASSERT_EQ(::pwrite(fd, buf.data(), kBs, 10 * kBs), static_cast<ssize_t>(kBs));
  std::fill(buf.begin(), buf.end(), std::byte{0});
  ASSERT_EQ(::pwrite(fd, buf.data(), kBs, 20 * kBs), static_cast<ssize_t>(kBs));
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
  read_region(*l, kBlocks);
  EXPECT_EQ(l->stats().mismatches.get(), 3u);
  EXPECT_EQ(l->stats().errors.get(), 0u);
}

TEST_F(BlkVerifyDetects, UntouchedRegionPasses) {
  // The control for the test above: same steps, no damage, no mismatch.
  make_host();
  TempFile file(kImageBytes);
  auto d = host_->attach(768, file.path, {}, *evtchn_);
  ASSERT_TRUE(d) << error_string(d.error());
  BlkLoad* l = write_region(**d, 4096, 32);
  ASSERT_NE(l, nullptr);
  read_region(*l, 32);
  EXPECT_EQ(l->stats().mismatches.get(), 0u);
}

TEST_F(BlkVerifyDetects, ABackendThatDropsDataFails) {
  // The null image acknowledges writes and stores nothing: every block read
  // back is wrong, and verify says so.
  VbdOptions vo;
  vo.open_image = [](const VbdParams& p, bool ro) -> Result<std::unique_ptr<Image>> {
    XP_ASSIGN_OR_RETURN(auto img, NullImage::create(p.path, kImageBytes, 512, ro));
    return std::unique_ptr<Image>(std::move(img));
  };
  make_host(std::move(vo));
  auto d = host_->attach(769, "/null/769", {}, *evtchn_);
  ASSERT_TRUE(d) << error_string(d.error());
  EXPECT_EQ((*d)->bytes, kImageBytes);
  BlkLoad* l = write_region(**d, 4096, 16);
  ASSERT_NE(l, nullptr);
  read_region(*l, 16);
  EXPECT_EQ(l->stats().mismatches.get(), 16u);
}

TEST_F(BlkVerifyDetects, SpecsTheRingCannotCarryAreRefused) {
  make_host();
  TempFile file(kImageBytes);
  SimBlkHost::FrontOptions fo;
  fo.indirect = false;
  auto d = host_->attach(770, file.path, fo, *evtchn_);
  ASSERT_TRUE(d) << error_string(d.error());
  sim::SimBlkfront& f = *(*d)->queues[0];
  BlkLoadSpec s;
  s.block_size = 65536;  // 16 segments without indirect descriptors
  EXPECT_EQ(BlkLoad::create(f, kImageBytes, s, 1).error(), EINVAL);
  s.block_size = 1000;
  EXPECT_EQ(BlkLoad::create(f, kImageBytes, s, 1).error(), EINVAL);
  s.block_size = 4096;
  s.queue_depth = f.ring_size() + 1;
  EXPECT_EQ(BlkLoad::create(f, kImageBytes, s, 1).error(), EINVAL);
  s.queue_depth = 8;
  s.offset_bytes = kImageBytes;
  EXPECT_EQ(BlkLoad::create(f, kImageBytes, s, 1).error(), EINVAL);
  s.offset_bytes = 4096;
  s.span_bytes = kImageBytes;
  EXPECT_EQ(BlkLoad::create(f, kImageBytes, s, 1).error(), EINVAL);
  s.span_bytes = 0;
  EXPECT_TRUE(BlkLoad::create(f, kImageBytes, s, 1));
}

}  // namespace
}  // namespace xenpath
