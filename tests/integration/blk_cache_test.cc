// The shared read cache wired into the VHD datapath (docs/cache.md):
//   - ten guests, each on its own differencing child of one base VHD, read
//     the whole disk at the same time through the production backend on the
//     simulated host: every byte is the base's (SHA-256 against the raw
//     file qemu-img converted), and the base file is read from disk once per
//     cache block (the cache's fills, and /proc/self/io read_bytes);
//   - requests that mix leaf (uncached) and base (cached) pieces complete
//     once with the right bytes, and the channel's in-flight count is 0
//     only after every piece;
//   - a base file changed underneath is detected when it is opened again:
//     its entries are dropped and the old image's reads go around the cache;
//   - the sim's verify load over children of a written base, through the
//     cache, sees no wrong bytes, and the daemon's stats file carries the
//     cache's counters.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "blkback/blk_service.h"
#include "blkback/image_vhd.h"
#include "blkback/vhd_file.h"
#include "cache/block_cache.h"
#include "common/proc_io.h"
#include "sim/blk/blk_demo.h"
#include "sim/blk/sim_blkdigest.h"
#include "sim/blk/sim_blkhost.h"
#include "tests/fixtures/ctl_run.h"
#include "tests/fixtures/eventually.h"
#include "tests/fixtures/image_rig.h"
#include "tests/fixtures/vhd_files.h"

#ifndef XENPATH_SIM_BINARY
#define XENPATH_SIM_BINARY ""
#endif

namespace xenpath {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint32_t kCacheBlock = 64 << 10;

// A raw file of random bytes and the dynamic VHD qemu-img makes of it
// (the same virtual size: force_size). Returns the raw file's SHA-256.
std::string make_base(const test::TempDir& dir, uint64_t bytes, uint64_t seed) {
  const std::string raw = dir / "base.raw";
  {
    std::mt19937_64 rng(seed);
    std::vector<uint64_t> buf(bytes / 8);
    for (auto& w : buf) w = rng();
    std::ofstream f(raw, std::ios::binary);
    f.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(bytes));
  }
  const auto conv = test::run_command("qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on " +
                                      test::shell_quote(raw) + " " + test::shell_quote(dir / "base.vhd"));
  EXPECT_EQ(conv.status, 0) << conv.out;
  const auto sum = test::run_command("sha256sum " + test::shell_quote(raw));
  EXPECT_EQ(sum.status, 0) << sum.out;
  return sum.out.substr(0, 64);
}

void make_child(const std::string& path, const std::string& parent) {
  VhdCreateOptions c;
  c.type = vhd::DiskType::kDifferencing;
  c.parent = parent;
  c.overwrite = true;
  const VhdStatus st = vhd_create(path, c);
  ASSERT_TRUE(vhd_ok(st)) << st.message;
}

// The cache blocks (file offset / kCacheBlock) that hold the base's data:
// what reading the whole disk must fill, each once.
std::set<uint64_t> data_blocks(const std::string& base) {
  std::set<uint64_t> out;
  VhdOpenOptions o;
  o.read_only = true;
  auto chain = vhd_open_chain(base, o);
  EXPECT_TRUE(chain.has_value());
  if (!chain) return out;
  const VhdLevel& l = chain->leaf();
  for (uint32_t entry : l.bat) {
    if (entry == vhd::kBatUnused) continue;
    const uint64_t from = l.layout.data_offset(entry);
    const uint64_t to = from + l.layout.block_size;
    for (uint64_t b = from / kCacheBlock; b * kCacheBlock < to; ++b) out.insert(b);
  }
  return out;
}

