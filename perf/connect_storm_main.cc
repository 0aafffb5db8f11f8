// xenpath-connect-storm: the connect storm of issue 17 on the simulated host
// (perf/connect_storm.sh wraps it). N guests, one VBD each, are plugged at
// once by the toolstack; every guest's blkfront does the real handshake
// (InitWait, ring and event channel, Initialised, Connected) against the
// production BlkbackService on a BackendDaemon with W workers, its control
// plane on the production libxenstore adapter over the simulated
// xenstored's socket. Measured:
//   - connect: first add to the last device Connected (backend and
//     frontend), the daemon's xenstore operations per device (its socket
//     connection; the toolstack and the guests use in-process connections),
//     the daemon threads' CPU per device;
//   - memory: what the daemon's threads allocated with operator new and
//     still hold (every allocation is tagged with whether a daemon thread
//     made it), per device; the whole process's RSS and anonymous memory
//     (guests, simulated xenstored and hypervisor included) per device; the
//     ring pages mapped;
//   - idle: the daemon threads' CPU over --idle-seconds with every device
//     connected and silent, and the reactors' wake-ups, epoll_waits and
//     iterations per second, the epoll registrations of each epoll instance and the timer fds, the
//     process's threads by name;
//   - destroy: all guests die at once (`xl destroy`: the toolstack removes
//     the device directories, the domain goes), time until the daemon
//     released every device, its xenstore operations per device.
// Images: NullImage (blkback/image_null.h) by default, so the figures are
// the backend's own; --image raw gives every VBD a sparse raw file.
//
// Threads: main (toolstack, guests' frontends, report); the daemon's
// reactors; the simulated xenstored's.
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "blkback/blk_service.h"
#include "blkback/image_null.h"
#include "common/daemon_main.h"
#include "common/log.h"
#include "sim/blk/sim_blkhost.h"
#include "sim/sim_demo.h"
#include "sim/sim_xenstored.h"

// Every operator new of this program carries a 16-byte tag: its size and
// whether a daemon thread made it, so the daemon's heap can be told from
// the guests' and the simulated xenstored's in one process. Allocations by
// the C library's malloc directly (libxenstore's buffers) are not seen.
namespace {

thread_local bool t_daemon_thread = false;
std::atomic<int64_t> g_daemon_heap{0};
std::atomic<int64_t> g_daemon_allocs{0};
// Live daemon bytes by allocation size class (bucket b: sizes below 2^b).
constexpr int kSizeClasses = 40;
std::atomic<int64_t> g_daemon_by_class[kSizeClasses];

int size_class(std::size_t n) noexcept { return std::min(kSizeClasses - 1, static_cast<int>(std::bit_width(n))); }

struct alignas(16) HeapTag {
  uint64_t size;
  uint64_t daemon;
};

void* tagged_alloc(std::size_t n) noexcept {
  auto* t = static_cast<HeapTag*>(std::malloc(n + sizeof(HeapTag)));
  if (t == nullptr) return nullptr;
  t->size = n;
  t->daemon = t_daemon_thread ? 1 : 0;
  if (t->daemon) {
    g_daemon_heap.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
    g_daemon_allocs.fetch_add(1, std::memory_order_relaxed);
    g_daemon_by_class[size_class(n)].fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
  }
  return t + 1;
}

void tagged_free(void* p) noexcept {
  if (p == nullptr) return;
  HeapTag* t = static_cast<HeapTag*>(p) - 1;
  if (t->daemon) {
    g_daemon_heap.fetch_sub(static_cast<int64_t>(t->size), std::memory_order_relaxed);
    g_daemon_allocs.fetch_sub(1, std::memory_order_relaxed);
    g_daemon_by_class[size_class(t->size)].fetch_sub(static_cast<int64_t>(t->size), std::memory_order_relaxed);
  }
  std::free(t);
}

}  // namespace

