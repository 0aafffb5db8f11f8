// xenpath-blkback: the blkif backend daemon.
//
// With /dev/xen (a dom0 or driver domain) it serves every backend/vbd (or
// --backend-type) device the toolstack gives this domain, through
// libxenstore/libxengnttab/libxenevtchn; the kernel's xen-blkback must not be
// loaded (it would race us for the same devices). Without Xen it runs the
// same daemon on the embedded simulated host, with simulated guests doing
// I/O through it and live per-VBD figures: the README's first command.
//
// Operators: SIGTERM/SIGINT disconnect every device cleanly (all grants
// unmapped) and exit; a restarted daemon takes back devices that are still
// in InitWait/Connected. --stats-file is a JSON document rewritten every
// interval (devices, per-VBD counters, mapped grant pages, bound ports).
#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <vector>

#include "blkback/sim_blkfront.h"
#include "blkback/vbd_device.h"
#include "common/daemon.h"
#include "common/log.h"
#include "common/sim/sim_host.h"
#include "common/sim/sim_toolstack.h"
#include "common/sim/sim_xenbus_frontend.h"
#include "common/sim/sim_xenstored.h"
#include "common/xenbus/keys.h"

namespace {

using namespace std::chrono_literals;
using namespace xenpath;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string platform = "auto";
  DaemonOptions daemon;
  VbdOptions vbd;
  unsigned stats_interval_ms = 1000;
  // Simulated host only.
  unsigned guests = 4;
  unsigned vbds = 1;
  unsigned queues = 2;
  double seconds = 10;
  std::string image_dir;
  uint64_t image_mib = 64;
  unsigned queue_depth = 32;
  uint32_t block_size = 4096;
  unsigned read_percent = 70;
  bool persistent_front = true;
  std::string json;
};

// Everything the daemon owns for blkif: a BlkWorker per worker reactor.
struct Blkback {
  std::vector<std::unique_ptr<BlkWorker>> workers;
  std::vector<BlkWorker*> ptrs() const {
    std::vector<BlkWorker*> v;
    for (auto& w : workers) v.push_back(w.get());
    return v;
  }
};

struct DeviceTotals {
  uint64_t reads = 0, writes = 0, read_bytes = 0, write_bytes = 0, flushes = 0, barriers = 0, discards = 0;
  uint64_t errors = 0, in_flight = 0, requests = 0, notifications = 0, halted = 0;
};

DeviceTotals totals(const VbdDevice& d) {
  DeviceTotals t;
  if (!d.connected()) return t;
  for (size_t q = 0; q < d.queue_count(); ++q) {
    const VbdQueueStats& s = d.queue_stats(q);
    t.reads += s.reads.get();
    t.writes += s.writes.get();
    t.read_bytes += s.read_bytes.get();
    t.write_bytes += s.write_bytes.get();
    t.flushes += s.flushes.get();
    t.barriers += s.barriers.get();
    t.discards += s.discards.get();
    t.errors += s.errors.total();
    t.in_flight += s.in_flight.get();
    t.requests += s.ring.requests.get();
    t.notifications += s.ring.notifications_sent.get();
    t.halted += s.ring.halted.get();
  }
  return t;
}

// Builds the daemon over `platform`: workers, the vbd type, stats.
Result<std::unique_ptr<BackendDaemon>> start_daemon(XenPlatform& platform, const Options& opt, Blkback& bb) {
  XP_ASSIGN_OR_RETURN(auto daemon, BackendDaemon::create(platform, opt.daemon));
  for (Reactor* r : daemon->workers()) {
    XP_ASSIGN_OR_RETURN(auto w, BlkWorker::create(*r, platform));
    bb.workers.push_back(std::move(w));
  }
  BackendDaemon* d = daemon.get();
  XP_TRY(daemon->add_type(std::make_unique<VbdDeviceType>(
      bb.ptrs(), opt.vbd, [d](const DeviceAddress& a, int err) { d->report_device_error(a, err); })));
  daemon->add_stats([d, &bb](nlohmann::json& j) {
    uint64_t mapped = 0, ports = 0;
    for (auto& w : bb.workers) {
      mapped += w->grant_table().mapped_pages();
      ports += w->queues();
    }
    j["mapped_grant_pages"] = mapped;
    j["bound_ports"] = ports;
    nlohmann::json devs = nlohmann::json::array();
    d->driver().for_each_device([&](const DeviceAddress& a, XenbusState st, BackendDevice& dev) {
      const auto& vbd = static_cast<const VbdDevice&>(dev);
      const DeviceTotals t = totals(vbd);
      devs.push_back({{"type", a.type},
                      {"frontend", a.frontend_id},
                      {"devid", a.devid},
                      {"state", static_cast<int>(st)},
                      {"connected", vbd.connected()},
                      {"queues", vbd.connected() ? vbd.queue_count() : 0},
                      {"sectors", vbd.image().info().size_bytes / 512},
                      {"reads", t.reads},
                      {"writes", t.writes},
                      {"read_bytes", t.read_bytes},
                      {"write_bytes", t.write_bytes},
                      {"flushes", t.flushes},
                      {"barriers", t.barriers},
                      {"discards", t.discards},
                      {"errors", t.errors},
                      {"in_flight", t.in_flight},
                      {"halted", t.halted}});
    });
    j["devices"] = std::move(devs);
  });
  XP_TRY(daemon->start());
  return daemon;
}