TEST(BlkCache, TenGuestsOnChildrenReadTheBaseFromDiskOnce) {
  XP_REQUIRE_TOOL("qemu-img");
  constexpr unsigned kGuests = 10;
  constexpr uint64_t kDisk = 32 * kMiB;
  test::TempDir dir;
  const std::string want = make_base(dir, kDisk, 12);
  const std::string base = dir / "base.vhd";
  for (unsigned g = 0; g < kGuests; ++g) make_child(dir / ("child" + std::to_string(g) + ".vhd"), base);
  const std::set<uint64_t> blocks = data_blocks(base);
  ASSERT_GT(blocks.size(), kDisk / kCacheBlock - 1);

  sim::SimBlkHost::Options ho;
  ho.workers = 2;
  ho.vbd.cache_mib = 64;
  ho.vbd.cache_block_kib = kCacheBlock >> 10;
  auto host = sim::SimBlkHost::create(ho);
  ASSERT_TRUE(host.has_value()) << error_string(host.error());
  BlockCache* cache = (*host)->service().cache();
  ASSERT_NE(cache, nullptr);

  std::vector<sim::SimBlkHost::Disk*> disks;
  for (unsigned g = 0; g < kGuests; ++g) {
    auto ev = (*host)->open_guest_event_channel();
    ASSERT_TRUE(ev.has_value());
    sim::SimBlkHost::FrontOptions fo;
    fo.queues = 1;
    auto d = (*host)->attach(51712 + 16 * g, "vhd:" + (dir / ("child" + std::to_string(g) + ".vhd")), fo, **ev);
    ASSERT_TRUE(d.has_value()) << error_string(d.error());
    ASSERT_EQ((*d)->bytes, kDisk);
    disks.push_back(*d);
  }
  const uint64_t io_before = proc_self_read_bytes();
  std::vector<std::string> sums(kGuests);
  std::vector<std::thread> guests;
  for (unsigned g = 0; g < kGuests; ++g) {
    guests.emplace_back([&, g] {
      auto d = sim::blk_read_digest(*disks[g]->queues[0], disks[g]->bytes, 32768, 8);
      sums[g] = d ? d->sha256 : "error " + error_string(d.error());
    });
  }
  for (auto& t : guests) t.join();
  const uint64_t io_read = proc_self_read_bytes() - io_before;
  for (unsigned g = 0; g < kGuests; ++g) EXPECT_EQ(sums[g], want) << "guest " << g;

  const CacheCounters c = cache->counters();
  // One fill per cache block of the base's data, whatever the interleaving;
  // every other piece was a hit or joined a fill in flight.
  EXPECT_EQ(c.fills, blocks.size());
  EXPECT_EQ(c.misses, blocks.size());
  // Whole cache blocks, but the last one stops at the end of the file.
  const auto file_size = static_cast<uint64_t>(std::filesystem::file_size(base));
  uint64_t fill_bytes = 0;
  for (uint64_t b : blocks) fill_bytes += std::min<uint64_t>(kCacheBlock, file_size - b * kCacheBlock);
  EXPECT_EQ(c.bytes_from_disk, fill_bytes);
  EXPECT_EQ(c.fill_errors, 0u);
  EXPECT_EQ(c.bypasses, 0u);
  EXPECT_LE(c.bytes_from_memory, kGuests * kDisk);
  auto images = cache->images();
  ASSERT_EQ(images.size(), 1u);  // the base, once, for ten VBDs
  EXPECT_EQ(images[0]->counters().fills, blocks.size());
  // The disk's own count (ext4 counts O_DIRECT reads): the base once, plus
  // the children's and the base's bitmaps (a sector per 2 MiB block per VBD).
  std::printf("base %llu bytes, %zu cache blocks filled (%llu bytes), joins %llu, hits %llu; read_bytes %llu\n",
              static_cast<unsigned long long>(file_size), blocks.size(),
              static_cast<unsigned long long>(c.bytes_from_disk), static_cast<unsigned long long>(c.joins),
              static_cast<unsigned long long>(c.hits), static_cast<unsigned long long>(io_read));
  if (io_read == 0) {
    GTEST_LOG_(INFO) << "/proc/self/io read_bytes does not count this file system's reads";
  } else {
    EXPECT_GE(io_read, c.bytes_from_disk);
    EXPECT_LE(io_read, c.bytes_from_disk + kGuests * (kDisk / (2 * kMiB)) * 4096 + kMiB)
        << "the base was read from disk more than once";
  }
}

