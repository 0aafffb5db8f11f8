// What the TX and RX paths of one VIF queue (net_queue_tx.h,
// net_queue_rx.h) and the VifQueue that drives them (net_queue.h) share:
// the configuration, the counters, the log and the halt state.
//
// Threads: a VifQueueCore belongs to its queue's reactor thread, like the
// paths that use it. Stats are single-writer counters.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/log.h"
#include "common/mailbox.h"
#include "common/ring_types.h"
#include "common/stats.h"
#include "common/xen/grant_table.h"
#include "common/xen/types.h"
#include "common/xen_worker.h"
#include "netback/net_ctrl.h"
#include "netback/net_protocol_tx.h"
#include "netback/net_rate.h"
#include "netback/port.h"

namespace xenpath {

// Packets one queue of a VIF hands another, because the guest's hash
// mapping (control ring) sends their flow to that queue. Owns its packets
// (freed if the batch is dropped undelivered).
struct SteeredRx {
  static constexpr unsigned kMax = 32;
  std::array<PacketBuf*, kMax> pkts{};
  std::array<FrameHash, kMax> hashes{};
  unsigned n = 0;

  SteeredRx() noexcept = default;
  // A moved-from batch owns nothing (its count is what it owns).
  SteeredRx(SteeredRx&& o) noexcept : pkts(o.pkts), hashes(o.hashes), n(std::exchange(o.n, 0)) {}
  SteeredRx& operator=(SteeredRx&& o) noexcept {
    if (this != &o) {
      release();
      pkts = o.pkts;
      hashes = o.hashes;
      n = std::exchange(o.n, 0);
    }
    return *this;
  }
  SteeredRx(const SteeredRx&) = delete;
  SteeredRx& operator=(const SteeredRx&) = delete;
  ~SteeredRx() { release(); }
  void release() noexcept {
    if (n > 0) pkt::free_bulk({pkts.data(), n});
    n = 0;
  }
};
using SteerInbox = Mailbox<SteeredRx>;

// The Xen handles of one reactor, shared by its VIF queues and control
// channels (common/xen_worker.h).
using NetWorker = XenWorker;

struct VifQueueStats {
  RingQueueStats tx_ring;  // guest TX ring: requests, responses, notifications, halted
  RingQueueStats rx_ring;  // guest RX ring
  Counter tx_packets;      // guest packets handed to the port
  Counter tx_bytes;
  Counter tx_dropped;       // guest packets dropped (bad chains, failed grants, no buffers)
  Counter tx_port_dropped;  // well-formed packets the port side refused (no headers to offload on)
  Counter tx_map_calls;     // GrantTable::map calls for TX data
  Counter tx_unmap_calls;   // burst mappings released
  Counter tx_copy_calls;    // GrantTable::copy calls for TX headers
  Counter tx_mapped_pages;  // slot remainders attached zero-copy
  Counter tx_copied_bytes;  // header + crossover bytes copied
  Counter tx_rate_limited;  // times a packet had to wait for credit
  Counter tx_credit_timer;  // credit timer expiries (Linux's tx_credit_callback)
  Counter tx_multicast;     // MCAST_ADD/DEL requests
  Counter rx_packets;       // packets delivered into the guest
  Counter rx_bytes;
  Counter rx_dropped;  // too big, empty, filtered, unsegmentable, no buffers
  Counter rx_copy_calls;
  Counter rx_copy_failures;   // segments the hypervisor refused (bad guest grant)
  Counter rx_gso_segmented;   // GSO packets segmented for a frontend without GSO
  Counter rx_gro_packets;     // GSO packets built from received frames (Config::rx_gro)
  Counter rx_gro_merged;      // received frames merged into them
  Counter rx_expired;         // dropped after waiting longer than rx_drain_timeout
  Counter rx_stall_dropped;   // dropped because the guest's RX was stalled
  Counter rx_stalls;          // times the guest stopped posting buffers for rx_stall_timeout
  Counter rx_stalled;         // 1 while stalled (carrier off)
  Counter tx_headers_pulled;  // packets whose headers went beyond the copied head
};

inline constexpr unsigned kVifMaxBurst = 64;
inline constexpr std::chrono::milliseconds kVifHousekeepingPeriod{10};
// Larger than any slot (a page): every TX byte is grant-copied. See
// VifQueueConfig::tx_limits.
inline constexpr uint16_t kVifTxCopyBelowDefault = 4097;

struct VifQueueConfig {
  DomId frontend = 0;
  GrantRef tx_ring_ref = 0;
  GrantRef rx_ring_ref = 0;
  EvtchnPort tx_remote_port = 0;  // the frontend's event channel(s);
  EvtchnPort rx_remote_port = 0;  // equal: one channel for both rings
  PacketPort* port = nullptr;     // outlives the queue
  uint16_t port_queue = 0;
  PacketPool* pool = nullptr;  // outlives every packet it made
  // Slot rules, and the copy/map crossover: a slot remainder (after the
  // 128 header bytes) shorter than tx_limits.copy_below is grant-copied,
  // a longer one grant-mapped and attached zero-copy. The default is
  // measured (perf/net_bench --crossover, docs/netback-perf.md): on the
  // simulated host copying beats a map + unmap for every remainder up to
  // a whole page, so it copies everything; 0 maps every remainder.
  // Re-measure on a Xen host before lowering it.
  NetifTxLimits tx_limits{.copy_below = kVifTxCopyBelowDefault};
  // Allow attaching mapped guest pages to packets (zero-copy TX). Forced
  // off when the port cannot take external buffers; then every byte is
  // copied whatever copy_below says.
  bool zero_copy = true;
  RateSpec rate;  // the backend's "rate" key
  // What the frontend negotiated.
  bool rx_csum_offload = true;       // it accepts csum_blank (no feature-no-csum-offload)
  bool rx_ipv6_csum_offload = true;  // the same for IPv6 (feature-ipv6-csum-offload)
  bool rx_sg = true;                 // feature-sg: packets may span several RX slots
  bool rx_gso_tcpv4 = false;         // feature-gso-tcpv4
  bool rx_gso_tcpv6 = false;         // feature-gso-tcpv6
  bool multicast_control = false;    // request-multicast-control
  // Receive-side coalescing (pkt::coalesce_tcp): consecutive in-sequence
  // TCP/IPv4 frames of one flow in a port burst go to the guest as one GSO
  // packet, as kernel netback hands it the host stack's GSO skbs. A port
  // whose host side segments before we see the frames (net_tap without
  // IFF_VNET_HDR) otherwise costs the guest one packet per MTU. Only for
  // a frontend taking such packets: gso-tcpv4, checksum offload and sg.
  bool rx_gro = true;
  unsigned burst = kVifMaxBurst;
  // For ports without a receive wake-up (PacketPort::rx_wait_fd, e.g.
  // net_ring): while idle the reactor wakes this often to look for
  // received packets. With one, the reactor sleeps on the port's fd and
  // this period only paces housekeeping (port backpressure, RX
  // drain/stall), at least every kHousekeepingPeriod. A guest out of
  // rate credit is not resumed by this period: a one-shot timer is
  // armed for the exact replenish time (Linux's credit_timeout).
  std::chrono::microseconds port_poll{1000};
  size_t rx_backlog = 256;  // packets held for a guest without buffers
  // Linux's rx_drain_timeout: a packet waiting longer for guest buffers
  // is dropped. rx_stall_timeout: a guest that posts no buffer for that
  // long while packets wait is stalled (carrier off): what is queued is
  // dropped and new packets are dropped at once until it posts buffers
  // again. 0 disables stall detection (no feature-rx-notify).
  std::chrono::milliseconds rx_drain_timeout{10'000};
  std::chrono::milliseconds rx_stall_timeout{60'000};
  // The VIF's multicast list (one per VIF, as Linux keeps it), shared by
  // its queues: a guest's MCAST_ADD/DEL on any queue's TX ring goes there,
  // and every queue's RX filters against it. Null: VifQueue::start makes
  // the queue its own.
  std::shared_ptr<VifMulticast> multicast;
  // Multi-queue VIFs: every queue's inbox, by queue index (this queue is
  // `queue_index`). Once the guest set a hash mapping, a received packet
  // whose flow maps to another queue goes to that queue's inbox, as
  // Linux's xenvif_select_queue() picks the queue. The inboxes must
  // outlive the queues. Empty: no steering.
  std::vector<SteerInbox*> inboxes;
  uint16_t queue_index = 0;
  std::string log_prefix = "vif: ";
};
// A burst's grant copies and, for each, the packet of the burst it fills
// (sized at start; the datapath never allocates).
struct BurstCopies {
  std::vector<GrantCopySegment> segs;
  std::vector<uint16_t> owner;
  void resize(size_t n) {
    segs.resize(n);
    owner.resize(n);
  }
};

// Pushes the responses a path made to its ring since the last call, one
// flush per ring per iteration: true if there were any (`pending` is
// cleared), `notify` whether the frontend asked for an event.
template <typename Ring>
bool flush_responses(Ring& ring, bool& pending, bool& notify) noexcept {
  notify = pending && ring.flush();
  return std::exchange(pending, false);
}

// Called on the queue's thread when the frontend misbehaved (the queue is
// halted for good).
using VifHaltSink = std::function<void(int error)>;

struct VifQueueCore {
  VifQueueCore(NetWorker& w, const VifQueueConfig& c, VifQueueStats& s, VifHaltSink h)
      : worker(w), config(c), stats(s), on_halt(std::move(h)), log(c.log_prefix) {}

  // A frontend caught lying (net_protocol_tx.h's fatal cases, ring
  // overflow): the queue consumes nothing more, as Linux disables the vif;
  // the halt sink tells the device.
  void halt(const char* why) noexcept;

  NetWorker& worker;
  VifQueueConfig config;
  VifQueueStats& stats;
  VifHaltSink on_halt;
  DeviceLog log;
  bool halted = false;
};

}  // namespace xenpath
