// xenpath-blkload: load generator for the block backend on the simulated
// Xen host.
//
// N VBDs x Q queues are served by the production backend (VbdDeviceType
// over BackendDriver on a control reactor, W BlkWorker reactors doing
// io_uring), each plugged by the simulated toolstack and connected by a
// simulated guest's blkfront handshake with the chosen options (protocol,
// ring order, queues, persistent grants, indirect descriptors). G guest
// threads run a BlkLoad on every ring (queue depth, block size, read/write
// mix, random or sequential, flushes, verify mode) for --seconds or --ops,
// then the tool prints per-VBD IOPS, throughput, latency percentiles,
// errors and mismatches, and the CPU time of the backend's worker threads
// per request, apart from the simulated guest's own.
//
// Images: one file per VBD (--image repeated), one file shared by every VBD,
// or --null (blkback/image_null.h: I/O completes at once without touching
// data, to measure the backend's own CPU cost). A missing file is created
// with --size and preallocated (fallocate: unwritten extents read as zeros
// without touching the disk, so for read benchmarks write the file fully
// first: perf/blk_vs_fio.sh does), or sparse, or as a dynamic VHD
// (--create), or as a differencing VHD child of --vhd-parent. Existing
// files are served in the format they hold (raw, or VHD: image_open.h).
//
// --verify checks every byte read against the last acknowledged write (see
// sim/blk/sim_blkload.h); each ring then gets its own region of the disk and
// the regions are zeroed (hole-punched) first. Exit status: 0, 1 on any
// error or mismatch, 2 on a setup failure.
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "blkback/image_null.h"
#include "blkback/image_open.h"
#include "blkback/vhd_file.h"
#include "common/log.h"
#include "sim/blk/sim_blkhost.h"
#include "sim/blk/sim_blkload.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using namespace xenpath;
using namespace xenpath::sim;

std::atomic<bool> g_stop{false};

struct Config {
  unsigned vbds = 1;
  unsigned queues = 1;
  unsigned workers = 1;
  unsigned guest_threads = 1;
  std::vector<std::string> images;
  bool null_image = false;
  std::string size = "1G";
  std::string bs = "4k";
  unsigned qd = 32;
  unsigned read_percent = 100;
  std::string pattern = "rand";
  std::string span = "0";
  std::string offset = "0";
  unsigned flush_every = 0;
  bool verify = false;
  uint64_t seed = 1;
  double seconds = 10;
  uint64_t ops = 0;
  bool persistent = true;
  bool indirect = true;
  unsigned ring_order = 0;
  std::string protocol = "native";
  unsigned poll_window_us = 50;
  uint32_t persistent_max_pages = 0;
  bool buffered = false;
  std::string create = "raw";  // how a missing image is made: raw (preallocated), sparse, vhd
  std::string vhd_parent;      // a missing image is made a differencing VHD child of this
  uint64_t cache_mib = 0;      // the backend's shared read cache over immutable levels (0: none, as before)
  uint32_t cache_block_kib = 64;
  bool json = false;
  bool quiet = false;
};

Result<uint64_t> parse_size(const std::string& s) {
  if (s.empty()) return unexpected(EINVAL);
  size_t pos = 0;
  uint64_t v = 0;
  try {
    v = std::stoull(s, &pos, 10);
  } catch (...) {
    return unexpected(EINVAL);
  }
  const std::string suffix = s.substr(pos);
  uint64_t mult = 1;
  if (suffix.empty() || suffix == "b" || suffix == "B") {
    mult = 1;
  } else if (suffix == "k" || suffix == "K" || suffix == "KiB") {
    mult = 1ull << 10;
  } else if (suffix == "m" || suffix == "M" || suffix == "MiB") {
    mult = 1ull << 20;
  } else if (suffix == "g" || suffix == "G" || suffix == "GiB") {
    mult = 1ull << 30;
  } else if (suffix == "t" || suffix == "T" || suffix == "TiB") {
    mult = 1ull << 40;
  } else {
    return unexpected(EINVAL);
  }
  if (v > UINT64_MAX / mult) return unexpected(ERANGE);
  return v * mult;
}

