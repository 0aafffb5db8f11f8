// xenpath-bootstorm: one boot storm on the simulated host (perf/boot_storm.sh
// runs it per mode and guest count). N guests, each on its own differencing
// VHD child of one base image, replay the same boot-like I/O pattern (a fio
// iolog: "fio version 2 iolog" lines "<file> read|write <offset> <length>",
// or version 3 with a leading timestamp; other actions are ignored), all
// released at once; the production backend (BlkbackService) serves them in
// this process, so /proc/self/io is the daemon's.
//
// Modes: nocache (every level O_DIRECT, no shared cache), pagecache (every
// level buffered: dom0's page cache is the only cache, as tapdisk3's read
// caching; the caller drops the page cache first), cache (O_DIRECT and the
// shared cache, cold).
//
// `--make-pattern FILE` writes the default pattern instead: sequential runs
// of 4-128 KiB reads over a subset of the base (the boot set), 10 % random
// 4 KiB reads anywhere in the base, 2 % 4 KiB writes.
//
// Threads: main (setup, report) and one thread per guest (its ring).
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "blkback/vhd_file.h"
#include "cache/block_cache.h"
#include "common/log.h"
#include "common/proc_io.h"
#include "sim/blk/sim_blkhost.h"

namespace xenpath {
namespace {

using Clock = std::chrono::steady_clock;

struct Record {
  bool write = false;
  uint64_t offset = 0;
  uint32_t length = 0;
};

Result<std::vector<Record>> load_pattern(const std::string& path) {
  std::ifstream f(path);
  if (!f) return unexpected(ENOENT);
  std::vector<Record> out;
  std::string line;
  bool v3 = false;
  if (std::getline(f, line)) v3 = line.find("version 3") != std::string::npos;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    std::string ts, file, action;
    if (v3) is >> ts;
    if (!(is >> file >> action)) continue;
    if (action != "read" && action != "write") continue;
    uint64_t off = 0, len = 0;
    if (!(is >> off >> len) || len == 0 || len > (4u << 20) || off % 512 != 0 || len % 512 != 0) continue;
    out.push_back(Record{action == "write", off, static_cast<uint32_t>(len)});
  }
  return out;
}

int make_pattern(const std::string& path, uint64_t base_bytes, uint64_t boot_bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::ofstream f(path);
  f << "fio version 2 iolog\n/dev/xvda add\n/dev/xvda open\n";
  // The boot set: extents of 256 KiB-4 MiB scattered over the base (files
  // of the root file system), each read front to back in 4-128 KiB requests.
  const uint64_t extents = base_bytes / (4u << 20);
  std::vector<uint64_t> order(extents);
  for (uint64_t i = 0; i < extents; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  uint64_t covered = 0;
  for (uint64_t e : order) {
    if (covered >= boot_bytes) break;
    const uint64_t len = std::min<uint64_t>((1 + rng() % 16) * (256u << 10), boot_bytes - covered);
    const uint64_t start = e * (4u << 20);
    for (uint64_t off = start; off < start + len;) {
      const uint64_t req = std::min<uint64_t>((1 + rng() % 32) * 4096, start + len - off);
      f << "/dev/xvda read " << off << " " << req << "\n";
      off += req;
      const unsigned r = static_cast<unsigned>(rng() % 100);
      if (r < 10) f << "/dev/xvda read " << (rng() % (base_bytes / 4096)) * 4096 << " 4096\n";
      if (r >= 98) f << "/dev/xvda write " << (rng() % (base_bytes / 4096)) * 4096 << " 4096\n";
    }
    covered += len;
  }
  f << "/dev/xvda close\n";
  return f.good() ? 0 : 1;
}

// Distinct bytes of the base the pattern reads (the boot set).
uint64_t boot_set_bytes(const std::vector<Record>& recs) {
  std::map<uint64_t, uint64_t> spans;  // start -> end, merged
  for (const Record& r : recs) {
    if (r.write) continue;
    uint64_t s = r.offset, e = r.offset + r.length;
    auto it = spans.upper_bound(s);
    if (it != spans.begin() && std::prev(it)->second >= s) --it;
    while (it != spans.end() && it->first <= e) {
      s = std::min(s, it->first);
      e = std::max(e, it->second);
      it = spans.erase(it);
    }
    spans[s] = e;
  }
  uint64_t total = 0;
  for (auto& [s, e] : spans) total += e - s;
  return total;
}

struct GuestResult {
  std::vector<uint32_t> lat_us;  // reads
  uint64_t errors = 0;
  double seconds = 0;
};

// Replays `recs` on one ring, `qd` in flight, from `go`.
void replay(sim::SimBlkfront& front, const std::vector<Record>& recs, unsigned qd, uint64_t disk_bytes,
            const std::atomic<bool>& go, GuestResult& out) {
  struct Slot {
    sim::SimBlkfront::Io io;  // first: reap() hands back &io
    std::vector<std::byte> buf;
    Clock::time_point t0;
  };
  qd = std::min<unsigned>(qd, front.ring_size());
  std::vector<Slot> slots(qd);
  std::vector<Slot*> free;
  for (Slot& s : slots) {
    s.buf.resize(4u << 20);
    free.push_back(&s);
  }
  std::vector<sim::SimBlkfront::Io*> reaped(qd);
  out.lat_us.reserve(recs.size());
  while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
  const auto start = Clock::now();
  size_t next = 0;
  unsigned in_flight = 0;
  auto deadline = Clock::now() + std::chrono::seconds(60);
  while (next < recs.size() || in_flight != 0) {
    bool started = false;
    while (next < recs.size() && !free.empty()) {
      const Record& r = recs[next];
      if (r.offset + r.length > disk_bytes) {
        ++next;
        continue;
      }
      Slot* s = free.back();
      s->io = {};
      s->io.op = r.write ? BLKIF_OP_WRITE : BLKIF_OP_READ;
      s->io.sector = r.offset / 512;
      s->io.sectors = r.length / 512;
      s->io.data = s->buf.data();
      s->t0 = Clock::now();
      if (Status st = front.start(s->io); !st) break;
      free.pop_back();
      ++in_flight;
      ++next;
      started = true;
    }
    if (started) (void)front.publish();
    const unsigned n = front.reap(reaped);
    const auto now = Clock::now();
    for (unsigned i = 0; i < n; ++i) {
      auto* s = reinterpret_cast<Slot*>(reaped[i]);
      if (s->io.status != BLKIF_RSP_OKAY || s->io.error != 0) ++out.errors;
      if (s->io.op == BLKIF_OP_READ) {
        out.lat_us.push_back(
            static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::microseconds>(now - s->t0).count()));
      }
      free.push_back(s);
      --in_flight;
    }
    if (n != 0) {
      deadline = Clock::now() + std::chrono::seconds(60);
    } else if (!front.rearm()) {
      if (Clock::now() > deadline) {
        out.errors += in_flight + (recs.size() - next);
        break;
      }
      (void)front.wait_event(std::chrono::milliseconds(10));
    }
  }
  out.seconds = std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace
}  // namespace xenpath

int main(int argc, char** argv) {
  using namespace xenpath;
  CLI::App app{"one boot storm: N guests on differencing children of one base VHD replay a boot pattern"};
  std::string base, pattern, mode = "cache", dir, json, make;
  unsigned guests = 1, workers = 2, qd = 4;
  uint64_t cache_mib = 256, base_mib = 256, boot_mib = 64;
  uint32_t cache_block_kib = 64;
  app.add_option("--base", base, "the base VHD");
  app.add_option("--pattern", pattern, "fio iolog (v2 or v3) replayed by every guest");
  app.add_option("--mode", mode, "nocache | pagecache | cache")
      ->check(CLI::IsMember({"nocache", "pagecache", "cache"}));
  app.add_option("--guests", guests, "guests (each a differencing child)")->check(CLI::Range(1u, 256u));
  app.add_option("--workers", workers, "backend worker reactors");
  app.add_option("--queue-depth", qd, "requests in flight per guest");
  app.add_option("--cache-mib", cache_mib, "cache budget (mode cache)");
  app.add_option("--cache-block-kib", cache_block_kib, "cache block size (mode cache)");
  app.add_option("--dir", dir, "where the children go");
  app.add_option("--json", json, "append this run's result (one JSON object per line)");
  app.add_option("--make-pattern", make, "write the default pattern to this file and exit");
  app.add_option("--base-mib", base_mib, "--make-pattern: the base's size");
  app.add_option("--boot-mib", boot_mib, "--make-pattern: the boot set's size");
  CLI11_PARSE(app, argc, argv);
  log_init("warn");
  if (!make.empty()) return make_pattern(make, base_mib << 20, boot_mib << 20, 7);
  if (base.empty() || pattern.empty() || dir.empty()) {
    std::fprintf(stderr, "--base, --pattern and --dir are needed\n");
    return 2;
  }
  auto recs = load_pattern(pattern);
  if (!recs || recs->empty()) {
    std::fprintf(stderr, "%s: no read/write records\n", pattern.c_str());
    return 2;
  }
  std::filesystem::create_directories(dir);
  std::vector<std::string> children;
  for (unsigned g = 0; g < guests; ++g) {
    children.push_back(dir + "/child" + std::to_string(g) + ".vhd");
    VhdCreateOptions co;
    co.type = vhd::DiskType::kDifferencing;
    co.parent = base;
    co.overwrite = true;
    if (const VhdStatus st = vhd_create(children.back(), co); !vhd_ok(st)) {
      std::fprintf(stderr, "%s\n", st.message.c_str());
      return 2;
    }
  }
  sim::SimBlkHost::Options ho;
  ho.workers = workers;
  ho.vbd.direct = mode != "pagecache";
  ho.vbd.cache_mib = mode == "cache" ? cache_mib : 0;
  ho.vbd.cache_block_kib = cache_block_kib;
  ho.guest_pages = 1u << 20;
  ho.grant_entries = 1u << 20;
  auto host = sim::SimBlkHost::create(ho);
  if (!host) {
    std::fprintf(stderr, "host: %s\n", error_string(host.error()).c_str());
    return 2;
  }
  std::vector<sim::SimBlkHost::Disk*> disks;
  for (unsigned g = 0; g < guests; ++g) {
    auto ev = (*host)->open_guest_event_channel();
    if (!ev) return 2;
    sim::SimBlkHost::FrontOptions fo;
    fo.queues = 1;
    auto d = (*host)->attach(51712 + 16 * g, "vhd:" + children[g], fo, **ev);
    if (!d) {
      std::fprintf(stderr, "attach %u: %s\n", g, error_string(d.error()).c_str());
      return 2;
    }
    disks.push_back(*d);
  }
  std::atomic<bool> go{false};
  std::vector<GuestResult> results(guests);
  std::vector<std::thread> threads;
  for (unsigned g = 0; g < guests; ++g) {
    threads.emplace_back([&, g] { replay(*disks[g]->queues[0], *recs, qd, disks[g]->bytes, go, results[g]); });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const uint64_t io0 = proc_self_read_bytes();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  const double storm = std::chrono::duration<double>(Clock::now() - t0).count();
  const uint64_t io_read = proc_self_read_bytes() - io0;
  std::vector<uint32_t> lat;
  uint64_t errors = 0;
  for (auto& r : results) {
    lat.insert(lat.end(), r.lat_us.begin(), r.lat_us.end());
    errors += r.errors;
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double q) -> uint64_t {
    return lat.empty() ? 0 : lat[std::min<size_t>(lat.size() - 1, static_cast<size_t>(q * lat.size()))];
  };
  nlohmann::json j = {{"mode", mode},
                      {"guests", guests},
                      {"storm_seconds", storm},
                      {"base_bytes_read", io_read},
                      {"boot_set_bytes", boot_set_bytes(*recs)},
                      {"p50_us", pct(0.5)},
                      {"p99_us", pct(0.99)},
                      {"reads", lat.size()},
                      {"errors", errors}};
  if (BlockCache* c = (*host)->service().cache()) {
    const CacheCounters cc = c->counters();
    j["cache_mib"] = cache_mib;
    j["cache_block_kib"] = cache_block_kib;
    j["cache_bytes_from_disk"] = cc.bytes_from_disk;
    j["cache_fills"] = cc.fills;
    j["cache_hits"] = cc.hits;
    j["cache_joins"] = cc.joins;
    j["cache_bypasses"] = cc.bypasses;
    j["cache_evictions"] = cc.evictions;
  }
  for (unsigned g = 0; g < guests; ++g) (void)(*host)->detach(51712 + 16 * g);
  std::printf("%s\n", j.dump().c_str());
  if (!json.empty()) {
    std::ofstream f(json, std::ios::app);
    f << j.dump() << "\n";
  }
  return errors == 0 ? 0 : 1;
}
