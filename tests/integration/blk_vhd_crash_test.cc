// kill -9 during allocating writes: `xenpath-sim blkback --image vhd:...`
// (the production daemon and a simulated guest doing verified random writes
// with a flush every 64, in one process) is SIGKILLed at a random moment
// while it still allocates blocks. Afterwards the image must open for the
// datapath (a valid footer at the end, a consistent BAT), qemu-img must read
// it, xenpath-img check must pass (when built), and every write the guest
// saw acknowledged before its last acknowledged flush (the sim's journal)
// must be there: every sector of such a block holds that write or a later
// one, whole; and no allocated sector anywhere is torn or foreign.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "blkback/image_vhd.h"
#include "sim/blk/sim_blkload.h"
#include "tests/fixtures/image_rig.h"
#include "tests/fixtures/vhd_files.h"

#ifndef XENPATH_SIM_BINARY
#define XENPATH_SIM_BINARY ""
#endif

namespace xenpath {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kDisk = 4ull << 30;  // 2048 blocks: allocation goes on for a while
constexpr uint32_t kVbd = 51712;        // xvda: the sim's verify pattern is keyed by the devid

struct Journal {
  std::map<uint64_t, uint32_t> flushed;  // block -> generation of its last write covered by a flush
  unsigned flushes = 0;
};

Journal read_journal(const std::string& path, uint32_t* lines = nullptr) {
  Journal j;
  std::ifstream in(path);
  std::string line;
  std::vector<std::pair<uint64_t, uint32_t>> pending;
  uint32_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line == "F") {
      for (auto& [b, g] : pending) j.flushed[b] = g;
      pending.clear();
      ++j.flushes;
    } else if (line.size() > 2 && line[0] == 'W') {
      std::istringstream ls(line.substr(2));
      uint64_t b = 0;
      uint32_t g = 0;
      if (ls >> b >> g) pending.emplace_back(b, g);
    }
    // A torn last line (the kill) is ignored: it is after the last "F".
  }
  if (lines != nullptr) *lines = n;
  return j;
}

// Reads [off, off+len) of the image through the datapath.
std::vector<std::byte> read_image(test::ImageRig& rig, uint64_t off, size_t len) {
  test::AlignedBuffer buf(len);
  iovec v{buf.p, len};
  test::WaitOp op;
  op.prep_read(&v, 1, off);
  EXPECT_EQ(rig.run(op), 0) << off;
  std::vector<std::byte> out(len);
  std::memcpy(out.data(), buf.p, len);
  return out;
}

class BlkVhdCrash : public ::testing::TestWithParam<int> {};

