// net_bench: the netif datapath on the simulated host, side by side with
// dpdk-testpmd on the same kind of DPDK vdev.
//
// Backend rows: a SimNetfront guest (pinned to --guest-cpu) keeps the TX ring
// full, or keeps RX buffers posted, while one VifQueue on a reactor (pinned
// to --backend-cpu) moves packets between the rings and a DPDK port:
//  - net_null: TX frames are freed by the PMD, RX frames are made by the PMD
//    (neither touches packet data, exactly as testpmd's io engine sees them);
//  - net_ring: a back-to-back ring pair; the guest thread also plays the wire
//    (drains what the VIF sent, injects what it receives).
// testpmd rows: `dpdk-testpmd --forward-mode=io --port-topology=loop` with
// its forwarding lcore on the same CPU as our backend, on one net_null port
// (source -> sink) or one net_ring loopback port primed with --tx-first.
//
// CPU is measured honestly: the backend's per-packet cost is its reactor
// thread's CPU time (pthread_getcpuclockid) over the packets it moved, not
// wall time; testpmd's forwarding lcore busy-polls, so its per-packet cost
// is 1/pps. "pps" rows are end to end and may be bounded by the simulated
// guest (reported as guest ns/pkt) rather than by the backend.
//
// --crossover measures guest TX cost per packet with every slot remainder
// grant-mapped vs grant-copied, for one-slot packets of 128 B + R and for
// multi-page packets, and reports the smallest remainder from which mapping
// is cheaper (VifQueue::Config::tx_limits.copy_below).
//
// One program of ~800 lines on purpose: the cases, testpmd's reference runs
// and the report share one measurement harness and one JSON schema.
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/cpu_affinity.h"
#include "netback/net_queue.h"
#include "netback/port_dpdk.h"
#include "sim/net/sim_frames.h"
#include "sim/net/sim_netfront.h"
#include "sim/sim_queue_host.h"

