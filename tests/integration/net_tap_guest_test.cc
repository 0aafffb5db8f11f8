// Real TCP through the whole simulated path: a kernel socket in one network
// namespace talks to one in another, and every frame between them crosses
// a tap (SimTapGuest), the netif rings and grant copies (SimNetfront,
// VifQueue) and the VIF's DPDK port vif<domid>.0: net_tap, or virtio_user
// over the kernel's vhost-net (the default port where /dev/vhost-net opens,
// with TSO and checksum offloads into the host stack). Skipped where network
// namespaces, /dev/net/tun or (for vhost-net) /dev/vhost-net are not
// permitted.
#include "sim/net/sim_tap_guest.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "netback/net_queue.h"
#include "netback/port_dpdk.h"
#include "sim/net/sim_netfront.h"
#include "sim/sim_queue_host.h"
#include "tests/fixtures/net_wire.h"
#include "tests/fixtures/netns.h"
#include "tests/fixtures/queue_rig.h"

namespace xenpath {
namespace {

constexpr DomId kGuest = 23;

using test::in_netns;
using test::new_netns;

// ip addr add <addr>/24 dev <ifname>; ip link set <ifname> up (and lo up).
bool configure(int ns, const char* ifname, const char* addr) {
  bool ok = false;
  const bool ran = in_netns(ns, [&] {
    const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    auto up = [&](const char* name) {
      ifreq ifr{};
      std::strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
      if (::ioctl(s, SIOCGIFFLAGS, &ifr) != 0) return false;
      ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
      return ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
    };
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    auto* sin = reinterpret_cast<sockaddr_in*>(&ifr.ifr_addr);
    sin->sin_family = AF_INET;
    ::inet_pton(AF_INET, addr, &sin->sin_addr);
    bool good = ::ioctl(s, SIOCSIFADDR, &ifr) == 0;
    ::inet_pton(AF_INET, "255.255.255.0", &sin->sin_addr);
    good = good && ::ioctl(s, SIOCSIFNETMASK, &ifr) == 0;
    ok = good && up(ifname) && up("lo");
    ::close(s);
  });
  return ran && ok;
}

int socket_in(int ns, int type) {
  int s = -1;
  if (!in_netns(ns, [&] { s = ::socket(AF_INET, type | SOCK_CLOEXEC, 0); })) return -1;
  return s;
}

struct PathCase {
  bool offloads;  // the guest's tap (and netfront) with csum + TCP GSO
  bool vhost;     // the VIF port: virtio_user over vhost-net, else net_tap
};

class TapGuestRig : public test::QueueRig {
 public:
  explicit TapGuestRig(PathCase c)
      : QueueRig({.guest = kGuest, .guest_pages = 2048, .reactor_name = "tap-test", .uring_entries = 0}),
        offloads_(c.offloads),
        vhost_(c.vhost) {}