// Creates `path` if it does not exist: `size` bytes allocated (raw),
// sparse, a dynamic VHD of `size`, or a differencing VHD child of `parent`.
Status ensure_file(const std::string& path, uint64_t size, const std::string& how, const std::string& parent) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) return ok();
  if (how == "vhd" || !parent.empty()) {
    VhdCreateOptions c;
    c.type = parent.empty() ? vhd::DiskType::kDynamic : vhd::DiskType::kDifferencing;
    c.size = parent.empty() ? size : 0;
    c.parent = parent;
    const VhdStatus r = vhd_create(path, c);
    if (!vhd_ok(r)) {
      std::fprintf(stderr, "xenpath-blkload: %s\n", r.message.c_str());
      return unexpected(r.code);
    }
    return ok();
  }
  if (how == "sparse") {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return unexpected_errno();
    const Status r = ::ftruncate(fd, static_cast<off_t>(size)) == 0 ? ok() : Status(unexpected_errno());
    ::close(fd);
    return r;
  }
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return unexpected_errno();
  Status r;
  if (::posix_fallocate(fd, 0, static_cast<off_t>(size)) != 0 && ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    r = unexpected_errno();
  }
  ::close(fd);
  return r;
}

Status zero_region(const std::string& path, uint64_t offset, uint64_t len) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return unexpected_errno();
  Status r;
  if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(len)) != 0 &&
      ::fallocate(fd, FALLOC_FL_ZERO_RANGE, static_cast<off_t>(offset), static_cast<off_t>(len)) != 0) {
    r = unexpected_errno();
  }
  ::close(fd);
  return r;
}

