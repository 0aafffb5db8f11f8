// The DPDK adapter's ports: ethdev set-up (vdevs such as net_tap,
// virtio_user, net_memif, and PCI NICs, by devargs), in-process ring pairs,
// and the PacketPort over an ethdev's queues with the software fallbacks
// for the offloads a device lacks. See port_dpdk.h.
#include <net/if.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_errno.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#include "common/log.h"
#include "common/stats.h"
#include "netback/port_dpdk.h"
#include "netback/port_dpdk_internal.h"

namespace xenpath {

namespace {

using dpdk_detail::DpdkPool;
using dpdk_detail::hw_checksum_prepare;
using dpdk_detail::mb;
using dpdk_detail::pb;
using dpdk_detail::sw_checksums;
using dpdk_detail::unique_name;

constexpr size_t kTxBurstMax = 64;
// Buffers (mbufs, chain segments included) a TX queue holds back for a
// device that does not take them yet. The pool is shared by every port's
// receive rings and every VIF; a device that consumes slowly (vhost-net's
// thread on a busy dom0) must push back on the guest's ring instead of
// draining the pool, or receive refills fail and the ACKs that would let the
// guest's TCP drain it never arrive. 1024 is ~31 64 KiB TSO packets.
constexpr size_t kTxBacklogMbufs = 1024;

// The two rings of open_ring_pair(). Either port may be closed first while
// the other still transmits into the ring the first received from, so the
// rings (and any packets left in them) go when the last port goes.
struct RingPair {
  rte_ring* r[2] = {nullptr, nullptr};
  RingPair() = default;
  RingPair(const RingPair&) = delete;
  RingPair& operator=(const RingPair&) = delete;
  ~RingPair() {
    for (rte_ring* ring : r) {
      if (ring == nullptr) continue;
      void* obj = nullptr;
      while (rte_ring_dequeue(ring, &obj) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(obj));
      rte_ring_free(ring);
    }
  }
};

// One DPDK ethdev. Control (constructor, destructor, link/mac queries)
// belongs to the control thread holding DpdkEnv's lock; queue q's bursts
// belong to one datapath thread at a time, which alone writes that queue's
// state and counters. Touches guest memory only through external segments
// of the packets it transmits (read by the device/PMD).
class DpdkPort final : public PacketPort {
 public:
  struct Owned {
    rte_device* device = nullptr;     // removed on close
    std::shared_ptr<RingPair> rings;  // a ring pair's, freed with its last port
    std::vector<int> rx_fds;          // per queue receive wake-up fds (the PMD's), or empty
    std::string kernel_if;            // dom0's interface of a tap-backed PMD, or empty
  };

  DpdkPort(DpdkEnv& env, DpdkPool& pool, uint16_t port_id, std::string name, const DpdkPortConfig& cfg, PortCaps caps,
           uint64_t tx_offloads, Owned owned)
      : env_(env),
        pool_(pool),
        port_id_(port_id),
        name_(std::move(name)),
        cfg_(cfg),
        caps_(caps),
        tx_offloads_(tx_offloads),
        owned_(std::move(owned)),
        rxq_(cfg.rx_queues),
        txq_(cfg.tx_queues) {
    const size_t cap = static_cast<size_t>(cfg.gso_max_segments) + 2 * kTxBurstMax;
    for (auto& q : txq_) {
      q.frames.reserve(cap);
      q.lens.reserve(cap);
      q.segs.reserve(cap);
      q.capacity = cap;
      q.gso_out.resize(cfg.gso_max_segments);
    }
  }

  ~DpdkPort() override {
    std::lock_guard<std::mutex> lock(env_.control_lock());
    for (auto& q : txq_) {
      for (size_t i = q.begin; i < q.frames.size(); ++i) rte_pktmbuf_free(q.frames[i]);
      q.frames.clear();
    }
    // Packets still queued inside the device (a ring port's ring) belong
    // to our pool; take them back while the queues still run (a stopped
    // port's burst functions are stubs).
    for (uint16_t q = 0; q < rxq_.size(); ++q) {
      rte_mbuf* ms[kTxBurstMax];
      for (int rounds = 0; rounds < 4096; ++rounds) {
        const uint16_t n = rte_eth_rx_burst(port_id_, q, ms, kTxBurstMax);
        if (n == 0) break;
        for (uint16_t i = 0; i < n; ++i) rte_pktmbuf_free(ms[i]);
      }
    }
    rte_eth_dev_stop(port_id_);
    rte_eth_dev_close(port_id_);
    if (owned_.device != nullptr) {
      const int rc = rte_dev_remove(owned_.device);
      if (rc < 0) spdlog::warn("dpdk: removing {}: {}", name_, rte_strerror(-rc));
    }
  }