// The image layer directly: a base with data, a child with a few sectors
// of its own; reads mixing the child's (uncached) and the base's (cached)
// pieces, and the base changed underneath.
TEST(BlkCache, MixedPiecesCompleteOnceAndAChangedBaseIsDropped) {
  XP_REQUIRE_TOOL("qemu-img");
  constexpr uint64_t kDisk = 8 * kMiB;
  test::TempDir dir;
  (void)make_base(dir, kDisk, 34);
  const std::string base = dir / "base.vhd";
  make_child(dir / "child.vhd", base);
  BlockCache::Options co;
  co.budget_bytes = 16 * kMiB;
  co.block_size = kCacheBlock;
  auto cache = BlockCache::create(co);
  ASSERT_TRUE(cache.has_value());

  // The raw truth to compare with.
  std::vector<char> raw(kDisk);
  {
    std::ifstream f(dir / "base.raw", std::ios::binary);
    f.read(raw.data(), static_cast<std::streamsize>(kDisk));
  }
  VhdImage::Options o;
  o.cache = cache->get();
  auto child = VhdImage::open(dir / "child.vhd", o);
  ASSERT_TRUE(child.has_value());
  EXPECT_EQ((*child)->cache_image(0), nullptr) << "the writable leaf is never cached";
  ASSERT_NE((*child)->cache_image(1), nullptr);
  {
    test::ImageRig rig(**child);
    // Sectors of the leaf every 96 KiB: reads below alternate leaf and base.
    for (uint64_t off = 0; off < kDisk; off += 96 << 10) {
      test::AlignedBuffer w(4096);
      w.pattern(static_cast<uint32_t>(off));
      iovec v{w.p, w.size};
      test::WaitOp op;
      op.prep_write(&v, 1, off);
      ASSERT_EQ(rig.run(op), 0);
      std::memcpy(raw.data() + off, w.p, w.size);
    }
    for (int pass = 0; pass < 2; ++pass) {
      // Odd sizes and offsets: pieces straddle cache blocks and levels.
      std::mt19937_64 rng(static_cast<uint64_t>(pass) + 5);
      for (int i = 0; i < 200; ++i) {
        const uint64_t len = (1 + rng() % 512) * 512;
        const uint64_t off = (rng() % ((kDisk - len) / 512)) * 512;
        test::AlignedBuffer r(len);
        iovec v[3] = {{r.p, 512}, {r.p + 512, len > 1024 ? len - 1024 : 0}, {r.p + len - 512, 512}};
        test::WaitOp op;
        if (len > 1024) {
          op.prep_read(v, 3, off);
        } else {
          op.prep_read(v, 1, off);
          v[0].iov_len = len;
        }
        ASSERT_EQ(rig.run(op), 0);
        ASSERT_EQ(op.calls(), 1);
        ASSERT_EQ(std::memcmp(r.p, raw.data() + off, len), 0) << "read " << len << " at " << off;
        EXPECT_EQ(rig.stats().in_flight, 0u);
      }
    }
    const CacheCounters c1 = (*cache)->counters();
    EXPECT_GT(c1.hits, 0u);
    EXPECT_GT(c1.fills, 0u);
    const VhdChannelStats& vs = VhdImage::channel_stats(*rig.channel);
    EXPECT_EQ(vs.cache_fills, c1.fills);
    EXPECT_EQ(vs.cache_fallbacks, 0u);

    // The base changes underneath (rewritten in place: same inode, new
    // mtime). A second open of it sees that: the old entries go, the old
    // image's reads bypass the cache (and so read what the file holds now).
    const auto entries_before = (*cache)->gauges();
    EXPECT_GT(entries_before.small + entries_before.main, 0u);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto io = test::run_command("qemu-io -f vpc -c 'write -P 0x5a 0 1M' " + test::shell_quote(base));
    ASSERT_EQ(io.status, 0) << io.out;
    VhdImage::Options ro;
    ro.read_only = true;
    ro.cache = cache->get();
    auto again = VhdImage::open(base, ro);
    ASSERT_TRUE(again.has_value());
    EXPECT_TRUE((*child)->cache_image(1)->retired());
    const auto entries_after = (*cache)->gauges();
    EXPECT_EQ(entries_after.small + entries_after.main, 0u) << "the changed base's entries were not dropped";
    // 96 KiB .. 192 KiB is base data (below the leaf sectors at 96 KiB and 192 KiB).
    test::AlignedBuffer r(64 << 10);
    iovec v{r.p, r.size};
    test::WaitOp op;
    op.prep_read(&v, 1, (96 << 10) + 4096);
    ASSERT_EQ(rig.run(op), 0);
    for (size_t i = 0; i < r.size; ++i) ASSERT_EQ(static_cast<uint8_t>(r.p[i]), 0x5a) << i;
    EXPECT_GT(vs.cache_bypasses, 0u);
  }
}