namespace xenpath {
namespace {

using Clock = std::chrono::steady_clock;
using sim::SimNetfront;
constexpr DomId kGuest = 7;

double thread_cpu_seconds(clockid_t c) {
  timespec ts{};
  clock_gettime(c, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Opts {
  double seconds = 2.0;
  double warmup = 0.3;
  std::vector<std::string> vdevs{"null", "ring"};
  std::vector<unsigned> sizes{64, 1500};
  bool gso = true;
  bool testpmd = true;
  std::string testpmd_path = "dpdk-testpmd";
  int backend_cpu = 1;
  int guest_cpu = 0;
  bool crossover = false;
  bool main_table = true;
  int copy_below = -1;  // -1: VifQueue's default
  std::string json_path;
};

enum class Dir { kTx, kRx };
const char* dir_name(Dir d) { return d == Dir::kTx ? "tx" : "rx"; }

struct Row {
  std::string vdev, dir;
  std::string what;  // "64B", "1500B", "gso64k", "copy R=..", ...
  unsigned size = 0;
  double seconds = 0;
  uint64_t packets = 0, bytes = 0;
  double pps = 0, gbps = 0;
  double backend_cpu = 0;        // seconds of reactor-thread CPU (spinning included)
  double backend_busy = 0;       // of which in polls that moved packets
  double pkts_per_poll = 0;      // packets per productive poll (burst fill)
  double meter_ns_per_poll = 0;  // clock-read cost subtracted per productive poll
  double backend_ns_per_pkt = 0;
  double backend_util = 0;  // backend CPU / wall
  double guest_ns_per_pkt = 0;
  double backend_bound_gbps = 0;  // bytes per backend CPU second
  uint64_t map_calls = 0;
  uint64_t copy_calls = 0;
  uint64_t mapped_pages = 0;
  uint64_t dropped = 0;
  // testpmd on the same vdev kind (0: not run)
  double testpmd_pps = 0;
  double testpmd_ns_per_pkt = 0;  // forwarding lcore CPU per packet
  std::string testpmd_mode;
};

DpdkEnv* dpdk(unsigned memory_mb) {
  static DpdkEnv* env = [memory_mb] {
    DpdkEnvOptions o;
    o.memory_mb = memory_mb;
    o.log_level = "lib.eal:error";
    auto r = DpdkEnv::init(o);
    if (!r) {
      std::fprintf(stderr, "DPDK EAL init failed: %s\n", error_string(r.error()).c_str());
      return static_cast<DpdkEnv*>(nullptr);
    }
    return *r;
  }();
  return env;
}

// Brackets the VifQueue in the reactor's poller order (Begin is added
// before the queue, End after it), so the reactor thread's CPU time spent in
// polls that moved something is summed apart from idle spinning: that sum
// over the packets is the backend's per-packet cost even when the guest,
// not the backend, limits the rate. Reactor thread only.
struct MeterState {
  std::function<uint64_t()> progress;  // grows whenever the queue did work
  double t0 = 0;
  uint64_t p0 = 0;
  double busy = 0;  // thread CPU seconds in productive polls
  uint64_t polls = 0;
};
class MeterBegin final : public Poller {
 public:
  explicit MeterBegin(MeterState& s) : s_(s) {}
  bool poll() noexcept override {
    s_.t0 = thread_cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
    s_.p0 = s_.progress();
    return false;
  }
  bool arm() noexcept override { return false; }

 private:
  MeterState& s_;
};
class MeterEnd final : public Poller {
 public:
  explicit MeterEnd(MeterState& s) : s_(s) {}
  bool poll() noexcept override {
    if (s_.progress() != s_.p0) {
      s_.busy += thread_cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - s_.t0;
      ++s_.polls;
    }
    return false;
  }
  bool arm() noexcept override { return false; }

 private:
  MeterState& s_;
};

struct CaseSpec {
  std::string vdev;  // "null" or "ring"
  Dir dir = Dir::kTx;
  unsigned size = 64;  // frame bytes
  bool gso = false;    // TCPv4 GSO frame (csum_blank, mss 1448)
  bool zero_copy = true;
  int copy_below = -1;  // override tx_limits.copy_below
  std::string what;
};

// One backend case: guest, queue, port(s); everything torn down at the end
// with leak checks (a benchmark that leaks is not measuring the real thing).
// Owned by the main thread, which is also the simulated guest (and the wire
// for net_ring); the queue and the meters run on the reactor thread. Guest
// memory: the simulated guest's own pages, through SimNetfront.
class Rig {
 public:
  Rig(const Opts& o, PacketPool& pool, const CaseSpec& c) : o_(o), pool_(pool), c_(c) {}

  Status setup() {
    XP_ASSIGN_OR_RETURN(host_, sim::SimQueueHost::create({.guest = kGuest,
                                                          .guest_pages = 4096,
                                                          .reactor_name = "netbench",
                                                          .uring_entries = 0,
                                                          .cpu = o_.backend_cpu}));
    reactor_ = &host_->reactor();
    Status reg;
    reactor_->call([&] {
      reg = dpdk(0)->register_thread();
      backend_thread_ = pthread_self();
      // What one thread-CPU-clock read costs here (a syscall: no vDSO for
      // it): the meter's interval includes about one read per productive
      // poll, subtracted below.
      constexpr int kReads = 20000;
      const double t0 = thread_cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
      for (int i = 0; i < kReads; ++i) (void)thread_cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
      clock_read_cost_ = (thread_cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - t0) / kReads;
    });
    XP_TRY(reg);
    registered_ = true;
    if (pthread_getcpuclockid(backend_thread_, &backend_clock_) != 0) return unexpected(EINVAL);
    SimNetfront::Options fo;
    XP_ASSIGN_OR_RETURN(front_, SimNetfront::create(host_->guest(), host_->guest_evtchn(), fo));

    static int seq = 0;
    const std::string tag = std::to_string(getpid() % 100000) + "_" + std::to_string(seq++);
    if (c_.vdev == "null") {
      DpdkPortConfig pc;
      // net_null RX makes frames of `size` bytes (TX ignores it).
      pc.devargs = "net_null_xpnb" + tag + ",size=" + std::to_string(std::min(c_.size, 2048u));
      XP_ASSIGN_OR_RETURN(vif_port_, dpdk(0)->open_port(pool_, pc));
    } else {
      DpdkPortConfig base;
      base.pass_metadata = true;  // GSO travels whole between in-process ports
      XP_ASSIGN_OR_RETURN(auto ports, dpdk(0)->open_ring_pair(pool_, "xpnb" + tag, base));
      vif_port_ = std::move(ports[0]);
      wire_ = std::move(ports[1]);
    }

    VifQueue::Config c = sim::vif_queue_config(*front_, kGuest);
    c.port = vif_port_.get();
    c.pool = &pool_;
    c.zero_copy = c_.zero_copy;
    if (c_.copy_below >= 0) c.tx_limits.copy_below = static_cast<uint16_t>(c_.copy_below);
    c.rx_gso_tcpv4 = true;
    c.rx_gso_tcpv6 = true;
    c.log_prefix = "bench vif: ";
    Status st = ok();
    meter_.progress = [this] {
      return stats_.tx_packets.get() + stats_.rx_packets.get() + stats_.tx_ring.responses.get() +
             stats_.rx_ring.responses.get() + stats_.tx_dropped.get() + stats_.rx_dropped.get();
    };
    reactor_->call([&] {
      reactor_->add_poller(&begin_);
      auto q = VifQueue::start(host_->worker(), c, stats_);
      if (q) queue_ = std::move(*q);
      else st = unexpected(q.error());
      reactor_->add_poller(&end_);
      metering_ = true;
    });
    XP_TRY(st);
    return build_frames();
  }

  ~Rig() {
    if (!host_) return;
    (void)host_->stop_queue(queue_, 5000, [this] {
      drain_wire();
      std::vector<netif_tx_response> a;
      front_->reap_tx(a);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    });
    if (metering_) {
      reactor_->call([&] {
        reactor_->remove_poller(&begin_);
        reactor_->remove_poller(&end_);
      });
    }
    for (PacketBuf* p : inject_) pkt::free(p);
    inject_.clear();
    drain_wire();
    front_.reset();
    if (registered_) reactor_->call([] { dpdk(0)->unregister_thread(); });
    vif_port_.reset();
    wire_.reset();
    const uint64_t leaked = host_->live_maps();
    host_.reset();
    if (leaked != 0) {
      std::fprintf(stderr, "warning: %llu grant mappings leaked\n", static_cast<unsigned long long>(leaked));
    }
  }

  Row run() {
    Row r;
    r.vdev = c_.vdev;
    r.dir = dir_name(c_.dir);
    r.what = c_.what;
    r.size = c_.size;
    const clockid_t self = CLOCK_THREAD_CPUTIME_ID;
    auto counter = [&] { return c_.dir == Dir::kTx ? stats_.tx_packets.get() : stats_.rx_packets.get(); };
    auto bytes = [&] { return c_.dir == Dir::kTx ? stats_.tx_bytes.get() : stats_.rx_bytes.get(); };
    const auto warm_end = Clock::now() + std::chrono::duration<double>(o_.warmup);
    while (Clock::now() < warm_end) step();
    const auto t0 = Clock::now();
    const double b0 = thread_cpu_seconds(backend_clock_), g0 = thread_cpu_seconds(self);
    const double busy0 = busy();
    const uint64_t polls0 = polls();
    const uint64_t p0 = counter(), y0 = bytes();
    const uint64_t m0 = stats_.tx_map_calls.get(), c0 = stats_.tx_copy_calls.get() + stats_.rx_copy_calls.get();
    const uint64_t mp0 = stats_.tx_mapped_pages.get();
    const uint64_t d0 = stats_.tx_dropped.get() + stats_.rx_dropped.get() + stats_.tx_port_dropped.get();
    const auto end = t0 + std::chrono::duration<double>(o_.seconds);
    while (Clock::now() < end) step();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    const double bcpu = thread_cpu_seconds(backend_clock_) - b0;
    const uint64_t npolls = polls() - polls0;
    const double bbusy = std::max(0.0, busy() - busy0 - static_cast<double>(npolls) * clock_read_cost_);
    r.meter_ns_per_poll = clock_read_cost_ * 1e9;
    const double gcpu = thread_cpu_seconds(self) - g0;
    r.seconds = wall;
    r.packets = counter() - p0;
    r.bytes = bytes() - y0;
    r.pps = static_cast<double>(r.packets) / wall;
    r.gbps = static_cast<double>(r.bytes) * 8 / wall / 1e9;
    r.backend_cpu = bcpu;
    r.backend_busy = bbusy;
    if (npolls > 0) r.pkts_per_poll = static_cast<double>(r.packets) / static_cast<double>(npolls);
    r.backend_util = bcpu / wall;
    if (r.packets > 0) {
      r.backend_ns_per_pkt = bbusy * 1e9 / static_cast<double>(r.packets);
      r.guest_ns_per_pkt = gcpu * 1e9 / static_cast<double>(r.packets);
    }
    if (bbusy > 0) r.backend_bound_gbps = static_cast<double>(r.bytes) * 8 / bbusy / 1e9;
    r.map_calls = stats_.tx_map_calls.get() - m0;
    r.copy_calls = stats_.tx_copy_calls.get() + stats_.rx_copy_calls.get() - c0;
    r.mapped_pages = stats_.tx_mapped_pages.get() - mp0;
    r.dropped = stats_.tx_dropped.get() + stats_.rx_dropped.get() + stats_.tx_port_dropped.get() - d0;
    return r;
  }

 private:
  double busy() {
    double b = 0;
    reactor_->call([&] { b = meter_.busy; });
    return b;
  }
  uint64_t polls() {
    uint64_t n = 0;
    reactor_->call([&] { n = meter_.polls; });
    return n;
  }

  Status build_frames() {
    sim::frames::FrameSpec s;
    s.udp = !c_.gso;
    const size_t hl = sim::frames::header_len(s);
    const unsigned size = std::max<unsigned>(c_.size, static_cast<unsigned>(hl));
    s.payload = size - hl;
    tx_frame_.bytes = sim::frames::make_frame(s);
    if (c_.gso) {
      tx_frame_.csum_blank = true;
      tx_frame_.gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
      tx_frame_.gso_size = 1448;
    }
    wire_frame_ = tx_frame_.bytes;
    sim::frames::fix_ip_checksum(wire_frame_);
    return ok();
  }

  void drain_wire() {
    if (!wire_) return;
    PacketBuf* b[64];
    for (size_t k; (k = wire_->rx_burst(0, b)) > 0;) pkt::free_bulk({b, k});
  }

  // Refills the wire towards the VIF (ring only): pre-built copies of the
  // frame, kept until the ring takes them.
  void inject() {
    if (inject_.size() < 32) {
      PacketBuf* b[32];
      const size_t want = 32 - inject_.size();
      if (pool_.alloc_bulk({b, want}) == want) {
        for (size_t i = 0; i < want; ++i) {
          bool okay =
              pool_.append_copy(b[i], {reinterpret_cast<const std::byte*>(wire_frame_.data()), wire_frame_.size()});
          if (okay && c_.gso) okay = pkt::set_meta(b[i], sim::frames::tso_meta(1448));
          if (okay) inject_.push_back(b[i]);
          else pkt::free(b[i]);
        }
      }
    }
    if (inject_.empty()) return;
    const size_t n = wire_->tx_burst(0, {inject_.data(), inject_.size()});
    inject_.erase(inject_.begin(), inject_.begin() + static_cast<ptrdiff_t>(n));
  }

  void step() {
    if (c_.dir == Dir::kTx) {
      for (unsigned k = 0; k < 64; ++k) {
        if (!front_->send(tx_frame_)) break;
      }
      (void)front_->reap_tx(answers_);
      answers_.clear();
      drain_wire();
    } else {
      (void)front_->post_rx(256);
      (void)front_->reap_rx(frames_);
      frames_.clear();
      if (wire_) inject();
    }
  }

  const Opts& o_;
  PacketPool& pool_;
  const CaseSpec c_;
  std::unique_ptr<sim::SimQueueHost> host_;
  Reactor* reactor_ = nullptr;
  bool registered_ = false;
  pthread_t backend_thread_{};
  clockid_t backend_clock_{};
  double clock_read_cost_ = 0;
  std::unique_ptr<SimNetfront> front_;
  std::unique_ptr<PacketPort> vif_port_;
  std::unique_ptr<PacketPort> wire_;
  VifQueueStats stats_;
  std::unique_ptr<VifQueue> queue_;
  MeterState meter_;
  MeterBegin begin_{meter_};
  MeterEnd end_{meter_};
  bool metering_ = false;
  SimNetfront::TxFrame tx_frame_;
  std::vector<uint8_t> wire_frame_;
  std::vector<PacketBuf*> inject_;
  std::vector<netif_tx_response> answers_;
  std::vector<SimNetfront::RxFrame> frames_;
};

std::optional<Row> run_case(const Opts& o, PacketPool& pool, const CaseSpec& c) {
  Rig rig(o, pool, c);
  if (auto st = rig.setup(); !st) {
    std::fprintf(stderr, "%s %s %s: setup failed: %s\n", c.vdev.c_str(), dir_name(c.dir), c.what.c_str(),
                 error_string(st.error()).c_str());
    return std::nullopt;
  }
  return rig.run();
}

// ------------------------------------------------------------- testpmd

struct TestpmdResult {
  double pps = 0;         // mean periodic Tx-pps after the first period
  double ns_per_pkt = 0;  // forwarding lcore CPU time / packets forwarded
  std::string mode;
  std::string cmdline;
};

// CPU seconds of the threads of `pid` whose name starts with `prefix`.
double threads_cpu_seconds(pid_t pid, const std::string& prefix) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  double total = 0;
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (!d) return 0;
  while (dirent* e = readdir(d.get())) {
    if (e->d_name[0] == '.') continue;
    std::ifstream comm(dir + "/" + e->d_name + "/comm");
    std::string name;
    std::getline(comm, name);
    if (name.rfind(prefix, 0) != 0) continue;
    std::ifstream st(dir + "/" + e->d_name + "/stat");
    std::string all((std::istreambuf_iterator<char>(st)), std::istreambuf_iterator<char>());
    const auto rp = all.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream rest(all.substr(rp + 2));
    std::string f;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> f; ++i) {
      if (i == 14) utime = std::stoull(f);
      if (i == 15) stime = std::stoull(f);
    }
    total += static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  return total;
}

// Runs testpmd (io forwarding, loop topology, one port) for about
// warmup + seconds + 1 and reads its forwarding rate and its forwarding
// lcore's CPU time per packet.
TestpmdResult run_testpmd(const Opts& o, const std::string& vdev, const std::string& mode, unsigned size) {
  TestpmdResult res;
  res.mode = mode;
  // EAL start-up without hugepages takes a second or two; the first
  // statistics period is skipped.
  const int secs = static_cast<int>(o.seconds + o.warmup + 0.999) + 3;
  std::vector<std::string> args = {o.testpmd_path,
                                   "--no-huge",
                                   "--no-shconf",
                                   "-m",
                                   "128",
                                   "--no-pci",
                                   "--log-level=lib.eal:error",
                                   "-l",
                                   std::to_string(o.guest_cpu) + "," + std::to_string(o.backend_cpu),
                                   "--main-lcore",
                                   std::to_string(o.guest_cpu)};
  if (vdev == "null") {
    args.push_back("--vdev=net_null0,size=" + std::to_string(std::min(size, 2048u)));
  } else {
    args.push_back("--vdev=net_ring0");  // one ring for RX and TX: a loopback port
  }
  for (const char* a :
       {"--", "--port-topology=loop", "--nb-cores=1", "--total-num-mbufs=16384", "--stats-period=1", "--auto-start"}) {
    args.emplace_back(a);
  }
  args.push_back("--forward-mode=" + mode);
  if (vdev == "ring") args.emplace_back("--tx-first");  // primes the loopback with one burst
  if (vdev == "ring" || mode == "txonly") args.push_back("--txpkts=" + std::to_string(std::min(size, 2048u)));
  for (const auto& a : args) res.cmdline += (res.cmdline.empty() ? "" : " ") + a;
  char path[] = "/tmp/xenpath-testpmd-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return res;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  close(fd);
  if (pid < 0) {
    unlink(path);
    return res;
  }
  std::this_thread::sleep_for(std::chrono::seconds(secs));
  // DPDK 22.11 names its worker threads rte-worker-<id> (older: lcore-worker-<id>).
  const double cpu = threads_cpu_seconds(pid, "rte-worker") + threads_cpu_seconds(pid, "lcore-worker");
  kill(pid, SIGINT);
  int status = 0;
  for (int i = 0; i < 100; ++i) {
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    if (i == 99) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::ifstream in(path);
  std::string line, tail;
  std::vector<double> pps;
  bool accumulated = false;
  double total_tx = 0;
  while (std::getline(in, line)) {
    if (auto at = line.find("Tx-pps:"); at != std::string::npos)
      pps.push_back(std::strtod(line.c_str() + at + 7, nullptr));
    if (line.find("Accumulated forward statistics") != std::string::npos) accumulated = true;
    if (auto at = line.find("TX-packets:"); accumulated && at != std::string::npos && total_tx == 0) {
      total_tx = std::strtod(line.c_str() + at + 11, nullptr);
    }
    tail = line;
  }
  unlink(path);
  if (pps.size() < 2) {
    std::fprintf(stderr, "testpmd gave no statistics (exit status %d; last line: %s)\n", status, tail.c_str());
    return res;
  }
  double sum = 0;
  for (size_t i = 1; i < pps.size(); ++i) sum += pps[i];
  res.pps = sum / static_cast<double>(pps.size() - 1);
  if (total_tx > 0 && cpu > 0) res.ns_per_pkt = cpu * 1e9 / total_tx;
  return res;
}

bool have_program(const std::string& p) {
  if (p.find('/') != std::string::npos) return access(p.c_str(), X_OK) == 0;
  const char* path = getenv("PATH");
  std::stringstream ss(path ? path : "");
  for (std::string dir; std::getline(ss, dir, ':');) {
    if (access((dir + "/" + p).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// ------------------------------------------------------------- output

nlohmann::json to_json(const Row& r) {
  return {{"vdev", r.vdev},
          {"dir", r.dir},
          {"what", r.what},
          {"size", r.size},
          {"seconds", r.seconds},
          {"packets", r.packets},
          {"bytes", r.bytes},
          {"pps", r.pps},
          {"gbps", r.gbps},
          {"backend_cpu_seconds", r.backend_cpu},
          {"backend_ns_per_pkt", r.backend_ns_per_pkt},
          {"backend_util", r.backend_util},
          {"guest_ns_per_pkt", r.guest_ns_per_pkt},
          {"backend_bound_gbps", r.backend_bound_gbps},
          {"map_calls", r.map_calls},
          {"copy_calls", r.copy_calls},
          {"mapped_pages", r.mapped_pages},
          {"dropped", r.dropped},
          {"backend_busy_seconds", r.backend_busy},
          {"pkts_per_poll", r.pkts_per_poll},
          {"meter_ns_per_poll", r.meter_ns_per_poll},
          {"testpmd_pps", r.testpmd_pps},
          {"testpmd_ns_per_pkt", r.testpmd_ns_per_pkt},
          {"testpmd_mode", r.testpmd_mode}};
}

void print_main(const std::vector<Row>& rows) {
  std::printf("\n%-5s %-3s %-7s %10s %7s %8s %7s %6s %8s %9s %8s %10s %6s %s\n", "vdev", "dir", "case", "pps", "Gb/s",
              "be ns", "be Mpps", "p/poll", "be util", "guest ns", "tp ns", "tp pps", "ratio", "tp mode");
  for (const auto& r : rows) {
    char tpns[32] = "-", tppps[32] = "-", ratio[32] = "-";
    if (r.testpmd_ns_per_pkt > 0) {
      std::snprintf(tpns, sizeof tpns, "%.1f", r.testpmd_ns_per_pkt);
      if (r.backend_ns_per_pkt > 0)
        std::snprintf(ratio, sizeof ratio, "%.2f", r.testpmd_ns_per_pkt / r.backend_ns_per_pkt);
    }
    if (r.testpmd_pps > 0) std::snprintf(tppps, sizeof tppps, "%.0f", r.testpmd_pps);
    std::printf("%-5s %-3s %-7s %10.0f %7.2f %8.1f %7.2f %6.1f %7.0f%% %9.1f %8s %10s %6s %s\n", r.vdev.c_str(),
                r.dir.c_str(), r.what.c_str(), r.pps, r.gbps, r.backend_ns_per_pkt,
                r.backend_ns_per_pkt > 0 ? 1e3 / r.backend_ns_per_pkt : 0.0, r.pkts_per_poll, r.backend_util * 100,
                r.guest_ns_per_pkt, tpns, tppps, ratio, r.testpmd_mode.c_str());
  }
  std::printf(
      "\npps, Gb/s: end to end (wall clock; the 2 CPUs are shared, so these move with the load);\n"
      "be ns: backend reactor-thread CPU time in polls that moved packets, per packet (idle\n"
      "spinning and the meter's own clock reads excluded); be Mpps = 1000 / be ns, what one\n"
      "backend core sustains; p/poll: packets per productive poll (burst fill); be util: all\n"
      "backend thread CPU (spinning included) / wall; guest ns: simulated guest CPU per packet;\n"
      "tp ns: dpdk-testpmd on one port of the same vdev kind (net_null: txonly for TX, io for RX;\n"
      "net_ring: io over a loopback ring), forwarding lcore CPU time per packet, its lcore on the\n"
      "backend CPU; tp pps: its rate;\n"
      "ratio = tp ns / be ns: the backend's per-core packet rate as a fraction of testpmd's.\n");
  for (const auto& r : rows) {
    if (r.what == "gso64k") {
      std::printf("%s %s gso64k: %.2f Gb/s end to end, %.2f Gb/s per backend busy CPU second\n", r.vdev.c_str(),
                  r.dir.c_str(), r.gbps, r.backend_bound_gbps);
    }
  }
}

}  // namespace
}  // namespace xenpath

int main(int argc, char** argv) {
  using namespace xenpath;
  Opts o;
  CLI::App app{"netif backend throughput on the simulated host vs dpdk-testpmd"};
  app.add_option("--seconds", o.seconds, "measured seconds per case")->check(CLI::Range(0.1, 60.0));
  app.add_option("--warmup", o.warmup, "warm-up seconds per case")->check(CLI::Range(0.0, 10.0));
  app.add_option("--vdev", o.vdevs, "vdev kinds: null, ring")->check(CLI::IsMember({"null", "ring"}));
  app.add_option("--sizes", o.sizes, "frame sizes for the pps rows (RX from net_null: at most 2048)")
      ->check(CLI::Range(60u, 65535u));
  app.add_flag("!--no-gso", o.gso, "skip the 64 KiB GSO rows");
  app.add_flag("!--no-testpmd", o.testpmd, "skip the dpdk-testpmd rows");
  app.add_option("--testpmd", o.testpmd_path, "dpdk-testpmd binary");
  app.add_option("--backend-cpu", o.backend_cpu, "CPU of the backend reactor and testpmd's forwarding lcore");
  app.add_option("--guest-cpu", o.guest_cpu, "CPU of the simulated guest (and testpmd's main lcore)");
  app.add_flag("--crossover", o.crossover, "measure TX map vs copy per slot remainder size");
  app.add_flag("!--no-main", o.main_table, "skip the pps/GSO table (with --crossover)");
  app.add_option("--copy-below", o.copy_below, "override VifQueue tx_limits.copy_below for the main table");
  app.add_option("--json", o.json_path, "write every row as JSON here");
  CLI11_PARSE(app, argc, argv);

  if (dpdk(256) == nullptr) return 1;
  (void)pin_current_thread(o.guest_cpu);    // best effort, as before
  (void)DpdkEnv::get()->register_thread();  // the main thread is EAL's main lcore already
  DpdkPoolConfig pc;
  pc.name = "nb";
  pc.packets = 8191;
  pc.attachments = 8191;
  pc.cache = 128;
  auto pool = DpdkEnv::get()->create_pool(pc);
  if (!pool) {
    std::fprintf(stderr, "pool: %s\n", error_string(pool.error()).c_str());
    return 1;
  }
  const bool testpmd = o.testpmd && have_program(o.testpmd_path);
  if (o.testpmd && !testpmd) std::fprintf(stderr, "%s not found: testpmd rows skipped\n", o.testpmd_path.c_str());
  std::printf("net_bench: %.1f s per case (+%.1f s warm-up), backend on CPU %d, guest on CPU %d\n", o.seconds, o.warmup,
              o.backend_cpu, o.guest_cpu);

  nlohmann::json out = nlohmann::json::object();
  std::vector<Row> rows;
  if (o.main_table) {
    for (const auto& v : o.vdevs) {
      for (Dir d : {Dir::kTx, Dir::kRx}) {
        for (unsigned s : o.sizes) {
          CaseSpec c;
          c.vdev = v;
          c.dir = d;
          c.size = s;
          c.copy_below = o.copy_below;
          c.what = std::to_string(s) + "B";
          if (auto r = run_case(o, **pool, c)) rows.push_back(*r);
        }
        // 64 KiB GSO: net_null cannot make 64 KiB frames, so RX is ring only.
        if (o.gso && (d == Dir::kTx || v == "ring")) {
          CaseSpec c;
          c.vdev = v;
          c.dir = d;
          c.size = 65535;
          c.gso = true;
          c.copy_below = o.copy_below;
          c.what = "gso64k";
          if (auto r = run_case(o, **pool, c)) rows.push_back(*r);
        }
      }
    }
    if (testpmd) {
      nlohmann::json tp = nlohmann::json::array();
      for (const auto& v : o.vdevs) {
        for (unsigned s : o.sizes) {
          // The reference for each direction: guest TX -> net_null is a packet
          // built and sent to a sink (txonly); net_null RX -> guest is the PMD's
          // packets forwarded (io). net_ring: io over a loopback ring (the
          // plumbing alone: no packet byte is touched).
          for (Dir d : {Dir::kTx, Dir::kRx}) {
            const std::string mode = v == "null" && d == Dir::kTx ? "txonly" : "io";
            if (v == "ring" && d == Dir::kRx) {
              // Same run as TX for the ring.
              for (auto& r : rows) {
                if (r.vdev == v && r.size == s && r.dir == "rx" && r.what != "gso64k") {
                  for (auto& q : rows) {
                    if (q.vdev == v && q.size == s && q.dir == "tx" && q.what != "gso64k") {
                      r.testpmd_pps = q.testpmd_pps;
                      r.testpmd_ns_per_pkt = q.testpmd_ns_per_pkt;
                      r.testpmd_mode = q.testpmd_mode;
                    }
                  }
                }
              }
              continue;
            }
            const TestpmdResult t = run_testpmd(o, v, mode, s);
            tp.push_back({{"vdev", v},
                          {"size", s},
                          {"mode", mode},
                          {"pps", t.pps},
                          {"ns_per_pkt", t.ns_per_pkt},
                          {"cmdline", t.cmdline}});
            for (auto& r : rows) {
              if (r.vdev == v && r.size == s && r.dir == dir_name(d) && r.what != "gso64k") {
                r.testpmd_pps = t.pps;
                r.testpmd_ns_per_pkt = t.ns_per_pkt;
                r.testpmd_mode = mode;
              }
            }
          }
        }
      }
      out["testpmd"] = tp;
    }
    print_main(rows);
    nlohmann::json jr = nlohmann::json::array();
    for (const auto& r : rows) jr.push_back(to_json(r));
    out["rows"] = jr;
  }

  if (o.crossover) {
    // One-slot packets: 128 header bytes + a remainder R in the same slot;
    // then whole-page slots (multi-page packets).
    const std::vector<unsigned> sizes = {192, 256, 384, 640, 1152, 1664, 2176, 3200, 4096, 8192, 16384, 32768, 65535};
    std::printf("\nTX per-packet backend CPU, slot remainders mapped vs copied (net_null):\n");
    std::printf("%8s %10s %10s %10s %10s %8s %9s %9s\n", "size", "remainder", "map ns", "copy ns", "map-copy", "winner",
                "map p/pl", "copy p/pl");
    nlohmann::json jc = nlohmann::json::array();
    int crossover = -1;
    for (unsigned s : sizes) {
      double ns[2] = {0, 0}, ppp[2] = {0, 0};
      for (int m = 0; m < 2; ++m) {
        CaseSpec c;
        c.vdev = "null";
        c.dir = Dir::kTx;
        c.size = s;
        c.copy_below = m == 0 ? 0 : 65535;
        c.what = m == 0 ? "map" : "copy";
        if (auto r = run_case(o, **pool, c)) {
          ns[m] = r->backend_ns_per_pkt;
          ppp[m] = r->pkts_per_poll;
        }
      }
      const unsigned rem = std::min(s, 4096u) - 128;
      std::printf("%8u %10u %10.1f %10.1f %+10.1f %8s %9.1f %9.1f\n", s, rem, ns[0], ns[1], ns[0] - ns[1],
                  ns[0] < ns[1] ? "map" : "copy", ppp[0], ppp[1]);
      if (s <= 4096 && ns[0] < ns[1] && crossover < 0) crossover = static_cast<int>(rem);
      if (s <= 4096 && ns[0] >= ns[1]) crossover = -1;  // the smallest R from which map stays ahead
      jc.push_back({{"size", s},
                    {"remainder", rem},
                    {"map_ns_per_pkt", ns[0]},
                    {"copy_ns_per_pkt", ns[1]},
                    {"map_pkts_per_poll", ppp[0]},
                    {"copy_pkts_per_poll", ppp[1]}});
    }
    std::printf("(p/pl: packets per productive backend poll, i.e. how full the bursts were)\n");
    if (crossover < 0) {
      std::printf("crossover: copying stays cheaper up to a whole page (copy_below >= 4096)\n");
    } else {
      std::printf("crossover: mapping wins from a %d-byte slot remainder on\n", crossover);
    }
    out["crossover"] = {{"rows", jc}, {"remainder", crossover}};
  }

  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << out.dump(2) << "\n";
  }
  return 0;
}