  const std::string& name() const noexcept override { return name_; }
  std::string_view kernel_interface() const noexcept override { return owned_.kernel_if; }
  uint16_t rx_queues() const noexcept override { return static_cast<uint16_t>(rxq_.size()); }
  uint16_t tx_queues() const noexcept override { return static_cast<uint16_t>(txq_.size()); }

  size_t rx_burst(uint16_t queue, std::span<PacketBuf*> out) noexcept override {
    if (queue >= rxq_.size() || out.empty()) return 0;
    auto** ms = reinterpret_cast<rte_mbuf**>(out.data());
    const uint16_t n =
        rte_eth_rx_burst(port_id_, queue, ms, static_cast<uint16_t>(std::min<size_t>(out.size(), UINT16_MAX)));
    if (n == 0) return 0;
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; ++i) bytes += ms[i]->pkt_len;
    rxq_[queue].packets.add(n);
    rxq_[queue].bytes.add(bytes);
    if (!rx_offload_) return n;
    // Partial checksums and host GSO packets become pending work; frames
    // that cannot be described are dropped (counted), the rest close up.
    uint16_t kept = 0;
    for (uint16_t i = 0; i < n; ++i) {
      if (dpdk_detail::rx_offload_to_pending(ms[i])) {
        ms[kept++] = ms[i];
        continue;
      }
      rte_pktmbuf_free(ms[i]);
      rxq_[queue].dropped.add();
    }
    return kept;
  }

  size_t tx_burst(uint16_t queue, std::span<PacketBuf* const> pkts) noexcept override {
    if (queue >= txq_.size()) return 0;
    TxQueue& q = txq_[queue];
    flush(queue, q);
    size_t taken = 0;
    for (PacketBuf* p : pkts) {
      const size_t need = frames_needed(mb(p));
      const size_t need_mbufs = mb(p)->nb_segs + (need > 1 ? 2 * need : 0);
      auto full = [&] {
        return q.pending() + need > q.capacity || (q.mbufs > 0 && q.mbufs + need_mbufs > kTxBacklogMbufs);
      };
      if (full()) {
        flush(queue, q);
        if (full()) break;  // device full: backpressure
      }
      prepare(q, mb(p));
      ++taken;
    }
    flush(queue, q);
    return taken;
  }

  int rx_wait_fd(uint16_t q) const noexcept override { return q < owned_.rx_fds.size() ? owned_.rx_fds[q] : -1; }
  size_t tx_pending(uint16_t queue) const noexcept override { return queue < txq_.size() ? txq_[queue].pending() : 0; }

  PortCaps caps() const noexcept override { return caps_; }

  MacAddr mac() const noexcept override {
    rte_ether_addr a{};
    MacAddr r;
    if (rte_eth_macaddr_get(port_id_, &a) == 0) std::memcpy(r.bytes.data(), a.addr_bytes, 6);
    return r;
  }

  LinkStatus link() const noexcept override {
    rte_eth_link l{};
    LinkStatus r;
    if (rte_eth_link_get_nowait(port_id_, &l) == 0) {
      r.up = l.link_status == RTE_ETH_LINK_UP;
      r.speed_mbps = l.link_speed == RTE_ETH_SPEED_NUM_UNKNOWN ? 0 : l.link_speed;
      r.full_duplex = l.link_duplex == RTE_ETH_LINK_FULL_DUPLEX;
    }
    return r;
  }

  PortQueueStats stats(uint16_t queue) const noexcept override {
    PortQueueStats s;
    if (queue < rxq_.size()) {
      s.rx_packets = rxq_[queue].packets.get();
      s.rx_bytes = rxq_[queue].bytes.get();
      s.rx_dropped = rxq_[queue].dropped.get();
    }
    if (queue < txq_.size()) {
      const TxQueue& q = txq_[queue];
      s.tx_packets = q.packets.get();
      s.tx_bytes = q.bytes.get();
      s.tx_dropped = q.dropped.get();
      s.tx_gso_packets = q.gso_packets.get();
      s.tx_gso_segments = q.gso_segments.get();
      s.tx_sw_csum = q.sw_csum.get();
    }
    return s;
  }