// `xenpath-sim blkback --image` with four writing guests (a differencing
// child each) over a written base, through the cache: the verify load
// finds nothing wrong, and the stats file shows the cache at work.
TEST(BlkCache, SimVerifyLoadThroughTheCache) {
  XP_REQUIRE_TOOL("qemu-img");
  const std::string sim = XENPATH_SIM_BINARY;
  if (sim.empty() || ::access(sim.c_str(), X_OK) != 0) GTEST_SKIP() << "xenpath-sim not built";
  test::TempDir dir;
  (void)make_base(dir, 16 * kMiB, 56);
  const std::string stats = dir / "stats.json";
  const auto run = test::run_command(sim + " blkback --image vhd:" + test::shell_quote(dir / "base.vhd") +
                                     " --guests 4 --seconds 3 --read-percent 80 --block-size 16384 --cache-mib 16" +
                                     " --image-dir " + test::shell_quote(dir / "kids") + " --stats-file " +
                                     test::shell_quote(stats));
  ASSERT_EQ(run.status, 0) << run.out;
  std::ifstream f(stats);
  ASSERT_TRUE(f.good()) << run.out;
  const auto j = nlohmann::json::parse(f);
  const auto& c = j.at("cache");
  EXPECT_TRUE(c.at("enabled").get<bool>());
  EXPECT_GT(c.at("fills").get<uint64_t>(), 0u) << c.dump();
  EXPECT_GT(c.at("hits").get<uint64_t>() + c.at("joins").get<uint64_t>(), 0u) << c.dump();
  EXPECT_EQ(c.at("fill_errors").get<uint64_t>(), 0u);
  EXPECT_TRUE(c.at("images").is_array());  // the final document: the devices (and their images) are gone
}