void* operator new(std::size_t n) {
  if (void* p = tagged_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = tagged_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return tagged_alloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return tagged_alloc(n); }
void operator delete(void* p) noexcept { tagged_free(p); }
void operator delete[](void* p) noexcept { tagged_free(p); }
void operator delete(void* p, std::size_t) noexcept { tagged_free(p); }
void operator delete[](void* p, std::size_t) noexcept { tagged_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { tagged_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { tagged_free(p); }

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Bytes of /proc/self/smaps_rollup's `key` line ("Rss:", "Anonymous:").
uint64_t smaps_rollup(const char* key) {
  std::ifstream f("/proc/self/smaps_rollup");
  std::string k;
  uint64_t kib = 0;
  std::string unit;
  while (f >> k) {
    if (k == key) {
      f >> kib;
      return kib * 1024;
    }
    std::getline(f, unit);
  }
  return 0;
}

// The process's threads by name (/proc/self/task/*/comm).
std::map<std::string, unsigned> threads_by_name() {
  std::map<std::string, unsigned> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream f(e.path() / "comm");
    std::string name;
    std::getline(f, name);
    ++out[name];
  }
  return out;
}

// The process's epoll instances and the fds registered in each (the "tfd:"
// lines of /proc/self/fdinfo/<fd>), most first: the reactors' (the control
// reactor's, each worker's) and the simulated xenstored's.
std::vector<unsigned> epoll_registrations() {
  std::vector<unsigned> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    std::error_code lec;
    if (std::filesystem::read_symlink(e.path(), lec).string() != "anon_inode:[eventpoll]") continue;
    std::ifstream f("/proc/self/fdinfo/" + e.path().filename().string());
    unsigned n = 0;
    for (std::string line; std::getline(f, line);) n += line.rfind("tfd:", 0) == 0;
    out.push_back(n);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

// Timer fds in the process (a reactor's timers are each one).
unsigned timerfd_count() {
  unsigned n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    std::error_code lec;
    n += std::filesystem::read_symlink(e.path(), lec).string() == "anon_inode:[timerfd]";
  }
  return n;
}

size_t thread_count(const std::map<std::string, unsigned>& by_name) {
  size_t n = 0;
  for (const auto& [name, count] : by_name) n += count;
  return n;
}

// What the measurement reads of the daemon's threads: its reactors' stats,
// epoll registrations, pollers and CPU clocks.
struct DaemonProbe {
  std::vector<Reactor*> reactors;  // control first
  std::vector<clockid_t> clocks;

  static DaemonProbe of(BackendDaemon& d) {
    DaemonProbe p;
    p.reactors.push_back(&d.control());
    for (Reactor* r : d.workers()) p.reactors.push_back(r);
    for (Reactor* r : p.reactors) {
      clockid_t c{};
      r->call([&] {
        (void)pthread_getcpuclockid(pthread_self(), &c);
        t_daemon_thread = true;
      });
      p.clocks.push_back(c);
    }
    return p;
  }

  double cpu_seconds() const {
    double s = 0;
    for (clockid_t c : clocks) {
      timespec ts{};
      if (clock_gettime(c, &ts) == 0) s += static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
    }
    return s;
  }

  struct Snapshot {
    std::vector<ReactorStats> stats;
  };
  Snapshot snapshot() const {
    Snapshot s;
    for (Reactor* r : reactors) r->call([&] { s.stats.push_back(r->stats()); });
    return s;
  }
};

// The daemon's xenstore requests per device between two snapshots, by
// type (xs_wire.h's names).
nlohmann::json ops_by_type(const sim::XsOpStats& a, const sim::XsOpStats& b, double devices) {
  static constexpr const char* kNames[XS_TYPE_COUNT] = {"control",
                                                        "directory",
                                                        "read",
                                                        "get_perms",
                                                        "watch",
                                                        "unwatch",
                                                        "transaction_start",
                                                        "transaction_end",
                                                        "introduce",
                                                        "release",
                                                        "get_domain_path",
                                                        "write",
                                                        "mkdir",
                                                        "rm",
                                                        "set_perms",
                                                        "watch_event",
                                                        "error",
                                                        "is_domain_introduced",
                                                        "resume",
                                                        "set_target",
                                                        "restrict",
                                                        "reset_watches",
                                                        "directory_part"};
  nlohmann::json j = nlohmann::json::object();
  for (int t = 0; t < XS_TYPE_COUNT; ++t) {
    if (b.by_type[t] != a.by_type[t]) j[kNames[t]] = static_cast<double>(b.by_type[t] - a.by_type[t]) / devices;
  }
  return j;
}

struct Guest {
  DomId id = 0;
  sim::SimGuestHandles handles;
  std::unique_ptr<sim::SimBlkHost::Disk> disk;
};

constexpr uint32_t kDevid = 51712;  // xvda

}  // namespace
}  // namespace xenpath