 private:
  struct RxQueue {
    Counter packets, bytes, dropped;
  };
  struct TxQueue {
    // Frames ready for the device, oldest first from `begin`.
    std::vector<rte_mbuf*> frames;
    std::vector<uint32_t> lens;
    std::vector<uint16_t> segs;  // each frame's nb_segs (read before the device owns it)
    size_t mbufs = 0;            // sum of segs from `begin`
    size_t begin = 0;
    size_t capacity = 0;
    std::vector<PacketBuf*> gso_out;
    Counter packets, bytes, dropped, gso_packets, gso_segments, sw_csum;
    [[nodiscard]] size_t pending() const noexcept { return frames.size() - begin; }
  };

  bool hw_tso() const noexcept { return (tx_offloads_ & RTE_ETH_TX_OFFLOAD_TCP_TSO) != 0; }
  bool hw_ip() const noexcept { return (tx_offloads_ & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) != 0; }
  bool hw_l4(uint64_t f) const noexcept {
    const uint64_t l4 = f & RTE_MBUF_F_TX_L4_MASK;
    if (l4 == RTE_MBUF_F_TX_UDP_CKSUM) return (tx_offloads_ & RTE_ETH_TX_OFFLOAD_UDP_CKSUM) != 0;
    return (tx_offloads_ & RTE_ETH_TX_OFFLOAD_TCP_CKSUM) != 0;
  }

  // Worst-case frames a packet turns into, so a burst never overfills the
  // backlog halfway through a packet.
  size_t frames_needed(const rte_mbuf* m) const noexcept {
    if (cfg_.pass_metadata || (m->ol_flags & RTE_MBUF_F_TX_TCP_SEG) == 0 || hw_tso() || m->tso_segsz == 0) {
      return 1;
    }
    const uint32_t hdr = static_cast<uint32_t>(m->l2_len) + m->l3_len + m->l4_len;
    if (m->pkt_len <= hdr) return 1;
    // Packets needing more than the limit are dropped: they need no room.
    return std::min<size_t>((m->pkt_len - hdr + m->tso_segsz - 1) / m->tso_segsz, cfg_.gso_max_segments);
  }

  void drop(TxQueue& q, rte_mbuf* m) noexcept {
    rte_pktmbuf_free(m);
    q.dropped.add();
  }

  // Checksums for one frame: in hardware where enabled, else in software.
  bool finish_checksums(TxQueue& q, rte_mbuf* m) noexcept {
    const uint64_t f = m->ol_flags;
    const bool want_ip = (f & RTE_MBUF_F_TX_IP_CKSUM) != 0;
    const bool want_l4 = (f & RTE_MBUF_F_TX_L4_MASK) != 0;
    if (!want_ip && !want_l4) return true;
    const bool sw_ip = want_ip && !hw_ip();
    const bool sw_l4 = want_l4 && !hw_l4(f);
    if (sw_ip || sw_l4) {
      if (!sw_checksums(m, sw_ip, sw_l4)) return false;
      q.sw_csum.add();
    }
    return hw_checksum_prepare(m, want_ip && !sw_ip, want_l4 && !sw_l4);
  }

  void enqueue(TxQueue& q, rte_mbuf* m) noexcept {
    const auto queue = static_cast<uint16_t>(&q - txq_.data());
    if (m->nb_segs > 1 && !caps_.multi_segment) {
      rte_mbuf* flat = pool_.linearize(m);
      rte_pktmbuf_free(m);
      if (flat == nullptr) {
        q.dropped.add();
        return;
      }
      m = flat;
    }
    // The driver's own preparation of offloaded frames (virtio turns the
    // pseudo-header sum into the form the host expects for TSO). Once per
    // frame: it is not idempotent, so never on a retried burst.
    if (tx_prepare_ && (m->ol_flags & (RTE_MBUF_F_TX_L4_MASK | RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_IP_CKSUM)) != 0 &&
        rte_eth_tx_prepare(port_id_, queue, &m, 1) != 1) {
      rte_pktmbuf_free(m);
      q.dropped.add();
      return;
    }
    q.frames.push_back(m);
    q.lens.push_back(m->pkt_len);
    q.segs.push_back(m->nb_segs);
    q.mbufs += m->nb_segs;
  }

