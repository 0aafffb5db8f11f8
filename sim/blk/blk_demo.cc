// `xenpath-sim blkback`: xenpath-blkback's daemon (BackendDaemon +
// BlkbackService, the production code) on the simulated Xen host, with a
// libxl-like toolstack plugging one raw image per guest disk and simulated
// guests driving verified I/O through it; live per-VBD figures and, at the
// end, a self-check that every grant mapping, event channel and watch was
// released. The README's first command runs this.
//
// Threads: the caller's thread reports and tears down; one thread per guest
// drives its disks' rings; the daemon's reactors do the backend work.
#include "sim/blk/blk_demo.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "blkback/blk_service.h"
#include "blkback/image_open.h"
#include "blkback/vhd_file.h"
#include "sim/blk/sim_blkdigest.h"
#include "sim/blk/sim_blkfront.h"
#include "sim/blk/sim_blkhost.h"
#include "sim/blk/sim_blkload.h"
#include "sim/sim_demo.h"
#include "sim/sim_host.h"
#include "sim/sim_toolstack.h"
#include "sim/sim_xenbus_frontend.h"
#include "sim/sim_xenstored.h"

namespace xenpath::sim {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// One simulated guest's disk: its frontend (xenbus + a ring per queue) and
// the I/O generator on each ring. Owned by its guest thread; the reporter
// reads only the loads' single-writer stats.
struct GuestVbd {
  DomId domid = 0;
  uint32_t devid = 0;
  std::unique_ptr<SimBlkHost::Disk> disk;
  std::vector<std::unique_ptr<BlkLoad>> loads;
  std::atomic<bool> ready{false};
  uint64_t shown_ops = 0, shown_bytes = 0;
  // The loads' final figures, kept by the guest thread when they go (read
  // after it was joined).
  uint64_t final_ops = 0, final_bytes = 0, final_errors = 0, final_mismatches = 0;
  std::string sha256;  // --read-only: what the guest read
};

uint64_t load_sum(const GuestVbd& v, uint64_t (*f)(const BlkLoadStats&)) {
  uint64_t n = 0;
  if (v.ready.load(std::memory_order_acquire)) {
    for (const auto& l : v.loads) n += f(l->stats());
  }
  return n;
}

// A guest's kernel: connects its disks (the blkfront handshake), then keeps
// a queue depth of verified I/O on every ring until told to stop, then
// drains and closes its disks.
void run_guest(SimHost& h, DomId domid, std::vector<GuestVbd*> mine, const BlkDemoOptions& opt, const VbdOptions& vbd,
               unsigned backend_queues, int journal_fd, std::atomic<bool>& stop, std::atomic<unsigned>& connected,
               std::atomic<unsigned>& failed, std::atomic<unsigned>& finished) {
  auto guest = SimGuestHandles::open(h, domid);
  if (!guest) {
    ++failed;
    return;
  }
  SimBlkHost::FrontOptions fo;
  fo.queues = std::max(1u, std::min(opt.queues, backend_queues));
  fo.ring_order = std::min(2u, vbd.max_ring_order);
  fo.persistent = opt.persistent_front;
  fo.fewer_queues_ok = true;  // a writable VHD offers one
  std::vector<BlkLoad*> all;
  bool ok_all = true;
  for (GuestVbd* v : mine) {
    auto disk = SimBlkHost::connect_disk(*guest->domain, *guest->xs, *guest->evtchn, domid, v->devid, fo);
    if (!disk) {
      spdlog::error("guest {} vbd {}: {}", domid, v->devid, error_string(disk.error()));
      ok_all = false;
      break;
    }
    v->disk = std::move(*disk);
    if (opt.read_only) {
      // Read the disk once, in order, and say what it held.
      auto d = blk_read_digest(*v->disk->queues[0], v->disk->bytes, 32768, opt.queue_depth);
      if (!d) {
        spdlog::error("guest {} vbd {}: reading the disk: {}", domid, v->devid, error_string(d.error()));
        ok_all = false;
        break;
      }
      v->sha256 = d->sha256;
      v->final_ops = d->ios;
      v->final_bytes = d->bytes;
      ++connected;
      ++finished;
      continue;
    }
    // Each ring verifies its own slice of the disk (verify needs exclusive
    // blocks; the images start as zeros).
    const uint64_t slice = v->disk->bytes / v->disk->queues.size() / opt.block_size * opt.block_size;
    for (size_t q = 0; q < v->disk->queues.size() && ok_all; ++q) {
      BlkLoadSpec spec;
      spec.queue_depth = opt.queue_depth;
      spec.block_size = opt.block_size;
      spec.read_percent = opt.read_percent;
      spec.offset_bytes = slice * q;
      spec.span_bytes = slice;
      spec.verify = opt.verify;
      spec.flush_every = 64;
      spec.seed = (uint64_t{domid} << 32) ^ (uint64_t{v->devid} << 8) ^ q;
      spec.unknown_start = !opt.image.empty();
      spec.journal_fd = journal_fd;
      auto load = BlkLoad::create(*v->disk->queues[q], v->disk->bytes, spec, v->devid);
      if (!load) {
        spdlog::error("guest {} vbd {}: load: {}", domid, v->devid, error_string(load.error()));
        ok_all = false;
        break;
      }
      all.push_back(load->get());
      v->loads.push_back(std::move(*load));
    }
    if (!ok_all) break;
    v->ready.store(true, std::memory_order_release);
    ++connected;
  }
  while (ok_all && !all.empty() && !stop.load(std::memory_order_relaxed)) {
    unsigned done = 0;
    for (BlkLoad* l : all) done += l->poll();
    if (done == 0) (void)BlkLoad::wait_any(all, 10ms);
  }
  for (BlkLoad* l : all) {
    if (!l->drain(10s)) ++failed;
  }
  // The reporter reads the loads until the run stops (a failure above ends
  // it too); only then may they go, before the rings they were driving.
  while (!stop.load()) std::this_thread::sleep_for(10ms);
  // The frontends go with this thread's xenstore connection and channel.
  for (GuestVbd* v : mine) {
    for (const auto& l : v->loads) {
      const BlkLoadStats& st = l->stats();
      v->final_ops += st.ops.get();
      v->final_bytes += st.read_bytes.get() + st.write_bytes.get();
      v->final_errors += st.errors.get();
      v->final_mismatches += st.mismatches.get();
    }
    v->ready.store(false, std::memory_order_release);
    v->loads.clear();
    if (!v->disk) continue;
    if (v->disk->xenbus && !v->disk->xenbus->close()) ++failed;
    v->disk->queues.clear();
    v->disk->xenbus.reset();
  }
  if (!ok_all) ++failed;
}

}  // namespace