int main(int argc, char** argv) {
  using namespace xenpath;
  CLI::App app{"connect storm: N guests with one VBD each plugged at once on the simulated host"};
  unsigned guests = 1000, workers = 2;
  double idle_seconds = 10;
  std::string image = "null", dir, json;
  uint64_t image_mib = 64;
  app.add_option("--guests", guests, "guests, one VBD each")->check(CLI::Range(1u, 4000u));
  app.add_option("--workers", workers, "backend worker reactors")->check(CLI::Range(1u, 64u));
  app.add_option("--idle-seconds", idle_seconds, "how long the connected devices sit idle")
      ->check(CLI::Range(0.5, 600.0));
  app.add_option("--image", image, "null (NullImage) | raw (a sparse raw file per VBD)")
      ->check(CLI::IsMember({"null", "raw"}));
  app.add_option("--image-mib", image_mib, "each disk's size")->check(CLI::Range(1, 1 << 20));
  app.add_option("--dir", dir, "--image raw: where the files go (default: a temp dir, removed)");
  app.add_option("--json", json, "write the result as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  log_init("warn");

  // Each guest holds a xenstore connection and an event channel handle
  // (descriptors in this process), and each raw VBD its file.
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < 8 * guests + 256) {
    nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 8 * guests + 256);
    (void)::setrlimit(RLIMIT_NOFILE, &nofile);
  }

  std::filesystem::path image_dir = dir;
  bool own_dir = false;
  if (image == "raw" && image_dir.empty()) {
    char tmpl[] = "/var/tmp/xenpath-storm-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return 2;
    image_dir = tmpl;
    own_dir = true;
  }
  std::error_code ec;
  if (image == "raw") std::filesystem::create_directories(image_dir, ec);

  sim::SimHost::Options ho;
  ho.grant_entries_per_domain = 64;
  auto demo = sim::SimDemoHost::create(ho);
  if (!demo) return 2;
  sim::SimHost& h = (*demo)->host();
  sim::SimToolstack& tool = (*demo)->tool();

  VbdOptions vo;
  vo.probe_format = false;
  const uint64_t image_bytes = image_mib << 20;
  if (image == "null") {
    vo.open_image = [image_bytes](const VbdParams& p, bool ro) -> Result<std::unique_ptr<Image>> {
      XP_ASSIGN_OR_RETURN(auto img, NullImage::create(p.path, image_bytes, 512, ro));
      return std::unique_ptr<Image>(std::move(img));
    };
  }
  DaemonOptions dopt = BlkbackService::cli_defaults().daemon;
  dopt.workers = workers;
  dopt.ctl_socket.clear();
  dopt.stats_file.clear();
  ServedDaemon<BlkbackService> bb;
  if (auto st = bb.start((*demo)->platform(), dopt, vo); !st) {
    std::fprintf(stderr, "daemon: %s\n", error_string(st.error()).c_str());
    return 2;
  }
  BackendDriver& driver = bb.daemon->driver();
  const DaemonProbe probe = DaemonProbe::of(*bb.daemon);

  if (!(*demo)->create_guests(guests, 64)) return 2;
  std::vector<Guest> gs(guests);
  for (unsigned g = 0; g < guests; ++g) {
    gs[g].id = sim::SimDemoHost::guest_id(g);
    auto hd = sim::SimGuestHandles::open(h, gs[g].id);
    if (!hd) {
      std::fprintf(stderr, "guest %u: %s\n", g, error_string(hd.error()).c_str());
      return 2;
    }
    gs[g].handles = std::move(*hd);
  }
  std::vector<std::string> params(guests);
  for (unsigned g = 0; g < guests; ++g) {
    params[g] = image == "null" ? "/null/" + std::to_string(gs[g].id)
                                : (image_dir / ("guest" + std::to_string(gs[g].id) + ".img")).string();
    if (image == "raw") {
      const int fd = ::open(params[g].c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(image_bytes)) != 0) return 2;
      ::close(fd);
    }
  }

  // Baselines: the daemon is up and serves nothing.
  std::this_thread::sleep_for(200ms);
  const auto xs0 = h.xenstored().socket_stats();
  const int64_t heap0 = g_daemon_heap.load();
  std::vector<int64_t> class0(kSizeClasses);
  for (int c = 0; c < kSizeClasses; ++c) class0[c] = g_daemon_by_class[c].load();
  const int64_t allocs0 = g_daemon_allocs.load();
  const uint64_t rss0 = smaps_rollup("Rss:");
  const uint64_t anon0 = smaps_rollup("Anonymous:");
  const size_t threads0 = thread_count(threads_by_name());
  const double cpu0 = probe.cpu_seconds();

  // The storm: every device plugged at once, then every guest's frontend
  // publishes its ring, then waits for its backend.
  const auto t0 = Clock::now();
  for (unsigned g = 0; g < guests; ++g) {
    if (auto r =
            tool.add_device("vbd", gs[g].id, kDevid, kDom0, {{"params", params[g]}, {"mode", "w"}, {"type", "file"}},
                            {{"virtual-device", std::to_string(kDevid)}, {"device-type", "disk"}});
        !r) {
      std::fprintf(stderr, "add %u: %s\n", g, error_string(r.error()).c_str());
      return 2;
    }
  }
  const double plug_s = seconds_since(t0);
  sim::SimBlkHost::FrontOptions fo;
  unsigned failed = 0;
  for (Guest& g : gs) {
    auto d = sim::SimBlkHost::publish_disk(*g.handles.domain, *g.handles.xs, *g.handles.evtchn, g.id, kDevid, fo);
    if (!d) {
      if (failed++ == 0) std::fprintf(stderr, "guest %u publish: %s\n", g.id, error_string(d.error()).c_str());
      continue;
    }
    g.disk = std::move(*d);
  }
  const double publish_s = seconds_since(t0);
  for (Guest& g : gs) {
    if (!g.disk) continue;
    if (auto st = sim::SimBlkHost::await_disk(*g.disk); !st) {
      if (failed++ == 0) std::fprintf(stderr, "guest %u connect: %s\n", g.id, error_string(st.error()).c_str());
    }
  }
  const double front_connected_s = seconds_since(t0);
  while (driver.stats().connected.get() < guests - failed && seconds_since(t0) < 60) std::this_thread::sleep_for(1ms);
  const double back_connected_s = seconds_since(t0);
  const double cpu_connect = probe.cpu_seconds() - cpu0;
  // The frontends' Connected writes still reach the daemon: wait until its
  // queue is quiet before counting.
  for (uint64_t ev = ~uint64_t{0}; ev != driver.stats().watch_events.get();) {
    ev = driver.stats().watch_events.get();
    std::this_thread::sleep_for(200ms);
  }
  const auto xs1 = h.xenstored().socket_stats();
  const uint64_t connected = driver.stats().connected.get();

  // Idle: nobody does I/O.
  std::this_thread::sleep_for(500ms);
  const int64_t heap1 = g_daemon_heap.load();
  nlohmann::json by_class = nlohmann::json::object();  // "<2^b" -> bytes per device
  for (int c = 0; c < kSizeClasses; ++c) {
    const int64_t d = g_daemon_by_class[c].load() - class0[c];
    if (d != 0) by_class["<" + std::to_string(uint64_t{1} << c)] = static_cast<double>(d) / guests;
  }
  const int64_t allocs1 = g_daemon_allocs.load();
  const uint64_t rss1 = smaps_rollup("Rss:");
  const uint64_t anon1 = smaps_rollup("Anonymous:");
  const uint64_t ring_pages = h.counters().mapped_pages_live.load();
  const auto threads = threads_by_name();
  const auto epolls = epoll_registrations();
  const unsigned timerfds = timerfd_count();
  const auto snap0 = probe.snapshot();
  // The snapshot woke every reactor (a call() each): let their poll windows
  // end before the CPU clock starts (their iterations still count).
  std::this_thread::sleep_for(300ms);
  const double idle_cpu0 = probe.cpu_seconds();
  const auto ti0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(idle_seconds));
  const double idle_cpu = probe.cpu_seconds() - idle_cpu0;
  const double idle_s = seconds_since(ti0);
  const auto snap1 = probe.snapshot();

  // One device busy among the idle ones: what a request costs the daemon
  // while its worker also holds the others' queues (a cost that grows with
  // the idle devices is work per wake-up proportional to the device count).
  double active_cpu = 0;
  uint64_t active_requests = 0, active_errors = 0, active_iterations = 0;
  if (!gs.empty() && gs[0].disk && !gs[0].disk->queues.empty()) {
    sim::SimBlkfront& front = *gs[0].disk->queues[0];
    constexpr unsigned kBatch = 32, kRounds = 300;
    std::vector<std::vector<std::byte>> bufs(kBatch, std::vector<std::byte>(4096));
    std::vector<sim::SimBlkfront::Io> ios(kBatch);
    const auto a0 = probe.snapshot();
    const double c0 = probe.cpu_seconds();
    for (unsigned r = 0; r < kRounds; ++r) {
      for (unsigned i = 0; i < kBatch; ++i) {
        ios[i] = {};
        ios[i].op = BLKIF_OP_READ;
        ios[i].sector = 8 * ((r * kBatch + i) % 1024);
        ios[i].sectors = 8;
        ios[i].data = bufs[i].data();
      }
      if (!front.run(ios)) {
        ++active_errors;
        break;
      }
      for (const auto& io : ios) active_errors += io.status != BLKIF_RSP_OKAY || io.error != 0;
      active_requests += kBatch;
    }
    active_cpu = probe.cpu_seconds() - c0;
    const auto a1 = probe.snapshot();
    for (size_t i = 1; i < a0.stats.size(); ++i) active_iterations += a1.stats[i].iterations - a0.stats[i].iterations;
  }

  // The destroy storm: every guest dies at once.
  const auto before_destroy = h.xenstored().socket_stats();
  const auto td = Clock::now();
  for (Guest& g : gs) {
    (void)tool.force_remove("vbd", g.id, kDevid, kDom0);
    (void)h.destroy_domain(g.id);
  }
  while ((driver.stats().devices.get() != 0 || h.counters().mapped_pages_live.load() != 0) && seconds_since(td) < 60) {
    std::this_thread::sleep_for(1ms);
  }
  const double destroy_s = seconds_since(td);
  for (uint64_t ops = ~uint64_t{0}; ops != h.xenstored().socket_stats().ops;) {
    ops = h.xenstored().socket_stats().ops;
    std::this_thread::sleep_for(1500ms);
  }
  const auto after_destroy = h.xenstored().socket_stats();
  const uint64_t left = driver.stats().devices.get();
  const uint64_t mapped_left = h.counters().mapped_pages_live.load();
  gs.clear();
  bb.stop();
  if (own_dir) std::filesystem::remove_all(image_dir, ec);

  const double n = guests;
  nlohmann::json workers_j = nlohmann::json::array();
  for (size_t i = 0; i < probe.reactors.size(); ++i) {
    const ReactorStats& a = snap0.stats[i];
    const ReactorStats& b = snap1.stats[i];
    workers_j.push_back({{"reactor", probe.reactors[i]->name()},
                         {"idle_wakeups_per_s", static_cast<double>(b.sleeps - a.sleeps) / idle_s},
                         {"idle_epoll_waits_per_s", static_cast<double>(b.epoll_waits - a.epoll_waits) / idle_s},
                         {"idle_iterations_per_s", static_cast<double>(b.iterations - a.iterations) / idle_s},
                         {"idle_mailbox_tasks", b.mailbox_tasks - a.mailbox_tasks}});
  }
  const double ring_bytes = static_cast<double>(ring_pages) * 4096.0;
  nlohmann::json j = {
      {"guests", guests},
      {"vbds", guests},
      {"workers", workers},
      {"image", image},
      {"connected", connected},
      {"failed", failed},
      {"connect",
       {{"plug_seconds", plug_s},
        {"publish_seconds", publish_s},
        {"front_connected_seconds", front_connected_s},
        {"backend_connected_seconds", back_connected_s},
        {"daemon_xs_ops_per_device", static_cast<double>(xs1.ops - xs0.ops) / n},
        {"daemon_xs_ops_per_device_by_type", ops_by_type(xs0, xs1, n)},
        {"daemon_xs_transactions_per_device", static_cast<double>(xs1.transactions - xs0.transactions) / n},
        {"daemon_xs_conflicts", xs1.conflicts - xs0.conflicts},
        {"daemon_cpu_seconds", cpu_connect},
        {"daemon_cpu_us_per_device", cpu_connect * 1e6 / n}}},
      {"memory",
       {{"daemon_heap_bytes_per_device", static_cast<double>(heap1 - heap0) / n},
        {"daemon_heap_allocations_per_device", static_cast<double>(allocs1 - allocs0) / n},
        {"daemon_heap_bytes_per_device_by_size", by_class},
        {"ring_pages_mapped", ring_pages},
        {"process_rss_bytes_per_device", (static_cast<double>(rss1) - static_cast<double>(rss0)) / n},
        {"process_rss_minus_rings_per_device",
         (static_cast<double>(rss1) - static_cast<double>(rss0) - ring_bytes) / n},
        {"process_anon_bytes_per_device", (static_cast<double>(anon1) - static_cast<double>(anon0)) / n}}},
      {"idle",
       {{"seconds", idle_s},
        {"daemon_cpu_percent_of_core", 100.0 * idle_cpu / idle_s},
        {"reactors", workers_j},
        {"epoll_registrations_per_instance", epolls},
        {"timerfds", timerfds},
        {"process_threads", threads0},
        {"process_threads_connected", thread_count(threads)}}},
      {"one_active_device",
       {{"requests", active_requests},
        {"errors", active_errors},
        {"daemon_cpu_us_per_request", active_requests ? active_cpu * 1e6 / static_cast<double>(active_requests) : 0.0},
        {"worker_iterations_per_request",
         active_requests ? static_cast<double>(active_iterations) / static_cast<double>(active_requests) : 0.0}}},
      {"destroy",
       {{"seconds", destroy_s},
        {"daemon_xs_ops_per_device", static_cast<double>(after_destroy.ops - before_destroy.ops) / n},
        {"daemon_xs_ops_per_device_by_type", ops_by_type(before_destroy, after_destroy, n)},
        {"devices_left", left},
        {"mapped_pages_left", mapped_left}}}};
  nlohmann::json tn;
  for (const auto& [name, count] : threads) tn[name] = count;
  j["idle"]["threads_by_name"] = tn;
  std::printf("%s\n", j.dump(2).c_str());
  sim::write_summary(json, j);
  return failed == 0 && connected == guests && active_errors == 0 && left == 0 && mapped_left == 0 ? 0 : 1;
}