  void prepare(TxQueue& q, rte_mbuf* m) noexcept {
    const uint64_t f = m->ol_flags;
    if (cfg_.pass_metadata) {
      enqueue(q, m);
      return;
    }
    if ((f & RTE_MBUF_F_TX_TCP_SEG) != 0) {
      if (hw_tso()) {
        // The device segments and fills each segment's TCP checksum; the
        // IPv4 header checksum of the whole packet is ours unless the device
        // does it too (a virtio device does not: vhost-net hands the packet
        // to the host stack, whose ip_rcv checks it before segmenting).
        if ((f & RTE_MBUF_F_TX_IP_CKSUM) != 0 && !hw_ip()) {
          if (!sw_checksums(m, true, false)) return drop(q, m);
          q.sw_csum.add();
        }
        if (!hw_checksum_prepare(m, hw_ip(), true)) return drop(q, m);
        return enqueue(q, m);
      }
      auto r = pool_.segment(pb(m), q.gso_out);
      if (!r) return drop(q, m);
      if (*r == 0) {  // fits in one segment: an ordinary packet now
        if (!finish_checksums(q, m)) return drop(q, m);
        return enqueue(q, m);
      }
      rte_pktmbuf_free(m);  // the segments hold their own references
      q.gso_packets.add();
      q.gso_segments.add(*r);
      for (size_t i = 0; i < *r; ++i) {
        rte_mbuf* s = mb(q.gso_out[i]);
        if (!finish_checksums(q, s)) {
          drop(q, s);
          continue;
        }
        enqueue(q, s);
      }
      return;
    }
    if (!finish_checksums(q, m)) return drop(q, m);
    enqueue(q, m);
  }

  void flush(uint16_t queue, TxQueue& q) noexcept {
    while (q.pending() > 0) {
      const uint16_t want = static_cast<uint16_t>(std::min<size_t>(q.pending(), kTxBurstMax));
      const uint16_t n = rte_eth_tx_burst(port_id_, queue, q.frames.data() + q.begin, want);
      if (n > 0) {
        uint64_t bytes = 0;
        for (uint16_t i = 0; i < n; ++i) {
          bytes += q.lens[q.begin + i];
          q.mbufs -= q.segs[q.begin + i];
        }
        q.packets.add(n);
        q.bytes.add(bytes);
        q.begin += n;
      }
      if (n < want) break;  // device full: keep the rest for the next call
    }
    if (q.begin == q.frames.size()) {
      q.frames.clear();
      q.lens.clear();
      q.segs.clear();
      q.mbufs = 0;
      q.begin = 0;
    } else if (q.begin > 0) {
      q.frames.erase(q.frames.begin(), q.frames.begin() + static_cast<ptrdiff_t>(q.begin));
      q.lens.erase(q.lens.begin(), q.lens.begin() + static_cast<ptrdiff_t>(q.begin));
      q.segs.erase(q.segs.begin(), q.segs.begin() + static_cast<ptrdiff_t>(q.begin));
      q.begin = 0;
    }
  }