// The operator's cache commands over the simulated host: three guests on
// VHD children of one written base, the verify load reading (and checking)
// through the shared cache while `xenpath-ctl cache stats|drop` and
// `set DEV cache=off|on` run against the daemon. A drop empties the cache
// under the load (which still finds no wrong byte: the run's self-check)
// and it fills again; a VBD switched off stops using the cache while the
// others go on, and uses it again when switched on; once every VBD is off
// and in-flight pieces are done, the per-VBD counters add up exactly to the
// cache's global ones.
TEST(BlkCache, CtlCacheStatsDropAndPerVbdSwitchOverTheSim) {
  using namespace std::chrono_literals;
  using test::eventually;
  XP_REQUIRE_TOOL("qemu-img");
  test::TempDir dir;
  (void)make_base(dir, 16 * kMiB, 77);
  const std::string socket = dir / "bb.sock";
  DaemonCli cli = BlkbackService::cli_defaults();
  cli.log_level = "warn";
  cli.daemon.workers = 2;
  cli.ctl_socket = socket;
  finish_daemon_cli(cli);
  sim::BlkDemoOptions opt;
  opt.run.guests = 3;
  opt.run.seconds = 25;
  opt.image = "vhd:" + (dir / "base.vhd");
  opt.image_dir = dir / "kids";
  opt.queue_depth = 8;
  opt.block_size = 16384;
  opt.read_percent = 90;
  VbdOptions vbd;
  vbd.cache_mib = 8;  // half the base: evictions too
  vbd.cache_block_kib = 64;
  int rc = -1;
  std::thread demo([&] { rc = sim::run_blkback_demo(cli, vbd, opt); });

  auto cache_stats = [&]() -> nlohmann::json {
    auto [st, text] = test::run_ctl(socket, {"--json", "cache", "stats"});
    if (st != 0) return {};
    return nlohmann::json::parse(text, nullptr, false);
  };
  auto vbd_of = [](const nlohmann::json& c, const std::string& dev) -> nlohmann::json {
    for (const auto& v : c.value("vbds", nlohmann::json::array())) {
      if (v.value("device", std::string()) == dev) return v;
    }
    return {};
  };
  auto used = [](const nlohmann::json& v) {
    return v.value("hits", uint64_t{0}) + v.value("misses", uint64_t{0}) + v.value("joins", uint64_t{0}) +
           v.value("bypasses", uint64_t{0});
  };
  nlohmann::json c;
  ASSERT_TRUE(eventually(
      [&] {
        c = cache_stats();
        return c.is_object() && c.value("vbds", nlohmann::json::array()).size() == 3 && c.value("fills", 0) > 20 &&
               c.value("hits", 0) > 20;
      },
      20s))
      << c.dump(2);
  EXPECT_TRUE(c.value("enabled", false));
  ASSERT_EQ(c["images"].size(), 1u) << c.dump(2);
  const auto image_id = c["images"][0].value("id", 0u);
  // The human table names the image and the three VBDs.
  auto [st, table] = test::run_ctl(socket, {"cache", "stats"});
  EXPECT_EQ(st, 0) << table;
  EXPECT_NE(table.find("image " + std::to_string(image_id)), std::string::npos) << table;
  EXPECT_NE(table.find("vbd/3/51712"), std::string::npos) << table;

  // Drop everything: the resident blocks go (pinned and filling ones when
  // released), and the load fills them again.
  const uint64_t fills_before = c.value("fills", uint64_t{0});
  auto [dst, dropped] = test::run_ctl(socket, {"--json", "cache", "drop"});
  ASSERT_EQ(dst, 0) << dropped;
  EXPECT_GT(nlohmann::json::parse(dropped).value("dropped", 0), 0) << dropped;
  ASSERT_TRUE(eventually(
      [&] {
        c = cache_stats();
        return c.is_object() && c.value("fills", uint64_t{0}) > fills_before + 20;
      },
      15s))
      << c.dump(2);
  // By path (the base's, as the operator knows it) and by id; an unknown
  // image is refused with exit 1.
  auto [pst, by_path] = test::run_ctl(socket, {"--json", "cache", "drop", dir / "base.vhd"});
  EXPECT_EQ(pst, 0) << by_path;
  EXPECT_EQ(nlohmann::json::parse(by_path, nullptr, false).value("images", nlohmann::json::array()),
            nlohmann::json::array({image_id}))
      << by_path;
  EXPECT_EQ(test::run_ctl(socket, {"cache", "drop", std::to_string(image_id)}).first, 0);
  EXPECT_EQ(test::run_ctl(socket, {"cache", "drop", "4000000"}).first, 1);
  EXPECT_EQ(test::run_ctl(socket, {"cache", "drop", dir / "absent.vhd"}).first, 1);
  EXPECT_EQ(test::run_ctl(socket, {"set", "vbd/1/51712", "cache=maybe"}).first, 1);

  // Guest 1's VBD off: its counters stop while guest 2's go on.
  auto [ost, off] = test::run_ctl(socket, {"set", "vbd/1/51712", "cache=off"});
  ASSERT_EQ(ost, 0) << off;
  EXPECT_NE(off.find("go around"), std::string::npos) << off;
  std::this_thread::sleep_for(300ms);  // pieces already in the cache finish
  const nlohmann::json a = cache_stats();
  EXPECT_FALSE(vbd_of(a, "vbd/1/51712").value("enabled", true)) << a.dump(2);
  std::this_thread::sleep_for(1500ms);
  const nlohmann::json b = cache_stats();
  EXPECT_EQ(used(vbd_of(b, "vbd/1/51712")), used(vbd_of(a, "vbd/1/51712"))) << a.dump(2) << b.dump(2);
  EXPECT_GT(used(vbd_of(b, "vbd/2/51712")), used(vbd_of(a, "vbd/2/51712"))) << a.dump(2) << b.dump(2);
  // On again: it uses the cache again.
  ASSERT_EQ(test::run_ctl(socket, {"set", "vbd/1/51712", "cache=on"}).first, 0);
  ASSERT_TRUE(
      eventually([&] { return used(vbd_of(cache_stats(), "vbd/1/51712")) > used(vbd_of(b, "vbd/1/51712")); }, 10s));

  // Everyone off, in-flight pieces done: the VBDs' shares are the whole.
  for (const char* d : {"vbd/1/51712", "vbd/2/51712", "vbd/3/51712"}) {
    ASSERT_EQ(test::run_ctl(socket, {"set", d, "cache=off"}).first, 0);
  }
  nlohmann::json fin;
  ASSERT_TRUE(eventually(
      [&] {
        const nlohmann::json x = cache_stats();
        std::this_thread::sleep_for(200ms);
        fin = cache_stats();
        return x.is_object() && x == fin && fin.value("filling", 1) == 0;
      },
      10s))
      << fin.dump(2);
  for (const char* k :
       {"hits", "misses", "joins", "bypasses", "fills", "fill_errors", "bytes_from_memory", "bytes_from_disk"}) {
    uint64_t sum = 0;
    for (const auto& v : fin["vbds"]) sum += v.value(k, uint64_t{0});
    EXPECT_EQ(sum, fin.value(k, uint64_t{0})) << k << "\n" << fin.dump(2);
  }
  EXPECT_GT(fin.value("bytes_from_memory", uint64_t{0}), 0u);

  demo.join();
  EXPECT_EQ(rc, 0) << "the verify load found a wrong byte, or the run failed";
}

}  // namespace
}  // namespace xenpath