int run_blkback_demo(const DaemonCli& cli, const VbdOptions& vbd, const BlkDemoOptions& opt) {
  auto demo = SimDemoHost::create();
  if (!demo) return 2;
  SimHost& h = (*demo)->host();

  // Images: one raw file per VBD, preallocated (zeros) so the I/O hits the disk.
  std::filesystem::path dir = opt.image_dir;
  bool own_dir = false;
  if (dir.empty()) {
    char tmpl[] = "/var/tmp/xenpath-demo-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      spdlog::critical("mkdtemp: {}", error_string(errno));
      return 2;
    }
    dir = tmpl;
    own_dir = true;
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  const uint64_t image_bytes = opt.image_mib << 20;
  // --image: what the guests get.
  std::string image_param;
  std::string image_vhd_parent;  // several writing guests: each a child of it
  if (!opt.image.empty()) {
    auto p = parse_vbd_params(opt.image);
    std::string why;
    if (p && p->format == "auto") {
      auto f = detect_image_format(p->path, &why);
      if (f) p->format = *f;
    }
    if (!p || (p->format != "raw" && p->format != "vhd") || opt.vbds != 1) {
      spdlog::critical("--image {}: {}", opt.image,
                       opt.vbds != 1  ? std::string("takes one VBD per guest")
                       : !why.empty() ? why
                                      : "not a raw or vhd image path");
      return 2;
    }
    image_param = p->format + ":" + p->path;
    if (opt.run.guests > 1 && !opt.read_only) {
      if (p->format != "vhd") {
        spdlog::critical("--image {}: several writing guests need a VHD (each gets a differencing child)", opt.image);
        return 2;
      }
      image_vhd_parent = p->path;
    }
  }
  int journal_fd = -1;
  if (!opt.journal.empty()) {
    journal_fd = ::open(opt.journal.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (journal_fd < 0) {
      spdlog::critical("journal {}: {}", opt.journal, error_string(errno));
      return 2;
    }
  }

  ServedDaemon<BlkbackService> bb;
  if (auto st = bb.start((*demo)->platform(), cli.daemon, vbd); !st) {
    spdlog::critical("cannot start: {}", error_string(st.error()));
    return 2;
  }
  const unsigned backend_queues = vbd.max_queues ? vbd.max_queues : static_cast<unsigned>(bb.daemon->workers().size());
  const size_t watches_idle = h.xenstored().watch_count();
  fmt::print(
      "xenpath-blkback on the simulated Xen host: {} guests x {} VBDs ({} KiB I/O, QD {} per ring, {}% reads{}), "
      "images in {}\n  xenstored: XENSTORED_PATH={} xenstore-ls /local/domain/0/backend/vbd\n",
      opt.run.guests, opt.vbds, opt.block_size / 1024, opt.queue_depth, opt.read_percent,
      opt.verify ? ", every byte verified" : "", dir.string(), h.xenstored_path());

  SimToolstack& tool = (*demo)->tool();
  if (!(*demo)->create_guests(opt.run.guests, 32768)) return 2;
  std::vector<std::unique_ptr<GuestVbd>> vbds;
  for (unsigned g = 0; g < opt.run.guests; ++g) {
    const DomId domid = SimDemoHost::guest_id(g);
    for (unsigned i = 0; i < opt.vbds; ++i) {
      auto v = std::make_unique<GuestVbd>();
      v->domid = domid;
      v->devid = 51712 + 16 * i;  // xvda, xvdb... as libxl numbers them
      const auto path = dir / fmt::format("guest{}-xvd{}.img", domid, static_cast<char>('a' + i));
      std::string params = path.string();
      if (!image_vhd_parent.empty()) {
        // Each guest its own differencing child of the image.
        params = (dir / fmt::format("guest{}-child.vhd", domid)).string();
        VhdCreateOptions co;
        co.type = vhd::DiskType::kDifferencing;
        co.parent = image_vhd_parent;
        co.overwrite = true;
        if (const VhdStatus st = vhd_create(params, co); !vhd_ok(st)) {
          spdlog::critical("{}", st.message);
          return 2;
        }
        params = "vhd:" + params;
      } else if (!image_param.empty()) {
        params = image_param;
      } else {
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || ::posix_fallocate(fd, 0, static_cast<off_t>(image_bytes)) != 0) {
          spdlog::critical("image {}: {}", path.string(), error_string(errno));
          if (fd >= 0) ::close(fd);
          return 2;
        }
        ::close(fd);
      }
      XsKeys keys = {{"params", params}, {"mode", opt.read_only ? "r" : "w"}, {"type", "file"}};
      if (auto extra = opt.backend_keys.find(domid); extra != opt.backend_keys.end()) {
        keys.insert(keys.end(), extra->second.begin(), extra->second.end());
      }
      if (auto r = tool.add_device("vbd", domid, v->devid, kDom0, keys,
                                   {{"virtual-device", std::to_string(v->devid)}, {"device-type", "disk"}});
          !r) {
        spdlog::critical("add vbd: {}", error_string(r.error()));
        return 2;
      }
      vbds.push_back(std::move(v));
    }
  }

  const auto t0 = Clock::now();
  const auto deadline =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.run.seconds));
  std::atomic<bool> stop{false};
  std::atomic<unsigned> connected{0}, failed{0}, finished{0};
  std::vector<std::thread> guests;
  for (unsigned g = 0; g < opt.run.guests; ++g) {
    const DomId domid = static_cast<DomId>(g + 1);
    std::vector<GuestVbd*> mine;
    for (auto& v : vbds) {
      if (v->domid == domid) mine.push_back(v.get());
    }
    guests.emplace_back([&, domid, mine] {
      run_guest(h, domid, mine, opt, vbd, backend_queues, journal_fd, stop, connected, failed, finished);
    });
  }

  // Live figures once a second until the time is up or a signal comes.
  auto last = Clock::now();
  const int sig = wait_for_termination(1s, [&] {
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    fmt::print("\n[{:5.1f}s] {}/{} VBDs connected\n", std::chrono::duration<double>(now - t0).count(), connected.load(),
               vbds.size());
    fmt::print("  {:<12} {:>9} {:>8} {:>9} {:>9} {:>7} {:>10}\n", "vbd", "IOPS", "MB/s", "p50 us", "p99 us", "errors",
               "mismatches");
    uint64_t total_ops = 0;
    for (auto& v : vbds) {
      const uint64_t n = load_sum(*v, [](const BlkLoadStats& s) { return s.ops.get(); });
      const uint64_t b = load_sum(*v, [](const BlkLoadStats& s) { return s.read_bytes.get() + s.write_bytes.get(); });
      LatencyHistogram lat;  // since the start, over the VBD's rings
      if (v->ready.load(std::memory_order_acquire)) {
        for (const auto& l : v->loads) lat.add(l->stats().latency);
      }
      fmt::print("  d{}/xvd{:<6} {:>9.0f} {:>8.1f} {:>9.1f} {:>9.1f} {:>7} {:>10}\n", v->domid,
                 static_cast<char>('a' + (v->devid - 51712) / 16), static_cast<double>(n - v->shown_ops) / dt,
                 static_cast<double>(b - v->shown_bytes) / dt / 1e6,
                 static_cast<double>(lat.percentile_ns(0.5)) / 1000.0,
                 static_cast<double>(lat.percentile_ns(0.99)) / 1000.0,
                 load_sum(*v, [](const BlkLoadStats& s) { return s.errors.get(); }),
                 load_sum(*v, [](const BlkLoadStats& s) { return s.mismatches.get(); }));
      v->shown_ops = n;
      v->shown_bytes = b;
      total_ops += n;
    }
    auto& c = h.counters();
    fmt::print("  grant map calls {} (live pages {}) | notifications {} | total I/Os {}\n", c.map_calls.load(),
               c.mapped_pages_live.load(), c.notify_calls.load(), total_ops);
    std::fflush(stdout);
    // A read-only run lasts as long as the reading.
    if (opt.read_only) return failed.load() == 0 && finished.load() < vbds.size();
    return now < deadline && failed.load() == 0;
  });
  stop.store(true);
  for (auto& t : guests) t.join();

  uint64_t total = 0, errors = 0, mismatches = 0, bytes = 0;
  for (auto& v : vbds) {
    total += v->final_ops;
    bytes += v->final_bytes;
    errors += v->final_errors;
    mismatches += v->final_mismatches;
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  // The toolstack tears the guests down; then nothing may be left.
  for (auto& v : vbds) (void)tool.remove_device("vbd", v->domid, v->devid, kDom0, 5s);
  (*demo)->destroy_guests(opt.run.guests);
  nlohmann::json stats;
  for (int i = 0; i < 500; ++i) {
    stats = bb.daemon->stats();
    if (stats["xenbus"]["devices"] == 0) break;
    std::this_thread::sleep_for(10ms);
  }
  const uint64_t live = h.counters().mapped_pages_live.load();
  const size_t watches = h.xenstored().watch_count();
  const bool ok_run = failed.load() == 0 && errors == 0 && mismatches == 0 && total > 0 &&
                      stats["xenbus"]["devices"] == 0 && stats["mapped_grant_pages"] == 0 && live == 0 &&
                      watches <= watches_idle;
  bb.stop();
  if (journal_fd >= 0) ::close(journal_fd);
  for (auto& v : vbds) {
    if (!v->sha256.empty())
      fmt::print("sha256 {}  d{}/xvd{}\n", v->sha256, v->domid, static_cast<char>('a' + (v->devid - 51712) / 16));
  }
  vbds.clear();
  if (own_dir) std::filesystem::remove_all(dir, ec);
  fmt::print("\nsummary: {} I/Os ({:.1f} MB) over {} VBDs in {:.1f} s, {} errors, {} verify mismatches{}\n", total,
             static_cast<double>(bytes) / 1e6, opt.run.guests * opt.vbds, secs, errors, mismatches,
             sig ? " (interrupted)" : "");
  fmt::print(
      "self-check: devices left {}, grant pages still mapped {} (daemon) / {} (host), watches {} (idle {}) -> {}\n",
      stats["xenbus"]["devices"].get<uint64_t>(), stats["mapped_grant_pages"].get<uint64_t>(), live, watches,
      watches_idle, ok_run ? "OK" : "FAILED");
  write_summary(opt.run.json, {{"ios", total},
                               {"bytes", bytes},
                               {"errors", errors},
                               {"mismatches", mismatches},
                               {"vbds", opt.run.guests * opt.vbds},
                               {"seconds", secs},
                               {"self_check", ok_run}});
  return ok_run ? 0 : 1;
}