  DpdkEnv& env_;
  DpdkPool& pool_;
  const uint16_t port_id_;
  const std::string name_;
  const DpdkPortConfig cfg_;
  const PortCaps caps_;
  const uint64_t tx_offloads_;  // enabled on the device
  // Offloaded frames go through rte_eth_tx_prepare (hardware offloads on).
  const bool tx_prepare_ = (tx_offloads_ & (RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM |
                                            RTE_ETH_TX_OFFLOAD_UDP_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_TSO)) != 0;
  // Received frames may carry partial checksums or be GSO packets.
  const bool rx_offload_ = caps_.rx_gso || caps_.rx_csum;
  Owned owned_;
  std::vector<RxQueue> rxq_;
  std::vector<TxQueue> txq_;
};

// The device name part of devargs ("net_tap_vif5_0" of "net_tap_vif5_0,iface=...").
std::string devargs_name(const std::string& devargs) { return devargs.substr(0, devargs.find(',')); }

// The kernel interface a tap-backed PMD made: the one net_tap reports by
// index, else the "iface=" its devargs named (virtio_user over vhost-net
// reports none).
std::string kernel_interface_of(const rte_eth_dev_info& info, const std::string& devargs) {
  char buf[IF_NAMESIZE] = {};
  if (info.if_index != 0 && if_indextoname(info.if_index, buf) != nullptr) return buf;
  if (std::strcmp(info.driver_name, "net_tap") != 0 && std::strcmp(info.driver_name, "net_virtio_user") != 0) return {};
  for (size_t pos = devargs.find(','); pos != std::string::npos; pos = devargs.find(',', pos + 1)) {
    constexpr std::string_view kKey = "iface=";
    if (devargs.compare(pos + 1, kKey.size(), kKey) == 0) {
      const size_t b = pos + 1 + kKey.size();
      return devargs.substr(b, devargs.find(',', b) - b);
    }
  }
  return {};
}

// Configures and starts an existing ethdev. Caller holds the control lock.
Result<std::unique_ptr<PacketPort>> start_port(DpdkEnv& env, DpdkPool& pool, uint16_t port_id,
                                               const DpdkPortConfig& cfg, DpdkPort::Owned owned) {
  auto fail = [&](int e) -> Result<std::unique_ptr<PacketPort>> {
    rte_eth_dev_close(port_id);
    if (owned.device != nullptr) rte_dev_remove(owned.device);
    return unexpected(e);
  };
  rte_eth_dev_info info{};
  if (int rc = rte_eth_dev_info_get(port_id, &info); rc != 0) return fail(-rc);
  if (cfg.rx_queues == 0 || cfg.tx_queues == 0 || cfg.rx_queues > info.max_rx_queues ||
      cfg.tx_queues > info.max_tx_queues) {
    return fail(EINVAL);
  }
  uint64_t tx_capa = info.tx_offload_capa;
  // net_tap's "offloads" are software inside the PMD, and in DPDK 22.11 its
  // checksum of a chained mbuf is wrong when a segment has an odd length
  // (seen with guest fragments; the integration test catches it). Doing the
  // same work here costs the same and is correct.
  if (std::strcmp(info.driver_name, "net_tap") == 0) {
    tx_capa &= ~(RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM |
                 RTE_ETH_TX_OFFLOAD_TCP_TSO);
  }
  uint64_t tx_off = tx_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
  if (cfg.hw_offloads && !cfg.pass_metadata) {
    tx_off |= tx_capa & (RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_TCP_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM);
    // TSO needs the TCP checksum offload too (the NIC fills every segment's).
    if ((tx_capa & RTE_ETH_TX_OFFLOAD_TCP_TSO) != 0 && (tx_off & RTE_ETH_TX_OFFLOAD_TCP_CKSUM) != 0) {
      tx_off |= RTE_ETH_TX_OFFLOAD_TCP_TSO;
    }
  }
  const uint64_t rx_capa = info.rx_offload_capa;
  uint64_t rx_off = rx_capa & (RTE_ETH_RX_OFFLOAD_SCATTER);
  if (cfg.hw_offloads) {
    rx_off |= rx_capa & (RTE_ETH_RX_OFFLOAD_TCP_CKSUM | RTE_ETH_RX_OFFLOAD_UDP_CKSUM | RTE_ETH_RX_OFFLOAD_IPV4_CKSUM);
    // Whole GSO packets from the host (a virtio device: the host kernel's
    // TSO skbs through vhost-net, with mergeable buffers), taken only with
    // the checksum offload their partial checksums need.
    if (cfg.rx_gso && (rx_capa & RTE_ETH_RX_OFFLOAD_TCP_LRO) != 0 && (rx_off & RTE_ETH_RX_OFFLOAD_TCP_CKSUM) != 0 &&
        (rx_capa & RTE_ETH_RX_OFFLOAD_SCATTER) != 0) {
      rx_off |= RTE_ETH_RX_OFFLOAD_TCP_LRO;
    }
  }
  rte_eth_conf conf{};
  conf.txmode.offloads = tx_off;
  conf.rxmode.offloads = rx_off;
  if ((rx_off & RTE_ETH_RX_OFFLOAD_TCP_LRO) != 0) conf.rxmode.max_lro_pkt_size = info.max_lro_pkt_size;
  // net_tap's receive "interrupt" is its queue's tun fd, readable while
  // frames wait: the reactor can sleep on it instead of polling the port.
  // Other PMDs' eventfd interrupts need an ack protocol not done here.
  const bool want_intr = cfg.rx_interrupts && std::strcmp(info.driver_name, "net_tap") == 0;
  conf.intr_conf.rxq = want_intr ? 1 : 0;
  if (int rc = rte_eth_dev_configure(port_id, cfg.rx_queues, cfg.tx_queues, &conf); rc != 0) return fail(-rc);
  uint16_t rxd = cfg.rx_desc;
  uint16_t txd = cfg.tx_desc;
  if (int rc = rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &rxd, &txd); rc != 0) return fail(-rc);
  const int socket = rte_eth_dev_socket_id(port_id);
  for (uint16_t q = 0; q < cfg.rx_queues; ++q) {
    rte_eth_rxconf rxc = info.default_rxconf;
    rxc.offloads = rx_off;
    if (int rc = rte_eth_rx_queue_setup(port_id, q, rxd, socket, &rxc, pool.pkt_pool()); rc != 0) return fail(-rc);
  }
  for (uint16_t q = 0; q < cfg.tx_queues; ++q) {
    rte_eth_txconf txc = info.default_txconf;
    txc.offloads = tx_off;
    if (int rc = rte_eth_tx_queue_setup(port_id, q, txd, socket, &txc); rc != 0) return fail(-rc);
  }
  if (cfg.mtu != 0) {
    if (int rc = rte_eth_dev_set_mtu(port_id, static_cast<uint16_t>(cfg.mtu)); rc != 0) return fail(-rc);
  }
  if (int rc = rte_eth_dev_start(port_id); rc != 0) return fail(-rc);
  if (want_intr) {
    for (uint16_t q = 0; q < cfg.rx_queues; ++q) {
      (void)rte_eth_dev_rx_intr_enable(port_id, q);
      const int fd = rte_eth_dev_rx_intr_ctl_q_get_fd(port_id, q);
      if (fd < 0) {
        spdlog::warn("dpdk: port {}: no receive interrupt fd for queue {}; polling instead", port_id, q);
        owned.rx_fds.clear();
        break;
      }
      owned.rx_fds.push_back(fd);
    }
  }