  // Empty string: ready; else why the environment cannot run this.
  std::string setup() {
    if (test::test_dpdk() == nullptr) return "no DPDK";
    if (::access("/dev/net/tun", R_OK | W_OK) != 0) return "no /dev/net/tun";
    if (std::string why; vhost_ && !vhost_net_usable(&why)) return why;
    guest_ns_ = new_netns();
    host_ns_ = new_netns();
    if (guest_ns_ < 0 || host_ns_ < 0) return "cannot create network namespaces";
    auto tap = sim::open_tap("xpg0", "/proc/self/fd/" + std::to_string(guest_ns_), offloads_);
    if (!tap) return "cannot create a tap: " + error_string(tap.error());
    tap_fd_ = *tap;

    pool_ = test::test_pool("tg");
    if (!pool_) return "pool";
    // Probing net_tap from inside the host namespace creates vif23.0 there
    // (what net_iperf.sh does by moving the interface).
    DpdkPortConfig portc;
    if (vhost_) {
      auto d = expand_devargs(kVhostNetVifDevargs, kGuest, 0, 1);
      if (!d) return "devargs";
      portc.devargs = *d;
    } else {
      portc.devargs = "net_tap_xptg" + std::to_string(getpid() % 100000) + ",iface=vif23.0";
    }
    Result<std::unique_ptr<PacketPort>> port = unexpected(EINVAL);
    if (!in_netns(host_ns_, [&] { port = test::test_dpdk()->open_port(*pool_, portc); }) || !port) {
      // vhost-net present yet the port fails: a real failure, not the environment.
      EXPECT_FALSE(vhost_) << portc.devargs << ": " << (port ? "" : error_string(port.error()));
      return "port " + portc.devargs;
    }
    port_ = std::move(*port);

    auto f = sim::SimNetfront::create(guest(), guest_evtchn(), {});
    if (!f) return "netfront";
    front_ = std::move(*f);
    VifQueue::Config c = sim::vif_queue_config(*front_, kGuest);
    c.port = port_.get();
    c.pool = pool_.get();
    c.rx_csum_offload = offloads_;
    c.rx_gso_tcpv4 = c.rx_gso_tcpv6 = offloads_;
    c.port_poll = std::chrono::microseconds(200);
    Status st = ok();
    reactor().call([&] {
      auto q = VifQueue::start(worker(), c, stats_);
      if (q) queue_ = std::move(*q);
      else st = unexpected(q.error());
    });
    if (!st) return "queue: " + error_string(st.error());
    guest_ = std::make_unique<sim::SimTapGuest>(*front_, guest_evtchn(), tap_fd_, offloads_);
    tap_fd_ = -1;
    if (!configure(host_ns_, "vif23.0", "10.77.0.1") || !configure(guest_ns_, "xpg0", "10.77.0.2")) {
      return "cannot configure addresses";
    }
    runner_ = std::thread([this] {
      while (!stop_.load()) {
        if (!guest_->step()) guest_->wait(std::chrono::milliseconds(1));
      }
    });
    return {};
  }