void stop_daemon(std::unique_ptr<BackendDaemon>& daemon, Blkback& bb) {
  if (daemon) daemon->stop();
  bb.workers.clear();  // after the reactors stopped: nothing runs on them now
  daemon.reset();
}

// --------------------------------------------------------------- real Xen

int run_xen(const Options& opt) {
  auto platform = open_libxen_platform();
  if (!platform) {
    spdlog::critical("cannot open the Xen interfaces: {}", error_string(platform.error()));
    return 2;
  }
  Blkback bb;
  auto daemon = start_daemon(**platform, opt, bb);
  if (!daemon) {
    spdlog::critical("cannot start: {}", error_string(daemon.error()));
    return 2;
  }
  fmt::print("xenpath-blkback: serving backend/{} of domain {} ({} workers); SIGTERM to stop\n",
             opt.vbd.type_name, (*platform)->self(), (*daemon)->workers().size());
  std::fflush(stdout);
  const int sig = wait_for_termination(1s, [] { return true; });
  spdlog::info("signal {}: disconnecting every device", sig);
  stop_daemon(*daemon, bb);
  return 0;
}

// ------------------------------------------------------ the simulated host

// One simulated guest's disk: its xenbus frontend and a ring per queue.
struct GuestVbd {
  DomId domid = 0;
  uint32_t devid = 0;
  std::unique_ptr<sim::SimXenbusFrontend> xenbus;
  std::vector<std::unique_ptr<sim::SimBlkfront>> rings;
  // Written by the guest thread, read by the reporter.
  std::atomic<uint64_t> ios{0}, bytes{0}, lat_ns{0}, errors{0}, mismatches{0};
  uint64_t shown_ios = 0, shown_bytes = 0, shown_lat = 0;
};

// The blkfront side of the handshake, as Linux blkfront does it: read the
// backend's features, build one ring per queue (persistent grants, indirect
// segments and ring order as offered), publish the keys, wait for Connected.
Status attach_vbd(sim::SimHost& host, sim::SimDomain& dom, XenStore& gxs, EventChannel& ev, GuestVbd& v,
                  const Options& opt) {
  const std::string fe = sim::SimToolstack::frontend_path(v.domid, "vbd", v.devid);
  XP_ASSIGN_OR_RETURN(v.xenbus, sim::SimXenbusFrontend::attach(gxs, fe, 5000ms));
  XP_TRY(v.xenbus->wait_backend(XenbusState::kInitWait));
  auto be = gxs.read(kXsNoTxn, fe + "/backend");
  if (!be) return unexpected(be.error());
  auto num = [&](const char* k, uint32_t dflt) -> uint32_t {
    auto s = gxs.read(kXsNoTxn, *be + "/" + k);
    if (!s) return dflt;
    auto n = parse_decimal<uint32_t>(*s);
    return n ? *n : dflt;
  };
  const unsigned max_queues = num("multi-queue-max-queues", 1);
  const unsigned nq = std::max(1u, std::min(opt.queues, max_queues));
  sim::SimBlkfront::Options o;
  o.ring_order = std::min(num("max-ring-page-order", 0), 2u);
  o.max_indirect_segments = num("feature-max-indirect-segments", 0);
  o.persistent = opt.persistent_front && num("feature-persistent", 0) == 1;
  sim::XsKeys keys;
  keys.emplace_back("protocol", std::string(blk_protocol_name(o.protocol)));
  keys.emplace_back("feature-persistent", o.persistent ? "1" : "0");
  if (nq > 1) keys.emplace_back("multi-queue-num-queues", std::to_string(nq));
  if (o.ring_order > 0) keys.emplace_back("ring-page-order", std::to_string(o.ring_order));
  for (unsigned q = 0; q < nq; ++q) {
    XP_ASSIGN_OR_RETURN(auto ring, sim::SimBlkfront::create(dom, ev, o));
    const std::string prefix = nq > 1 ? fmt::format("queue-{}/", q) : "";
    if (o.ring_order == 0) {
      keys.emplace_back(prefix + "ring-ref", std::to_string(ring->ring_refs()[0]));
    } else {
      for (size_t i = 0; i < ring->ring_refs().size(); ++i) {
        keys.emplace_back(fmt::format("{}ring-ref{}", prefix, i), std::to_string(ring->ring_refs()[i]));
      }
    }
    keys.emplace_back(prefix + "event-channel", std::to_string(ring->port()));
    v.rings.push_back(std::move(ring));
  }
  (void)host;
  return v.xenbus->connect(keys);
}