  PortCaps caps;
  caps.multi_segment = (tx_off & RTE_ETH_TX_OFFLOAD_MULTI_SEGS) != 0;
  caps.tso = (tx_off & RTE_ETH_TX_OFFLOAD_TCP_TSO) != 0;
  caps.ip_csum = (tx_off & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) != 0;
  caps.l4_csum = (tx_off & (RTE_ETH_TX_OFFLOAD_TCP_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM)) ==
                 (RTE_ETH_TX_OFFLOAD_TCP_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM);
  caps.rx_csum = (rx_off & (RTE_ETH_RX_OFFLOAD_TCP_CKSUM | RTE_ETH_RX_OFFLOAD_UDP_CKSUM)) != 0;
  caps.rx_gso = (rx_off & RTE_ETH_RX_OFFLOAD_TCP_LRO) != 0;
  if (cfg.pass_metadata) {
    // The in-process receiver does the work (or passes it on to a guest).
    caps.tso = caps.ip_csum = caps.l4_csum = true;
    caps.multi_segment = true;
  }
  // Software ports copy with the CPU; a NIC would need grant-mapped pages
  // DMA-mapped, which this adapter does not do. virtio_user is a vdev but
  // not a CPU copier: its vhost backend (vhost-net, or a vhost-user switch)
  // reads buffers through the memory table DPDK registered, which a
  // grant-mapped guest page is not in, so it gets copies too.
  const char* bus = info.device != nullptr ? rte_bus_name(rte_dev_bus(info.device)) : "";
  caps.external_buffers =
      bus != nullptr && std::strcmp(bus, "vdev") == 0 && std::strcmp(info.driver_name, "net_virtio_user") != 0;
  uint16_t mtu = 0;
  if (rte_eth_dev_get_mtu(port_id, &mtu) == 0) caps.mtu = mtu;

  char name[RTE_ETH_NAME_MAX_LEN] = {};
  rte_eth_dev_get_name_by_port(port_id, name);
  spdlog::info("dpdk: port {} ({}) up: {} rxq {} txq, tso={} csum={}/{} rx_csum={} rx_gso={} multiseg={} ext={} mtu={}",
               name, info.driver_name, cfg.rx_queues, cfg.tx_queues, caps.tso, caps.ip_csum, caps.l4_csum, caps.rx_csum,
               caps.rx_gso, caps.multi_segment, caps.external_buffers, caps.mtu);
  return std::unique_ptr<PacketPort>(
      std::make_unique<DpdkPort>(env, pool, port_id, name, cfg, caps, tx_off, std::move(owned)));
}

}  // namespace