void add_blkback_demo_cli(CLI::App& app, BlkDemoOptions& opt) {
  add_run_cli(app, opt.run, 256, 0.5);
  app.add_option("--vbds", opt.vbds, "disks per guest")->check(CLI::Range(1, 16));
  app.add_option("--queues", opt.queues, "queues per disk the guests ask for")->check(CLI::Range(1, 16));
  app.add_option("--image-dir", opt.image_dir, "where the guests' raw images go (default: a temp dir)");
  app.add_option("--image-mib", opt.image_mib, "size of each image")->check(CLI::Range(1, 1 << 20));
  app.add_option("--queue-depth", opt.queue_depth, "I/Os in flight per ring")->check(CLI::Range(1, 32));
  app.add_option("--block-size", opt.block_size, "bytes per I/O")
      ->check(CLI::IsMember({512u, 4096u, 8192u, 16384u, 32768u, 65536u, 131072u}));
  app.add_option("--read-percent", opt.read_percent, "reads in the mix")->check(CLI::Range(0, 100));
  app.add_flag("!--no-verify", opt.verify, "do not check every byte read against what was written");
  app.add_flag("!--no-persistent-front", opt.persistent_front, "guests do not use persistent grants");
  app.add_option("--image", opt.image,
                 "serve this existing image ([raw:|vhd:]PATH; several guests: a differencing child each)");
  app.add_flag("--read-only", opt.read_only, "guests only read their disk once, in order, and print its SHA-256");
  app.add_option("--journal", opt.journal, "the verify load's flush journal (W <block> <generation> ... F)");
}

}  // namespace xenpath::sim
