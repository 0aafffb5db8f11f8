// kill -9 durability: a write the backend acknowledged, followed by a flush
// it acknowledged, is on the image after the backend process is killed
// without warning in the middle of later I/O, and the image holds no torn
// or foreign data: every sector is either what the last flushed generation
// wrote there or what a later (unflushed, possibly unacknowledged) write
// wrote there, whole.
//
// The backend (reactor + VbdQueue on io_uring, O_DIRECT image) and the
// simulated guest run in a forked child, which reports each generation to
// the parent through a pipe only after the guest saw the flush's answer;
// the parent SIGKILLs the child at a random moment after a few reports and
// then reads the image file. (A process kill loses no page cache: what this
// proves is that nothing is acknowledged before its I/O completed and that
// a dying daemon leaves no half-written request behind. Power-loss
// durability rests on the flush being fdatasync, tested in blk_queue_test.)
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "blkback/blk_queue.h"
#include "blkback/image_raw.h"
#include "sim/blk/sim_blkfront.h"
#include "sim/sim_queue_host.h"
#include "tests/fixtures/blk_files.h"

namespace xenpath {
namespace {

using sim::SimBlkfront;
using test::TempFile;

constexpr DomId kGuest = 7;
constexpr uint64_t kImageBytes = 16ull << 20;
constexpr uint32_t kBlock = 4096;
constexpr uint64_t kBlocks = kImageBytes / kBlock;
constexpr unsigned kPerGeneration = 48;  // more than one ring's worth at order 0

// Sector content: generation and sector number in the first 16 bytes, then
// bytes derived from both, so a sector from another place or another write
// never passes for this one.
void fill_sector(std::byte* p, uint64_t sector, uint64_t gen) {
  std::memcpy(p, &gen, 8);
  std::memcpy(p + 8, &sector, 8);
  for (size_t i = 16; i < 512; ++i) p[i] = static_cast<std::byte>((sector * 131 + gen * 31 + i * 7) & 0xff);
}

// 0 for a never-written (zero) sector, the generation for a whole valid
// sector, UINT64_MAX for anything else.
uint64_t sector_generation(const std::byte* p, uint64_t sector) {
  bool zero = true;
  for (size_t i = 0; i < 512 && zero; ++i) zero = p[i] == std::byte{0};
  if (zero) return 0;
  uint64_t gen = 0, s = 0;
  std::memcpy(&gen, p, 8);
  std::memcpy(&s, p + 8, 8);
  if (s != sector || gen == 0) return UINT64_MAX;
  std::byte expect[512];
  fill_sector(expect, sector, gen);
  return std::memcmp(expect, p, 512) == 0 ? gen : UINT64_MAX;
}

// One generation's record, sent after its flush was acknowledged.
struct Report {
  uint64_t gen;
  uint32_t count;
  uint32_t blocks[kPerGeneration];
};

// The child: backend + guest; writes generation after generation until
// killed. Never returns.
[[noreturn]] void child_main(const std::string& path, int report_fd, uint64_t gen_base) {
  auto host = sim::SimQueueHost::create({.guest = kGuest, .guest_pages = 4096, .reactor_name = "blk-kill9"});
  RawImage::Options io;
  auto img = RawImage::open(path, io);
  if (!host || !img) _exit(10);
  sim::SimQueueHost& h = **host;
  SimBlkfront::Options fo;
  fo.persistent = true;
  auto f = SimBlkfront::create(h.guest(), h.guest_evtchn(), fo);
  if (!f) _exit(13);
  VbdQueue::Config c = sim::vbd_queue_config(**f, kGuest);
  c.limits.sectors = kImageBytes / 512;
  c.limits.align_sectors = std::max((*img)->info().logical_block_size, (*img)->info().memory_align) / 512;
  c.limits.features = kBlkFeatureFlush | kBlkFeatureBarrier;
  VbdQueueStats stats;
  std::unique_ptr<VbdQueue> q;
  h.reactor().call([&] {
    auto s = VbdQueue::start(h.worker(), **img, c, stats);
    if (s) q = std::move(*s);
  });
  if (!q) _exit(14);

  std::mt19937_64 rng(static_cast<uint64_t>(::getpid()));
  std::vector<std::byte> buf(static_cast<size_t>(kPerGeneration) * kBlock);
  for (uint64_t gen = gen_base + 1;; ++gen) {
    Report rep{};
    rep.gen = gen;
    rep.count = kPerGeneration;
    std::vector<SimBlkfront::Io> ios(kPerGeneration + 1);
    for (unsigned i = 0; i < kPerGeneration; ++i) {
      // Distinct blocks within a generation: one write per block and batch.
      uint32_t b;
      bool dup;
      do {
        b = static_cast<uint32_t>(rng() % kBlocks);
        dup = false;
        for (unsigned j = 0; j < i; ++j) dup |= rep.blocks[j] == b;
      } while (dup);
      rep.blocks[i] = b;
      std::byte* p = buf.data() + static_cast<size_t>(i) * kBlock;
      for (unsigned s = 0; s < kBlock / 512; ++s) fill_sector(p + s * 512, uint64_t{b} * 8 + s, gen);
      ios[i].op = BLKIF_OP_WRITE;
      ios[i].sector = uint64_t{b} * 8;
      ios[i].sectors = 8;
      ios[i].data = p;
    }
    if (!(*f)->run(std::span(ios.data(), kPerGeneration), std::chrono::seconds(20))) _exit(20);
    for (unsigned i = 0; i < kPerGeneration; ++i) {
      if (ios[i].status != BLKIF_RSP_OKAY) _exit(21);
    }
    ios[kPerGeneration].op = BLKIF_OP_FLUSH_DISKCACHE;
    if (!(*f)->run(std::span(ios.data() + kPerGeneration, 1), std::chrono::seconds(20))) _exit(22);
    if (ios[kPerGeneration].status != BLKIF_RSP_OKAY) _exit(23);
    // Acknowledged and flushed: only now does the parent learn of it.
    if (::write(report_fd, &rep, sizeof rep) != static_cast<ssize_t>(sizeof rep)) _exit(24);
  }
}

TEST(BlkDurability, AcknowledgedFlushedWritesSurviveKill9) {
  TempFile file(kImageBytes);
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  // Generations only grow, across rounds too (each child starts above the
  // last), and a block's flushed generation carries over to later rounds.
  std::map<uint32_t, uint64_t> flushed;  // block -> last flushed generation
  for (int round = 0; round < 3; ++round) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      child_main(file.path, fds[1], static_cast<uint64_t>(round) * 1000000);
    }
    ::close(fds[1]);
    // Collect a few generations, then kill at an arbitrary moment of the
    // next one (its writes or its flush are in flight).
    const int want = 3 + static_cast<int>(rng() % 4);
    int got = 0;
    Report rep;
    while (got < want) {
      const ssize_t n = ::read(fds[0], &rep, sizeof rep);
      if (n != static_cast<ssize_t>(sizeof rep)) break;
      for (uint32_t i = 0; i < rep.count; ++i) flushed[rep.blocks[i]] = rep.gen;
      ++got;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    ::kill(pid, SIGKILL);
    // Reports that were already in the pipe when the kill landed count too.
    while (::read(fds[0], &rep, sizeof rep) == static_cast<ssize_t>(sizeof rep)) {
      for (uint32_t i = 0; i < rep.count; ++i) flushed[rep.blocks[i]] = rep.gen;
    }
    ::close(fds[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the child stopped by itself (exit " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1) << ")";
    ASSERT_EQ(got, want);

    // Every flushed block holds its flushed generation or a later one,
    // whole, sector by sector; nothing anywhere is torn or misplaced.
    const auto image = file.read(0, kImageBytes);
    uint64_t checked = 0;
    for (uint64_t b = 0; b < kBlocks; ++b) {
      auto it = flushed.find(static_cast<uint32_t>(b));
      const uint64_t min_gen = it == flushed.end() ? 0 : it->second;
      for (unsigned s = 0; s < kBlock / 512; ++s) {
        const uint64_t sector = b * 8 + s;
        const uint64_t gen = sector_generation(image.data() + sector * 512, sector);
        ASSERT_NE(gen, UINT64_MAX) << "round " << round << ": sector " << sector << " is torn or foreign";
        ASSERT_GE(gen, min_gen) << "round " << round << ": sector " << sector << " lost its flushed write";
      }
      checked += it != flushed.end();
    }
    EXPECT_GE(checked, uint64_t{kPerGeneration} * 3 * (round + 1) / 2);
  }
}

}  // namespace
}  // namespace xenpath