unsigned DpdkEnv::port_capacity() noexcept { return RTE_MAX_ETHPORTS; }

unsigned DpdkEnv::ports_in_use() noexcept {
  std::lock_guard<std::mutex> lock(control_);
  return rte_eth_dev_count_total();
}

Result<std::unique_ptr<PacketPort>> DpdkEnv::open_port(PacketPool& pool, const DpdkPortConfig& cfg) noexcept {
  auto* dpool = dynamic_cast<DpdkPool*>(&pool);
  if (dpool == nullptr || cfg.devargs.empty()) return unexpected(EINVAL);
  try {
    std::lock_guard<std::mutex> lock(control_);
    // A full table would fail inside the driver's probe, after it created
    // its kernel side (a tap interface, a vhost-net queue); refuse first.
    if (rte_eth_dev_count_total() >= RTE_MAX_ETHPORTS) return unexpected(ENOSPC);
    const std::string name = devargs_name(cfg.devargs);
    uint16_t port_id = 0;
    if (rte_eth_dev_get_port_by_name(name.c_str(), &port_id) == 0) return unexpected(EEXIST);
    if (int rc = rte_dev_probe(cfg.devargs.c_str()); rc < 0) {
      spdlog::error("dpdk: probing '{}': {}", cfg.devargs, rte_strerror(-rc));
      return unexpected(-rc);
    }
    if (rte_eth_dev_get_port_by_name(name.c_str(), &port_id) != 0) {
      // A device whose ethdev is named differently (e.g. a PCI address
      // written in short form): match by devargs.
      rte_dev_iterator it{};
      bool found = false;
      RTE_ETH_FOREACH_MATCHING_DEV(port_id, cfg.devargs.c_str(), &it) {
        found = true;
        rte_eth_iterator_cleanup(&it);
        break;
      }
      if (!found) return unexpected(ENODEV);
    }
    rte_eth_dev_info info{};
    DpdkPort::Owned owned;
    if (rte_eth_dev_info_get(port_id, &info) == 0) {
      owned.device = info.device;
      owned.kernel_if = kernel_interface_of(info, cfg.devargs);
    }
    return start_port(*this, *dpool, port_id, cfg, std::move(owned));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<std::array<std::unique_ptr<PacketPort>, 2>> DpdkEnv::open_ring_pair(PacketPool& pool, const std::string& name,
                                                                           const DpdkPortConfig& base) noexcept {
  auto* dpool = dynamic_cast<DpdkPool*>(&pool);
  if (dpool == nullptr || name.empty()) return unexpected(EINVAL);
  try {
    auto rings = std::make_shared<RingPair>();
    {
      std::lock_guard<std::mutex> lock(control_);
      if (rte_eth_dev_count_total() + 2 > RTE_MAX_ETHPORTS) return unexpected(ENOSPC);
      // One producer and one consumer per direction: each port queue has a
      // single owning thread.
      for (auto& r : rings->r) {
        const std::string rn = unique_name(name, "r");
        r = rte_ring_create(rn.c_str(), 1024, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
        if (r == nullptr) return unexpected(rte_errno != 0 ? rte_errno : ENOMEM);
      }
    }
    std::array<std::unique_ptr<PacketPort>, 2> ports;
    for (size_t i = 0; i < 2; ++i) {
      std::lock_guard<std::mutex> lock(control_);
      // rte_eth_from_rings names the device "net_ring_<name>".
      const std::string dev = name + (i == 0 ? "_a" : "_b");
      rte_ring* rx = rings->r[1 - i];
      rte_ring* tx = rings->r[i];
      const int id = rte_eth_from_rings(dev.c_str(), &rx, 1, &tx, 1, SOCKET_ID_ANY);
      if (id < 0) return unexpected(rte_errno != 0 ? rte_errno : EINVAL);
      rte_eth_dev_info info{};
      DpdkPort::Owned owned;
      if (rte_eth_dev_info_get(static_cast<uint16_t>(id), &info) == 0) owned.device = info.device;
      owned.rings = rings;
      DpdkPortConfig cfg = base;
      cfg.devargs = dev;
      cfg.rx_queues = 1;
      cfg.tx_queues = 1;
      auto p = start_port(*this, *dpool, static_cast<uint16_t>(id), cfg, std::move(owned));
      if (!p) return unexpected(p.error());
      ports[i] = std::move(*p);
    }
    return ports;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

}  // namespace xenpath