uint64_t thread_cpu_ns(clockid_t c) {
  timespec ts{};
  if (::clock_gettime(c, &ts) != 0) return 0;
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

struct LoadRef {
  unsigned vbd = 0;
  unsigned queue = 0;
  std::unique_ptr<BlkLoad> load;
};

// One guest thread: drives its loads until told to stop or all are done,
// then drains them.
void guest_thread(std::vector<BlkLoad*> loads, std::atomic<uint64_t>& cpu_ns, std::atomic<int>& failures) {
  for (;;) {
    bool all_done = false;
    const unsigned completions = BlkLoad::poll_all(loads, all_done);
    if (all_done || g_stop.load(std::memory_order_relaxed)) break;
    if (completions == 0 && !BlkLoad::wait_any(loads, 100ms)) failures.fetch_add(1);
  }
  for (BlkLoad* l : loads) {
    if (!l->drain(10s)) failures.fetch_add(1);
  }
  cpu_ns.store(thread_cpu_ns(CLOCK_THREAD_CPUTIME_ID));
}

void on_signal(int) { g_stop.store(true); }

int run(const Config& cfg) {
  if (!cfg.quiet) {
    spdlog::set_level(spdlog::level::warn);
  } else {
    spdlog::set_level(spdlog::level::err);
  }
  auto fail = [](const std::string& what, int err) {
    std::fprintf(stderr, "xenpath-blkload: %s: %s\n", what.c_str(), error_string(err).c_str());
    return 2;
  };
  auto size = parse_size(cfg.size);
  auto bs = parse_size(cfg.bs);
  auto span = parse_size(cfg.span);
  auto offset = parse_size(cfg.offset);
  if (!size || !bs || !span || !offset) return fail("bad size argument", EINVAL);
  BlkProtocol protocol = BlkProtocol::kNative;
  if (cfg.protocol == "x86_32") {
    protocol = BlkProtocol::kX86_32;
  } else if (cfg.protocol == "x86_64") {
    protocol = BlkProtocol::kX86_64;
  } else if (cfg.protocol != "native") {
    return fail("--protocol must be native, x86_32 or x86_64", EINVAL);
  }
  if (cfg.null_image && cfg.verify) return fail("--verify with --null (the null image stores nothing)", EINVAL);
  if (cfg.null_image == !cfg.images.empty()) return fail("give --image (once, or once per VBD) or --null", EINVAL);
  if (!cfg.images.empty() && cfg.images.size() != 1 && cfg.images.size() != cfg.vbds) {
    return fail("--image: one shared file or one per VBD", EINVAL);
  }
  if (cfg.vbds == 0 || cfg.queues == 0 || cfg.workers == 0 || cfg.guest_threads == 0) {
    return fail("counts must be positive", EINVAL);
  }

  SimBlkHost::Options ho;
  ho.workers = cfg.workers;
  ho.vbd.max_queues = std::max(cfg.queues, 1u);
  ho.vbd.direct = !cfg.buffered;
  ho.vbd.persistent_max_pages = cfg.persistent_max_pages;
  ho.vbd.cache_mib = cfg.cache_mib;
  ho.vbd.cache_block_kib = cfg.cache_block_kib;
  ho.poll_window = std::chrono::microseconds(cfg.poll_window_us);
  // Guest memory: rings, and data pages in flight (persistent pools keep
  // theirs); sparse, so generous costs nothing.
  const uint64_t pages_per_io = (*bs + 4095) / 4096 + 2;
  const uint64_t want_pages = 4096 + uint64_t{cfg.vbds} * cfg.queues * (16 + pages_per_io * cfg.qd * 2);
  ho.guest_pages = static_cast<uint32_t>(std::min<uint64_t>(want_pages, 1u << 22));
  ho.grant_entries = static_cast<uint32_t>(std::min<uint64_t>(want_pages + 1024, 1u << 22));
  const uint64_t null_size = *size;
  if (cfg.null_image) {
    ho.vbd.open_image = [null_size](const VbdParams& p, bool ro) -> Result<std::unique_ptr<Image>> {
      XP_ASSIGN_OR_RETURN(auto img, NullImage::create(p.path, null_size, 512, ro));
      return std::unique_ptr<Image>(std::move(img));
    };
  }
  auto host = SimBlkHost::create(ho);
  if (!host) return fail("simulated host", host.error());

  SimBlkHost::FrontOptions fo;
  fo.protocol = protocol;
  fo.ring_order = cfg.ring_order;
  fo.queues = cfg.queues;
  fo.persistent = cfg.persistent;
  fo.indirect = cfg.indirect;

  std::vector<EventChannel*> evtchns;
  for (unsigned g = 0; g < cfg.guest_threads; ++g) {
    auto ev = (*host)->open_guest_event_channel();
    if (!ev) return fail("guest event channel", ev.error());
    evtchns.push_back(*ev);
  }

  // Disks, and the loads on their rings. Disk d belongs to guest thread
  // d % G (its rings are bound on that thread's event channel handle).
  const bool shared = cfg.images.size() == 1 && cfg.vbds > 1;
  const unsigned loads_per_file = shared ? cfg.vbds * cfg.queues : cfg.queues;
  std::vector<SimBlkHost::Disk*> disks;
  std::vector<LoadRef> loads;
  std::vector<std::vector<BlkLoad*>> per_thread(cfg.guest_threads);
  for (unsigned v = 0; v < cfg.vbds; ++v) {
    const uint32_t devid = 51712 + v * 16;  // xvda, xvdb, ...
    std::string params;
    if (cfg.null_image) {
      params = "/null/" + std::to_string(v);
    } else {
      const std::string& path = cfg.images[cfg.images.size() == 1 ? 0 : v];
      if (Status st = ensure_file(path, *size, cfg.create, cfg.vhd_parent); !st) return fail(path, st.error());
      // The toolstack writes absolute paths (and the backend insists); a
      // bare path: the backend serves the format the file holds.
      std::error_code ec;
      params = std::filesystem::absolute(path, ec).lexically_normal().string();
      if (ec) return fail(path, ec.value());
    }
    auto d = (*host)->attach(devid, params, fo, *evtchns[v % cfg.guest_threads]);
    if (!d) return fail("attaching VBD " + std::to_string(v), d.error());
    disks.push_back(*d);
    const uint64_t disk_bytes = (*d)->bytes;
    for (unsigned q = 0; q < cfg.queues; ++q) {
      BlkLoadSpec s;
      s.queue_depth = cfg.qd;
      s.block_size = static_cast<uint32_t>(*bs);
      s.read_percent = cfg.read_percent;
      s.random = cfg.pattern == "rand";
      s.offset_bytes = *offset;
      s.span_bytes = *span;
      s.flush_every = cfg.flush_every;
      s.verify = cfg.verify;
      s.seed = cfg.seed + v * 1000 + q;
      s.max_ops = cfg.ops;
      if (cfg.verify) {
        // Exact checking needs one owner per block: each ring its own
        // slice of the region, zeroed before it starts.
        const uint64_t region = (*span != 0 ? *span : disk_bytes - *offset);
        const uint64_t slice = region / loads_per_file / *bs * *bs;
        if (slice < *bs) return fail("--verify: region too small for every ring to own a block", EINVAL);
        const unsigned index = shared ? v * cfg.queues + q : q;
        s.offset_bytes = *offset + index * slice;
        s.span_bytes = slice;
        const std::string& path = cfg.images[cfg.images.size() == 1 ? 0 : v];
        auto format = detect_image_format(path);
        if (format && *format == "vhd") {
          s.unknown_start = true;  // punching holes would break the VHD: what it holds is accepted until written
        } else if (Status st = zero_region(path, s.offset_bytes, slice); !st) {
          return fail("zeroing " + path, st.error());
        }
      }
      if (s.queue_depth > (*d)->queues[q]->ring_size()) {
        return fail("--qd " + std::to_string(cfg.qd) + " above the ring's " +
                        std::to_string((*d)->queues[q]->ring_size()) + " slots (raise --ring-order)",
                    EINVAL);
      }
      auto l = BlkLoad::create(*(*d)->queues[q], disk_bytes, s, devid);
      if (!l) return fail("load spec for VBD " + std::to_string(v), l.error());
      per_thread[v % cfg.guest_threads].push_back(l->get());
      loads.push_back(LoadRef{v, q, std::move(*l)});
    }
  }

  // Run.
  std::vector<uint64_t> worker_cpu0;
  for (clockid_t c : (*host)->worker_clocks()) worker_cpu0.push_back(thread_cpu_ns(c));
  const uint64_t proc_cpu0 = thread_cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
  std::vector<uint64_t> requests0(disks.size());
  for (size_t i = 0; i < disks.size(); ++i) {
    const VbdDevice* dev = (*host)->device(disks[i]->devid);
    for (size_t q = 0; dev != nullptr && q < dev->queue_count(); ++q)
      requests0[i] += dev->queue_stats(q).ring.requests.get();
  }
  std::vector<std::atomic<uint64_t>> guest_cpu(cfg.guest_threads);
  std::atomic<int> failures{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (unsigned g = 0; g < cfg.guest_threads; ++g) {
    if (per_thread[g].empty()) continue;
    threads.emplace_back(guest_thread, per_thread[g], std::ref(guest_cpu[g]), std::ref(failures));
  }
  const auto limit = cfg.seconds > 0 && cfg.ops == 0
                         ? std::chrono::duration<double>(cfg.seconds)
                         : std::chrono::duration<double>(cfg.seconds > 0 ? cfg.seconds : 3600);
  while (!g_stop.load() && Clock::now() - t0 < limit) {
    bool all_done = cfg.ops != 0;
    for (const LoadRef& l : loads) all_done &= l.load->done();
    if (all_done) break;
    std::this_thread::sleep_for(10ms);
  }
  g_stop.store(true);
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  uint64_t worker_cpu = 0;
  for (size_t i = 0; i < worker_cpu0.size(); ++i)
    worker_cpu += thread_cpu_ns((*host)->worker_clocks()[i]) - worker_cpu0[i];
  const uint64_t proc_cpu = thread_cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - proc_cpu0;
  uint64_t guest_cpu_total = 0;
  for (auto& c : guest_cpu) guest_cpu_total += c.load();

  // Report.
  nlohmann::json out;
  out["config"] = {{"seconds", cfg.seconds},
                   {"ops_per_ring", cfg.ops},
                   {"vbds", cfg.vbds},
                   {"queues", cfg.queues},
                   {"workers", cfg.workers},
                   {"guest_threads", cfg.guest_threads},
                   {"image", cfg.null_image ? "null" : (shared ? "shared file" : "file per vbd")},
                   {"block_size", *bs},
                   {"queue_depth", cfg.qd},
                   {"read_percent", cfg.read_percent},
                   {"pattern", cfg.pattern},
                   {"flush_every", cfg.flush_every},
                   {"verify", cfg.verify},
                   {"persistent", cfg.persistent},
                   {"indirect", cfg.indirect},
                   {"ring_order", cfg.ring_order},
                   {"protocol", cfg.protocol},
                   {"direct", !cfg.buffered},
                   {"poll_window_us", cfg.poll_window_us},
                   {"persistent_max_pages", cfg.persistent_max_pages}};
  uint64_t total_ops = 0;
  uint64_t total_bytes = 0;
  uint64_t total_errors = 0;
  uint64_t total_mismatches = 0;
  uint64_t backend_requests = 0;
  sim::LatencyHistogram all_lat;
  out["vbds"] = nlohmann::json::array();
  if (!cfg.json) {
    std::printf("%-6s %-6s %10s %10s %9s %9s %9s %7s %10s\n", "vbd", "devid", "IOPS", "MiB/s", "p50(us)", "p99(us)",
                "max(us)", "errors", "mismatches");
  }
  for (size_t i = 0; i < disks.size(); ++i) {
    sim::LatencyHistogram lat;
    uint64_t ops = 0, bytes = 0, errors = 0, mismatches = 0, reads = 0, writes = 0, flushes = 0;
    for (const LoadRef& l : loads) {
      if (l.vbd != i) continue;
      const BlkLoadStats& s = l.load->stats();
      ops += s.ops.get();
      bytes += s.read_bytes.get() + s.write_bytes.get();
      errors += s.errors.get();
      mismatches += s.mismatches.get();
      reads += s.reads.get();
      writes += s.writes.get();
      flushes += s.flushes.get();
      lat.add(s.latency);
    }
    all_lat.add(lat);
    uint64_t requests = 0, map_calls = 0, notifications = 0, events = 0, indirect = 0;
    const VbdDevice* dev = (*host)->device(disks[i]->devid);
    for (size_t q = 0; dev != nullptr && q < dev->queue_count(); ++q) {
      const VbdQueueStats& qs = dev->queue_stats(q);
      requests += qs.ring.requests.get();
      map_calls += qs.map_calls.get();
      notifications += qs.ring.notifications_sent.get();
      events += qs.ring.events_received.get();
      indirect += qs.indirect.get();
    }
    requests -= requests0[i];
    backend_requests += requests;
    total_ops += ops;
    total_bytes += bytes;
    total_errors += errors;
    total_mismatches += mismatches;
    const double iops = static_cast<double>(ops) / elapsed;
    const double mib = static_cast<double>(bytes) / elapsed / (1 << 20);
    out["vbds"].push_back({{"vbd", i},
                           {"devid", disks[i]->devid},
                           {"ops", ops},
                           {"reads", reads},
                           {"writes", writes},
                           {"flushes", flushes},
                           {"bytes", bytes},
                           {"iops", iops},
                           {"mib_s", mib},
                           {"lat_p50_us", static_cast<double>(lat.percentile_ns(0.5)) / 1e3},
                           {"lat_p99_us", static_cast<double>(lat.percentile_ns(0.99)) / 1e3},
                           {"lat_max_us", static_cast<double>(lat.max_ns()) / 1e3},
                           {"errors", errors},
                           {"mismatches", mismatches},
                           {"persistent", disks[i]->persistent},
                           {"max_indirect_segments", disks[i]->max_indirect_segments},
                           {"backend",
                            {{"requests", requests},
                             {"indirect", indirect},
                             {"map_calls", map_calls},
                             {"notifications_sent", notifications},
                             {"events_received", events}}}});
    if (!cfg.json) {
      std::printf("%-6zu %-6u %10.0f %10.1f %9.1f %9.1f %9.1f %7lu %10lu\n", i, disks[i]->devid, iops, mib,
                  static_cast<double>(lat.percentile_ns(0.5)) / 1e3, static_cast<double>(lat.percentile_ns(0.99)) / 1e3,
                  static_cast<double>(lat.max_ns()) / 1e3, static_cast<unsigned long>(errors),
                  static_cast<unsigned long>(mismatches));
    }
  }
  const double per_req =
      backend_requests != 0 ? static_cast<double>(worker_cpu) / 1e3 / static_cast<double>(backend_requests) : 0;
  const double guest_per_req =
      total_ops != 0 ? static_cast<double>(guest_cpu_total) / 1e3 / static_cast<double>(total_ops) : 0;
  out["total"] = {{"seconds", elapsed},
                  {"ops", total_ops},
                  {"iops", static_cast<double>(total_ops) / elapsed},
                  {"mib_s", static_cast<double>(total_bytes) / elapsed / (1 << 20)},
                  {"lat_p50_us", static_cast<double>(all_lat.percentile_ns(0.5)) / 1e3},
                  {"lat_p99_us", static_cast<double>(all_lat.percentile_ns(0.99)) / 1e3},
                  {"lat_max_us", static_cast<double>(all_lat.max_ns()) / 1e3},
                  {"errors", total_errors},
                  {"mismatches", total_mismatches},
                  {"backend_requests", backend_requests},
                  {"backend_cpu_s", static_cast<double>(worker_cpu) / 1e9},
                  {"backend_cpu_us_per_request", per_req},
                  {"backend_cpu_utilisation", static_cast<double>(worker_cpu) / 1e9 / elapsed},
                  {"guest_cpu_s", static_cast<double>(guest_cpu_total) / 1e9},
                  {"guest_cpu_us_per_request", guest_per_req},
                  {"process_cpu_s", static_cast<double>(proc_cpu) / 1e9},
                  {"online_cpus", std::thread::hardware_concurrency()},
                  {"failures", failures.load()}};
  if (cfg.json) {
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("total: %.0f IOPS, %.1f MiB/s, p50 %.1f us, p99 %.1f us over %.2f s; errors %lu, mismatches %lu\n",
                static_cast<double>(total_ops) / elapsed, static_cast<double>(total_bytes) / elapsed / (1 << 20),
                static_cast<double>(all_lat.percentile_ns(0.5)) / 1e3,
                static_cast<double>(all_lat.percentile_ns(0.99)) / 1e3, elapsed,
                static_cast<unsigned long>(total_errors), static_cast<unsigned long>(total_mismatches));
    std::printf(
        "backend workers: %.2f s CPU (%.0f%% of one core), %.2f us per request; guest threads: %.2f s CPU, "
        "%.2f us per request\n",
        static_cast<double>(worker_cpu) / 1e9, 100.0 * static_cast<double>(worker_cpu) / 1e9 / elapsed, per_req,
        static_cast<double>(guest_cpu_total) / 1e9, guest_per_req);
  }
  loads.clear();
  host->reset();
  if (failures.load() != 0) return 1;
  return total_errors != 0 || total_mismatches != 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"xenpath-blkload: block backend load generator on the simulated Xen host"};
  app.add_option("--vbds", cfg.vbds, "number of VBDs")->capture_default_str();
  app.add_option("--queues", cfg.queues, "queues (rings) per VBD")->capture_default_str();
  app.add_option("--workers", cfg.workers, "backend worker reactors")->capture_default_str();
  app.add_option("--guest-threads", cfg.guest_threads, "simulated guest threads (VBDs spread over them)")
      ->capture_default_str();
  app.add_option("--image", cfg.images,
                 "image file: once (shared by every VBD) or once per VBD; created with --size if missing");
  app.add_flag("--null", cfg.null_image, "null images: I/O completes at once, nothing stored (backend CPU cost)");
  app.add_option("--size", cfg.size, "size of created files and null images")->capture_default_str();
  app.add_option("--bs", cfg.bs, "block size of every I/O")->capture_default_str();
  app.add_option("--qd", cfg.qd, "queue depth per ring")->capture_default_str();
  app.add_option("--read-percent", cfg.read_percent, "reads among data ops")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  app.add_option("--pattern", cfg.pattern, "rand or seq")->check(CLI::IsMember({"rand", "seq"}))->capture_default_str();
  app.add_option("--span", cfg.span, "region of the disk used (0: to the end)")->capture_default_str();
  app.add_option("--offset", cfg.offset, "start of the region")->capture_default_str();
  app.add_option("--flush-every", cfg.flush_every, "a flush after every N writes (0: never)")->capture_default_str();
  app.add_flag("--verify", cfg.verify,
               "check every byte read against the last acknowledged write (zeroes the region first)");
  app.add_option("--seed", cfg.seed)->capture_default_str();
  app.add_option("--seconds", cfg.seconds, "run time (a limit when --ops is given)")->capture_default_str();
  app.add_option("--ops", cfg.ops, "data ops per ring (0: run for --seconds)")->capture_default_str();
  app.add_option("--persistent", cfg.persistent, "frontend asks for persistent grants (0/1)")->capture_default_str();
  app.add_option("--indirect", cfg.indirect, "frontend uses indirect descriptors when offered (0/1)")
      ->capture_default_str();
  app.add_option("--ring-order", cfg.ring_order, "ring-page-order (0..4)")->capture_default_str();
  app.add_option("--protocol", cfg.protocol, "native, x86_32 or x86_64")->capture_default_str();
  app.add_option("--poll-window-us", cfg.poll_window_us, "backend reactors' spin after work")->capture_default_str();
  app.add_option("--persistent-max-pages", cfg.persistent_max_pages,
                 "backend's persistent grant table per queue (0: its default, RING_SIZE * 11)")
      ->capture_default_str();
  app.add_flag("--buffered", cfg.buffered, "open images without O_DIRECT");
  app.add_option("--create", cfg.create, "how a missing --image is made: raw (preallocated), sparse, vhd (dynamic)")
      ->check(CLI::IsMember({"raw", "sparse", "vhd"}))
      ->capture_default_str();
  app.add_option("--vhd-parent", cfg.vhd_parent, "a missing --image is made a differencing VHD child of this");
  app.add_option("--cache-mib", cfg.cache_mib,
                 "the backend's shared read cache over immutable VHD levels, MiB (0: none; the daemon's default is "
                 "256)")
      ->capture_default_str();
  app.add_option("--cache-block-kib", cfg.cache_block_kib, "its block size, KiB")
      ->check(CLI::Range(4, 2048))
      ->capture_default_str();
  app.add_flag("--json", cfg.json, "JSON report on stdout");
  app.add_flag("--quiet", cfg.quiet, "only errors in the log");
  CLI11_PARSE(app, argc, argv);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  return run(cfg);
}