  ~TapGuestRig() {
    stop_.store(true);
    if (runner_.joinable()) runner_.join();
    stop_queue(queue_, 2000, [this] {
      (void)guest_->step();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
    guest_.reset();
    front_.reset();
    port_.reset();
    if (pool_) {
      EXPECT_EQ(pool_->in_use(), 0u) << "packet buffers leaked";
    }
    EXPECT_EQ(live_maps(), 0u) << "grant mappings leaked";
    if (tap_fd_ >= 0) ::close(tap_fd_);
    if (guest_ns_ >= 0) ::close(guest_ns_);
    if (host_ns_ >= 0) ::close(host_ns_);
  }

  const bool offloads_;
  const bool vhost_;
  int guest_ns_ = -1;
  int host_ns_ = -1;
  int tap_fd_ = -1;
  std::unique_ptr<PacketPool> pool_;
  std::unique_ptr<PacketPort> port_;
  std::unique_ptr<sim::SimNetfront> front_;
  VifQueueStats stats_;
  std::unique_ptr<VifQueue> queue_;
  std::unique_ptr<sim::SimTapGuest> guest_;
  std::thread runner_;
  std::atomic<bool> stop_{false};
};

// Waits (bounded) for `events` on fd.
bool wait_fd(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n == 1) return (p.revents & events) != 0;
    if (n < 0 && errno != EINTR) return false;
  }
}

// Sends `data` on `from` while reading `to` (both non-blocking), until all
// of it arrived or the deadline.
std::vector<uint8_t> pump(int from, int to, const std::vector<uint8_t>& data,
                          std::chrono::steady_clock::time_point deadline) {
  std::vector<uint8_t> got;
  std::vector<uint8_t> buf(65536);
  size_t sent = 0;
  while (got.size() < data.size() && std::chrono::steady_clock::now() < deadline) {
    if (sent < data.size()) {
      const ssize_t n = ::send(from, data.data() + sent, data.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<size_t>(n);
    }
    const ssize_t n = ::recv(to, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n > 0) got.insert(got.end(), buf.begin(), buf.begin() + n);
    if (n == 0) break;  // closed
    pollfd p[2] = {{to, POLLIN, 0}, {from, static_cast<short>(sent < data.size() ? POLLOUT : 0), 0}};
    (void)::poll(p, 2, 1);
  }
  return got;
}

class NetTapGuest : public ::testing::TestWithParam<PathCase> {};

TEST_P(NetTapGuest, TcpCrossesTheSimulatedPathBothWays) {
  TapGuestRig rig(GetParam());
  if (const std::string why = rig.setup(); !why.empty()) GTEST_SKIP() << why;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);

  const int lsn = socket_in(rig.host_ns_, SOCK_STREAM);
  ASSERT_GE(lsn, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(5201);
  ::inet_pton(AF_INET, "10.77.0.1", &a.sin_addr);
  ASSERT_EQ(::bind(lsn, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  ASSERT_EQ(::listen(lsn, 1), 0);
  const int cli = socket_in(rig.guest_ns_, SOCK_STREAM | SOCK_NONBLOCK);
  ASSERT_GE(cli, 0);
  const int rc = ::connect(cli, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
  ASSERT_TRUE(wait_fd(lsn, POLLIN, deadline)) << "no SYN arrived through the path";
  const int srv = ::accept4(lsn, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  ASSERT_GE(srv, 0);
  ASSERT_TRUE(wait_fd(cli, POLLOUT, deadline));
  int err = 0;
  socklen_t len = sizeof err;
  ASSERT_EQ(::getsockopt(cli, SOL_SOCKET, SO_ERROR, &err, &len), 0);
  ASSERT_EQ(err, 0) << std::strerror(err);

  // 256 KiB guest -> host, then the same bytes back host -> guest.
  std::vector<uint8_t> out(256 * 1024);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(i * 131 + (i >> 10));
  const std::vector<uint8_t> at_host = pump(cli, srv, out, deadline);
  const uint64_t up_packets = rig.stats_.tx_packets.get();
  const PortQueueStats port_up = rig.port_->stats(0);
  const std::vector<uint8_t> at_guest = pump(srv, cli, at_host, deadline);
  ::close(cli);
  ::close(srv);
  ::close(lsn);
  EXPECT_EQ(at_host, out) << "guest -> host stream";
  EXPECT_EQ(at_guest, out) << "host -> guest stream";
  // Frames really crossed the rings both ways.
  EXPECT_GE(rig.stats_.tx_bytes.get(), out.size());
  EXPECT_GE(rig.stats_.rx_bytes.get(), out.size());
  EXPECT_EQ(rig.stats_.tx_dropped.get() + rig.stats_.tx_port_dropped.get(), 0u);
  const auto& gs = rig.guest_->stats();
  EXPECT_EQ(gs.tx_errors, 0u);
  EXPECT_EQ(gs.rx_errors, 0u);
  EXPECT_EQ(gs.bad_offload, 0u);
  EXPECT_EQ(gs.oversize_drops, 0u);
  // At most 1460 payload bytes per frame on a 1500-byte MTU.
  const uint64_t mss_frames = (out.size() + 1459) / 1460;
  if (GetParam().offloads) {
    // The kernel handed the guest TCP GSO frames: far fewer TX ring
    // packets than MSS-sized segments.
    EXPECT_LT(up_packets, mss_frames / 2);
  } else {
    EXPECT_GE(up_packets, mss_frames);
  }
  if (GetParam().vhost) {
    // Guest GSO went to the host stack as TSO packets, never cut here; the
    // host's GSO packets came whole (no software GRO on this port).
    EXPECT_TRUE(rig.port_->caps().tso);
    EXPECT_EQ(port_up.tx_gso_packets, 0u);
    EXPECT_EQ(rig.stats_.rx_gro_packets.get(), 0u);
    if (GetParam().offloads) {
      EXPECT_LE(port_up.tx_packets, up_packets);
      EXPECT_LT(rig.port_->stats(0).rx_packets, mss_frames / 2) << "host GSO packets arrived cut";
    }
  } else if (GetParam().offloads) {
    EXPECT_GT(port_up.tx_gso_packets, 0u) << "net_tap takes no TSO: segmented here";
  }
}

INSTANTIATE_TEST_SUITE_P(Ports, NetTapGuest,
                         ::testing::Values(PathCase{false, false}, PathCase{true, false}, PathCase{false, true},
                                           PathCase{true, true}),
                         [](const auto& info) {
                           return std::string(info.param.vhost ? "VhostNet" : "Tap") +
                                  (info.param.offloads ? "CsumAndGso" : "PlainFrames");
                         });

}  // namespace
}  // namespace xenpath