TEST_P(BlkVhdCrash, KilledDuringAllocatingWritesKeepsFlushedData) {
  const std::string sim = XENPATH_SIM_BINARY;
  if (sim.empty() || ::access(sim.c_str(), X_OK) != 0) GTEST_SKIP() << "xenpath-sim not built";
  const int variant = GetParam();
  std::mt19937_64 rng(static_cast<uint64_t>(variant) * 7919 + static_cast<uint64_t>(::getpid()));
  test::TempDir dir;
  const std::string leaf = dir / "leaf.vhd";
  {
    VhdCreateOptions c;
    c.size = kDisk;
    if (variant % 2 == 1) {
      // A differencing leaf over an (empty) base.
      c.type = vhd::DiskType::kDynamic;
      ASSERT_TRUE(vhd_ok(vhd_create(dir / "base.vhd", c)));
      c.type = vhd::DiskType::kDifferencing;
      c.size = 0;
      c.parent = dir / "base.vhd";
    }
    const VhdStatus st = vhd_create(leaf, c);
    ASSERT_TRUE(vhd_ok(st)) << st.message;
  }
  const uint32_t block_sizes[] = {4096, 8192, 65536};
  const uint32_t bs = block_sizes[rng() % 3];
  const std::string journal = dir / "journal";
  const std::string log = dir / "sim.log";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string image = "vhd:" + leaf;
    const std::string bss = std::to_string(bs);
    const std::string kids = dir / "kids";
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    ::execl(sim.c_str(), sim.c_str(), "blkback", "--image", image.c_str(), "--guests", "1", "--seconds", "120",
            "--block-size", bss.c_str(), "--queue-depth", "16", "--read-percent", "20", "--journal", journal.c_str(),
            "--image-dir", kids.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Kill it after a random number of acknowledged flushes (allocation is
  // still going on then: 2048 blocks), plus a random few milliseconds.
  const unsigned want_flushes = 1 + static_cast<unsigned>(rng() % 12);
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (read_journal(journal).flushes < want_flushes && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(2ms);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the sim ended on its own: " << test::run_command("tail -20 " + log).out;
  const Journal j = read_journal(journal);
  ASSERT_GE(j.flushes, want_flushes) << test::run_command("tail -20 " + log).out;

  // Opens for the datapath (read-only here, then writable below).
  VhdImage::Options ro;
  ro.read_only = true;
  std::string why;
  auto opened = VhdImage::open(leaf, ro, &why);
  ASSERT_TRUE(opened) << why;
  std::unique_ptr<VhdImage> img = std::move(*opened);
  const VhdLevel& l = img->chain().leaf();
  EXPECT_GT(l.allocated_blocks, 0u);
  EXPECT_LT(l.allocated_blocks, kDisk / l.layout.block_size) << "killed after allocation was over";
  // The oracles read it.
  if (test::have_tool("qemu-img")) {
    const auto info = test::run_command("qemu-img info -f vpc " + test::shell_quote(leaf));
    EXPECT_EQ(info.status, 0) << info.out;
  }
  const std::string xenpath_img = sim.substr(0, sim.rfind('/') + 1) + "xenpath-img";
  if (::access(xenpath_img.c_str(), X_OK) == 0) {
    const auto check = test::run_command(xenpath_img + " check " + test::shell_quote(leaf));
    EXPECT_EQ(check.status, 0) << check.out;
  }

  test::ImageRig rig(*img);
  // Every flushed write is there (or a later one), whole.
  uint64_t checked = 0;
  for (const auto& [block, gen] : j.flushed) {
    const uint64_t off = block * bs;
    const auto data = read_image(rig, off, bs);
    for (uint32_t s = 0; s < bs / 512; ++s) {
      const uint32_t found = sim::blk_pattern_sector(data.data() + size_t{s} * 512, kVbd, off / 512 + s);
      ASSERT_NE(found, UINT32_MAX) << "block " << block << " sector " << s << ": torn or foreign";
      ASSERT_GE(found, gen) << "block " << block << " sector " << s << ": lost a flushed write (generation " << gen
                            << ", found " << found << ")";
    }
    ++checked;
  }
  EXPECT_GT(checked, 0u);
  // Whatever else was allocated holds whole sectors of some write, or zeros.
  for (uint32_t b = 0; b < l.bat.size(); ++b) {
    if (l.bat[b] == vhd::kBatUnused) continue;
    const uint64_t off = uint64_t{b} * l.layout.block_size;
    const auto data = read_image(rig, off, l.layout.block_size);
    for (uint32_t s = 0; s < l.layout.block_size / 512; ++s) {
      ASSERT_NE(sim::blk_pattern_sector(data.data() + size_t{s} * 512, kVbd, off / 512 + s), UINT32_MAX)
          << "VHD block " << b << " sector " << s;
    }
  }
  rig.reactor->call([&] { rig.channel.reset(); });
  img.reset();

  // And it takes writes again (allocation after what the crash left).
  auto rw = VhdImage::open(leaf, {}, &why);
  ASSERT_TRUE(rw) << why;
  test::ImageRig wrig(**rw);
  test::AlignedBuffer buf(8192);
  buf.pattern(3);
  iovec v{buf.p, buf.size};
  test::WaitOp w;
  w.prep_write(&v, 1, kDisk - 8192);
  EXPECT_EQ(wrig.run(w), 0);
  test::AlignedBuffer back(8192);
  iovec r{back.p, back.size};
  w.prep_read(&r, 1, kDisk - 8192);
  EXPECT_EQ(wrig.run(w), 0);
  EXPECT_EQ(std::memcmp(buf.p, back.p, buf.size), 0);
}

INSTANTIATE_TEST_SUITE_P(Runs, BlkVhdCrash, ::testing::Range(0, 6));

// `xenpath-sim blkback --image PATH --read-only` prints the SHA-256 of what
// the guest read; for an image qemu-img made and qemu-io wrote it is the
// SHA-256 of `qemu-img convert -O raw`.
TEST(BlkVhdSim, ReadOnlyChecksumMatchesQemu) {
  const std::string sim = XENPATH_SIM_BINARY;
  if (sim.empty() || ::access(sim.c_str(), X_OK) != 0) GTEST_SKIP() << "xenpath-sim not built";
  if (!test::have_tool("qemu-img") || !test::have_tool("qemu-io") || !test::have_tool("sha256sum")) {
    GTEST_SKIP() << "qemu-utils not installed";
  }
  test::TempDir dir;
  const std::string img = dir / "q.vhd";
  const std::string raw = dir / "q.raw";
  auto q = [](const std::string& p) { return test::shell_quote(p); };
  ASSERT_EQ(test::run_command("qemu-img create -q -f vpc -o subformat=dynamic " + q(img) + " 48M").status, 0);
  ASSERT_EQ(test::run_command("qemu-io -f vpc -c 'write -P 0x5c 1M 3M' -c 'write -P 0xe1 40M 4k' " + q(img)).status, 0);
  ASSERT_EQ(test::run_command("qemu-img convert -f vpc -O raw " + q(img) + " " + q(raw)).status, 0);
  const auto want = test::run_command("sha256sum " + q(raw));
  ASSERT_EQ(want.status, 0);
  const auto got = test::run_command(q(sim) + " blkback --image " + q(img) + " --read-only --guests 1");
  ASSERT_EQ(got.status, 0) << got.out;
  const size_t at = got.out.find("sha256 ");
  ASSERT_NE(at, std::string::npos) << got.out;
  EXPECT_EQ(got.out.substr(at + 7, 64), want.out.substr(0, 64));
}

}  // namespace
}  // namespace xenpath