int run_sim(const Options& opt) {
  auto host = sim::SimHost::create({});
  if (!host) {
    spdlog::critical("simulated host: {}", error_string(host.error()));
    return 2;
  }
  sim::SimHost& h = **host;
  auto platform = sim::make_sim_platform(h);

  // Images: one raw file per VBD, preallocated so the I/O hits the disk.
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

  Blkback bb;
  auto daemon = start_daemon(*platform, opt, bb);
  if (!daemon) {
    spdlog::critical("cannot start: {}", error_string(daemon.error()));
    return 2;
  }
  const size_t watches_idle = h.xenstored().watch_count();
  fmt::print("xenpath-blkback on the simulated Xen host: {} guests x {} VBDs, images in {}\n"
             "  xenstored: XENSTORED_PATH={} xenstore-ls /local/domain/0/backend/vbd\n",
             opt.guests, opt.vbds, dir.string(), h.xenstored_path());

  auto tool_xs = h.open_xenstore(kDom0);
  if (!tool_xs) return 2;
  sim::SimToolstack tool(**tool_xs);
  std::vector<std::unique_ptr<GuestVbd>> vbds;
  for (unsigned g = 0; g < opt.guests; ++g) {
    const DomId domid = static_cast<DomId>(g + 1);
    if (!h.create_domain(domid, 16384, fmt::format("guest{}", domid))) return 2;
    for (unsigned i = 0; i < opt.vbds; ++i) {
      auto v = std::make_unique<GuestVbd>();
      v->domid = domid;
      v->devid = 51712 + 16 * i;  // xvda, xvdb... as libxl numbers them
      const auto path = dir / fmt::format("guest{}-xvd{}.img", domid, static_cast<char>('a' + i));
      {
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 || ::posix_fallocate(fd, 0, static_cast<off_t>(image_bytes)) != 0) {
          spdlog::critical("image {}: {}", path.string(), error_string(errno));
          if (fd >= 0) ::close(fd);
          return 2;
        }
        ::close(fd);
      }
      if (auto r = tool.add_device("vbd", domid, v->devid, kDom0,
                                   {{"params", path.string()}, {"mode", "w"}, {"type", "file"}},
                                   {{"virtual-device", std::to_string(v->devid)}, {"device-type", "disk"}});
          !r) {
        spdlog::critical("add vbd: {}", error_string(r.error()));
        return 2;
      }
      vbds.push_back(std::move(v));
    }
  }

  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.seconds));
  std::atomic<bool> stop{false};
  std::atomic<unsigned> connected{0}, failed{0};
  std::vector<std::thread> guests;
  for (unsigned g = 0; g < opt.guests; ++g) {
    guests.emplace_back([&, g] {
      const DomId domid = static_cast<DomId>(g + 1);
      auto ev = h.open_event_channel(domid);
      auto gxs = h.open_xenstore(domid);
      sim::SimDomain* dom = h.domain(domid);
      if (!ev || !gxs || dom == nullptr) {
        ++failed;
        return;
      }
      std::vector<GuestVbd*> mine;
      for (auto& v : vbds) {
        if (v->domid == domid) mine.push_back(v.get());
      }
      bool attached = true;
      for (GuestVbd* v : mine) {
        if (auto st = attach_vbd(h, *dom, **gxs, **ev, *v, opt); !st) {
          spdlog::error("guest {} vbd {}: {}", domid, v->devid, error_string(st.error()));
          ++failed;
          attached = false;
          break;
        }
        ++connected;
      }
      // Random I/O, a queue depth's worth at a time per ring.
      std::mt19937_64 rng(domid);
      const uint32_t sectors = opt.block_size / 512;
      const uint64_t blocks = image_bytes / opt.block_size;
      std::vector<std::byte> buf(static_cast<size_t>(opt.queue_depth) * opt.block_size);
      std::vector<sim::SimBlkfront::Io> ios(opt.queue_depth);
      while (attached && !stop.load(std::memory_order_relaxed)) {
        for (GuestVbd* v : mine) {
          for (auto& ring : v->rings) {
            for (unsigned i = 0; i < opt.queue_depth; ++i) {
              ios[i] = {};
              ios[i].op = (rng() % 100) < opt.read_percent ? BLKIF_OP_READ : BLKIF_OP_WRITE;
              ios[i].sector = (rng() % blocks) * sectors;
              ios[i].sectors = sectors;
              ios[i].data = buf.data() + static_cast<size_t>(i) * opt.block_size;
            }
            const auto s = Clock::now();
            auto st = ring->run(ios, 10s);
            const uint64_t ns = static_cast<uint64_t>(std::chrono::nanoseconds(Clock::now() - s).count());
            uint64_t okc = 0;
            for (auto& io : ios) okc += io.status == BLKIF_RSP_OKAY;
            if (!st || okc != ios.size()) v->errors.fetch_add(ios.size() - okc + (st ? 0 : 1));
            v->ios.fetch_add(okc);
            v->bytes.fetch_add(okc * opt.block_size);
            v->lat_ns.fetch_add(ns * okc);  // every I/O of the batch waited the batch
          }
        }
      }
      // The frontends go with this thread's xenstore connection and channel.
      for (GuestVbd* v : mine) {
        v->rings.clear();
        if (v->xenbus && !v->xenbus->close()) ++failed;
        v->xenbus.reset();
      }
    });
  }

  // Live figures once a second until the time is up or a signal comes.
  auto last = Clock::now();
  const int sig = wait_for_termination(1s, [&] {
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    fmt::print("\n[{:5.1f}s] {}/{} VBDs connected\n", std::chrono::duration<double>(now - t0).count(),
               connected.load(), vbds.size());
    fmt::print("  {:<16} {:>10} {:>10} {:>12} {:>8}\n", "vbd", "IOPS", "MB/s", "avg lat us", "errors");
    uint64_t total_ios = 0;
    for (auto& v : vbds) {
      const uint64_t n = v->ios.load(), b = v->bytes.load(), l = v->lat_ns.load();
      const uint64_t dn = n - v->shown_ios;
      fmt::print("  d{}/xvd{:<10} {:>10.0f} {:>10.1f} {:>12.1f} {:>8}\n", v->domid,
                 static_cast<char>('a' + (v->devid - 51712) / 16), static_cast<double>(dn) / dt,
                 static_cast<double>(b - v->shown_bytes) / dt / 1e6,
                 dn ? static_cast<double>(l - v->shown_lat) / static_cast<double>(dn) / 1000.0 : 0.0,
                 v->errors.load());
      v->shown_ios = n;
      v->shown_bytes = b;
      v->shown_lat = l;
      total_ios += n;
    }
    auto& c = h.counters();
    fmt::print("  grant map calls {} (live pages {}) | notifications {} | total I/Os {}\n", c.map_calls.load(),
               c.mapped_pages_live.load(), c.notify_calls.load(), total_ios);
    std::fflush(stdout);
    return now < deadline && failed.load() == 0;
  });
  stop.store(true);
  for (auto& t : guests) t.join();

  // The toolstack tears the guests down; then nothing may be left.
  for (auto& v : vbds) (void)tool.remove_device("vbd", v->domid, v->devid, kDom0, 5s);
  for (unsigned g = 0; g < opt.guests; ++g) (void)h.destroy_domain(static_cast<DomId>(g + 1));
  nlohmann::json stats;
  for (int i = 0; i < 500; ++i) {
    stats = (*daemon)->stats();
    if (stats["xenbus"]["devices"] == 0) break;
    std::this_thread::sleep_for(10ms);
  }
  uint64_t total = 0, errors = 0, bytes = 0;
  for (auto& v : vbds) {
    total += v->ios.load();
    errors += v->errors.load();
    bytes += v->bytes.load();
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const uint64_t live = h.counters().mapped_pages_live.load();
  const size_t watches = h.xenstored().watch_count();
  const bool ok_run = failed.load() == 0 && errors == 0 && total > 0 && stats["xenbus"]["devices"] == 0 &&
                      stats["mapped_grant_pages"] == 0 && live == 0 && watches <= watches_idle;
  stop_daemon(*daemon, bb);
  if (own_dir) std::filesystem::remove_all(dir, ec);
  fmt::print("\nsummary: {} I/Os ({:.1f} MB) over {} VBDs in {:.1f} s, {} errors{}\n", total,
             static_cast<double>(bytes) / 1e6, vbds.size(), secs, errors, sig ? " (interrupted)" : "");
  fmt::print("self-check: devices left {}, grant pages still mapped {} (daemon) / {} (host), watches {} (idle {}) -> {}\n",
             stats["xenbus"]["devices"].get<uint64_t>(), stats["mapped_grant_pages"].get<uint64_t>(), live, watches,
             watches_idle, ok_run ? "OK" : "FAILED");
  if (!opt.json.empty()) {
    nlohmann::json j;
    j["ios"] = total;
    j["bytes"] = bytes;
    j["errors"] = errors;
    j["vbds"] = vbds.size();
    j["seconds"] = secs;
    j["self_check"] = ok_run;
    std::ofstream(opt.json) << j.dump(2) << "\n";
  }
  return ok_run ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"xenpath-blkback: the blkif backend daemon (Xen when /dev/xen exists, else the simulated host)"};
  Options opt;
  opt.daemon.name = "xenpath-blkback";
  std::string level = "info";
  bool verbose = false;
  app.add_option("--platform", opt.platform, "auto (Xen when /dev/xen exists), xen or sim")
      ->check(CLI::IsMember({"auto", "xen", "sim"}));
  app.add_option("--workers", opt.daemon.workers, "worker reactors (datapath threads); 0: one per CPU");
  app.add_option("--first-cpu", opt.daemon.first_cpu, "pin worker i to CPU first-cpu + i");
  app.add_option("--backend-type", opt.vbd.type_name,
                 "xenstore device type to serve: vbd (kernel blkback's) or qdisk (QEMU's), or another name");
  app.add_option("--max-queues", opt.vbd.max_queues, "multi-queue-max-queues (0: one per worker)");
  app.add_option("--max-ring-page-order", opt.vbd.max_ring_order, "max-ring-page-order")->check(CLI::Range(0, 4));
  app.add_option("--max-indirect-segments", opt.vbd.max_indirect_segments, "feature-max-indirect-segments")
      ->check(CLI::Range(0, 4096));
  app.add_flag("!--no-persistent", opt.vbd.persistent, "do not offer feature-persistent");
  app.add_option("--stats-file", opt.daemon.stats_file, "JSON stats document, rewritten every interval");
  app.add_option("--stats-interval-ms", opt.stats_interval_ms, "stats file interval")->check(CLI::Range(50, 3600000));
  app.add_option("--log-level", level, "trace, debug, info, warn, error");
  app.add_flag("-v,--verbose", verbose, "debug logging");
  auto* sim_opts = app.add_option_group("simulated host", "used with --platform sim (or auto without Xen)");
  sim_opts->add_option("--guests", opt.guests, "simulated guests")->check(CLI::Range(1, 256));
  sim_opts->add_option("--vbds", opt.vbds, "disks per guest")->check(CLI::Range(1, 16));
  sim_opts->add_option("--queues", opt.queues, "queues per disk the guests ask for")->check(CLI::Range(1, 16));
  sim_opts->add_option("--seconds", opt.seconds, "how long the guests drive I/O")->check(CLI::Range(0.5, 86400.0));
  sim_opts->add_option("--image-dir", opt.image_dir, "where the guests' raw images go (default: a temp dir)");
  sim_opts->add_option("--image-mib", opt.image_mib, "size of each image")->check(CLI::Range(1, 1 << 20));
  sim_opts->add_option("--queue-depth", opt.queue_depth, "I/Os in flight per ring")->check(CLI::Range(1, 32));
  sim_opts->add_option("--block-size", opt.block_size, "bytes per I/O")
      ->check(CLI::IsMember({512u, 4096u, 8192u, 16384u, 32768u, 65536u, 131072u}));
  sim_opts->add_option("--read-percent", opt.read_percent, "reads in the mix")->check(CLI::Range(0, 100));
  sim_opts->add_option("--json", opt.json, "write the summary as JSON");
  CLI11_PARSE(app, argc, argv);
  opt.daemon.stats_interval = std::chrono::milliseconds(opt.stats_interval_ms);

  log_init(verbose ? "debug" : level);
  block_termination_signals();
  const bool xen = opt.platform == "xen" || (opt.platform == "auto" && xen_available());
  return xen ? run_xen(opt) : run_sim(opt);
}
