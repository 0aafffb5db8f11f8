// The netif datapath of one VIF queue (a TX ring, an RX ring, one or two
// event channels) between a guest and a PacketPort queue, and the
// per-reactor worker its queues share.
//
// Guest TX, per reactor iteration (a bounded burst):
//  1. finished guest pages are collected: the port frees packets on any
//     thread, and the free callback of an attached page only sets that
//     slot's bit in an atomic bitmap (and kicks an eventfd if we sleep);
//     a burst's mapping is unmapped in one call when its last page is
//     released, and only then are those slots answered (a frontend may
//     revoke a grant the moment it sees the answer);
//  2. requests are copied out of the ring (private copies, carried over when
//     a chain straddles the burst) and parsed (net_protocol_tx.h); the rate limiter
//     is charged the packet size first, as Linux does;
//  3. the burst's slot remainders are grant-mapped read-only in ONE map call
//     (per packet only when that batch fails, so only the culprit fails), the
//     headers (first 128 bytes) and sub-crossover remainders are grant-copied
//     into pool buffers in ONE copy call, and the mapped pages are attached
//     as external segments: zero-copy to the port (a port that cannot take
//     external buffers, e.g. a NIC needing DMA mappings, gets everything
//     copied instead, answered at once);
//  4. offload metadata (csum_blank, data_validated, GSO) goes on the packet
//     (the port completes checksums / segments in software if it must);
//     slots answered by copy alone are answered at once.
// Guest RX: packets from the port (TCP frames of a burst coalesced into
// GSO packets for a frontend that takes them, see Config::rx_gro; GSO kept for a frontend that negotiated
// it, else segmented; checksums completed for a frontend without checksum
// offload; multicast filtered when the frontend asked for it) are planned
// against the guest's posted buffers (net_protocol_rx.h) and copied with ONE grant
// copy call per burst; responses go in the requests' slots.
//
// Packets wait for guest buffers at most rx_drain_timeout; a guest that
// posts none for rx_stall_timeout while packets wait is stalled (carrier
// off: queued and new packets dropped and counted, logged once) until it
// posts again, so a silent guest costs bounded host memory (Linux's
// rx_drain_timeout / rx_stall_timeout). With the guest's hash mapping
// (control ring) a received flow may belong to another queue of the VIF:
// it is handed over through that queue's inbox. Ports with a receive
// wake-up fd (net_tap) are slept on instead of polled.
//
// A frontend caught lying (net_protocol_tx.h's fatal cases, ring overflow) halts
// the queue for good, as Linux disables the vif; the halt callback tells
// the device.
//
// Threads: a VifQueue and its NetWorker belong to one reactor thread
// (start/stop/destruction run there). Exceptions: the external-buffer free
// callback, which may run on any thread and only touches the atomic bitmap
// and the eventfd; the steering inboxes (Mailbox: any thread pushes).
// Stats are single-writer counters. Guest memory: the two ring pages, and
// the TX pages while mapped (read by the port, never by this code). RX data
// reaches the guest only through grant copy.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/log.h"
#include "common/mailbox.h"
#include "common/reactor.h"
#include "common/ring.h"
#include "common/ring_types.h"
#include "common/stats.h"
#include "common/xen_worker.h"
#include "common/xen/event_channel.h"
#include "common/xen/grant_table.h"
#include "common/xen/platform.h"
#include "netback/net_ctrl.h"
#include "netback/net_protocol_rx.h"
#include "netback/net_protocol_tx.h"
#include "netback/port.h"
#include "netback/net_rate.h"

namespace xenpath {

class VifQueue;

// Packets one queue of a VIF hands another, because the guest's hash
// mapping (control ring) sends their flow to that queue. Owns its packets
// (freed if the batch is dropped undelivered).
struct SteeredRx {
  static constexpr unsigned kMax = 32;
  std::array<PacketBuf*, kMax> pkts{};
  std::array<FrameHash, kMax> hashes{};
  unsigned n = 0;

  SteeredRx() noexcept = default;
  SteeredRx(SteeredRx&& o) noexcept : pkts(o.pkts), hashes(o.hashes), n(o.n) { o.n = 0; }
  SteeredRx& operator=(SteeredRx&& o) noexcept {
    if (this != &o) {
      release();
      pkts = o.pkts;
      hashes = o.hashes;
      n = o.n;
      o.n = 0;
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
  Counter rx_dropped;       // too big, empty, filtered, unsegmentable, no buffers
  Counter rx_copy_calls;
  Counter rx_copy_failures;  // segments the hypervisor refused (bad guest grant)
  Counter rx_gso_segmented;  // GSO packets segmented for a frontend without GSO
  Counter rx_gro_packets;    // GSO packets built from received frames (Config::rx_gro)
  Counter rx_gro_merged;     // received frames merged into them
  Counter rx_expired;        // dropped after waiting longer than rx_drain_timeout
  Counter rx_stall_dropped;  // dropped because the guest's RX was stalled
  Counter rx_stalls;         // times the guest stopped posting buffers for rx_stall_timeout
  Counter rx_stalled;        // 1 while stalled (carrier off)
  Counter tx_headers_pulled; // packets whose headers went beyond the copied head
};

class VifQueue final : public Poller, public EvtchnTarget {
 public:
  static constexpr unsigned kMaxBurst = 64;
  static constexpr std::chrono::milliseconds kHousekeepingPeriod{10};
  // Larger than any slot (a page): every TX byte is grant-copied. See
  // Config::tx_limits.
  static constexpr uint16_t kTxCopyBelowDefault = 4097;

  struct Config {
    DomId frontend = 0;
    GrantRef tx_ring_ref = 0;
    GrantRef rx_ring_ref = 0;
    EvtchnPort tx_remote_port = 0;  // the frontend's event channel(s);
    EvtchnPort rx_remote_port = 0;  // equal: one channel for both rings
    PacketPort* port = nullptr;     // outlives the queue
    uint16_t port_queue = 0;
    PacketPool* pool = nullptr;     // outlives every packet it made
    // Slot rules, and the copy/map crossover: a slot remainder (after the
    // 128 header bytes) shorter than tx_limits.copy_below is grant-copied,
    // a longer one grant-mapped and attached zero-copy. The default is
    // measured (perf/net_bench --crossover, docs/netback-perf.md): on the
    // simulated host copying beats a map + unmap for every remainder up to
    // a whole page, so it copies everything; 0 maps every remainder.
    // Re-measure on a Xen host before lowering it.
    NetifTxLimits tx_limits{.copy_below = kTxCopyBelowDefault};
    // Allow attaching mapped guest pages to packets (zero-copy TX). Forced
    // off when the port cannot take external buffers; then every byte is
    // copied whatever copy_below says.
    bool zero_copy = true;
    RateSpec rate;                  // the backend's "rate" key
    // What the frontend negotiated.
    bool rx_csum_offload = true;    // it accepts csum_blank (no feature-no-csum-offload)
    bool rx_ipv6_csum_offload = true;  // the same for IPv6 (feature-ipv6-csum-offload)
    bool rx_sg = true;              // feature-sg: packets may span several RX slots
    bool rx_gso_tcpv4 = false;      // feature-gso-tcpv4
    bool rx_gso_tcpv6 = false;      // feature-gso-tcpv6
    bool multicast_control = false; // request-multicast-control
    // Receive-side coalescing (pkt::coalesce_tcp): consecutive in-sequence
    // TCP/IPv4 frames of one flow in a port burst go to the guest as one GSO
    // packet, as kernel netback hands it the host stack's GSO skbs. A port
    // whose host side segments before we see the frames (net_tap without
    // IFF_VNET_HDR) otherwise costs the guest one packet per MTU. Only for
    // a frontend taking such packets: gso-tcpv4, checksum offload and sg.
    bool rx_gro = true;
    unsigned burst = kMaxBurst;
    // For ports without a receive wake-up (PacketPort::rx_wait_fd, e.g.
    // net_ring): while idle the reactor wakes this often to look for
    // received packets. With one, the reactor sleeps on the port's fd and
    // this period only paces housekeeping (port backpressure, RX
    // drain/stall), at least every kHousekeepingPeriod. A guest out of
    // rate credit is not resumed by this period: a one-shot timer is
    // armed for the exact replenish time (Linux's credit_timeout).
    std::chrono::microseconds port_poll{1000};
    size_t rx_backlog = 256;        // packets held for a guest without buffers
    // Linux's rx_drain_timeout: a packet waiting longer for guest buffers
    // is dropped. rx_stall_timeout: a guest that posts no buffer for that
    // long while packets wait is stalled (carrier off): what is queued is
    // dropped and new packets are dropped at once until it posts buffers
    // again. 0 disables stall detection (no feature-rx-notify).
    std::chrono::milliseconds rx_drain_timeout{10'000};
    std::chrono::milliseconds rx_stall_timeout{60'000};
    // Called on this queue's thread after a guest MCAST_ADD/DEL was applied
    // here, so the VIF's other queues apply it too (one list per VIF, as
    // Linux keeps it).
    std::function<void(uint8_t type, const MulticastFilter::Mac& addr)> on_multicast;
    // Multi-queue VIFs: every queue's inbox, by queue index (this queue is
    // `queue_index`). Once the guest set a hash mapping, a received packet
    // whose flow maps to another queue goes to that queue's inbox, as
    // Linux's xenvif_select_queue() picks the queue. The inboxes must
    // outlive the queues. Empty: no steering.
    std::vector<SteerInbox*> inboxes;
    uint16_t queue_index = 0;
    std::string log_prefix = "vif: ";
  };
  using HaltSink = std::function<void(int error)>;

  // On the worker's thread: maps both rings, binds the event channel(s),
  // starts polling. Worker, stats, port and pool must outlive the queue.
  static Result<std::unique_ptr<VifQueue>> start(NetWorker& worker, const Config& config, VifQueueStats& stats,
                                                 HaltSink on_halt = {}) noexcept;
  // On the worker's thread. EBUSY while guest pages are still attached to
  // packets somewhere (in the port, a peer, a queue); once it returns ok
  // nothing of the guest stays mapped or bound.
  Status stop() noexcept;
  // On the worker's thread, when stop() kept failing (a packet holding a
  // guest page never came back): stops everything else (polling, channels,
  // rings) but keeps the TX data mappings, so a late reader never sees an
  // unmapped page. The caller then leaks the queue on purpose (never
  // destroys it: the free callback may still run).
  void abandon() noexcept;
  ~VifQueue() override;
  VifQueue(const VifQueue&) = delete;
  VifQueue& operator=(const VifQueue&) = delete;

  bool poll() noexcept override;
  bool arm() noexcept override;
  void on_event(EvtchnPort local) noexcept override;
  // Queue thread: a multicast change another queue of the VIF received.
  void apply_multicast(uint8_t type, const MulticastFilter::Mac& addr) noexcept;
  // Queue thread: the control ring's hash configuration (RX packets then
  // carry a HASH extra when the algorithm is Toeplitz); null for none.
  // The hash is always this VIF's own (its key, its types): a hash the
  // packet carries (PacketMeta::hash: another guest's TX extra, a NIC's
  // RSS) is never passed on, as Linux's xenvif_set_skb_hash recomputes
  // skb->hash and only a software hash of its own becomes an extra.
  void set_hash(std::shared_ptr<const NetifCtrl> hash) noexcept { hash_ = std::move(hash); }
  // Queue thread: the backend's "rate" key changed (xen_net_rate_changed).
  void set_rate(const RateSpec& spec) noexcept;
  // Queue thread: the frontend rewrote request-multicast-control. Off lets
  // every multicast frame through; on filters against the list the guest
  // built (kept while off, as Linux keeps it).
  void set_multicast_control(bool on) noexcept { config_.multicast_control = on; }
  [[nodiscard]] bool multicast_control() const noexcept { return config_.multicast_control; }

  [[nodiscard]] bool halted() const noexcept { return halted_; }
  [[nodiscard]] bool rx_stalled() const noexcept { return rx_stalled_; }
  [[nodiscard]] size_t rx_queued() const noexcept { return rx_len_; }
  [[nodiscard]] const MulticastFilter& multicast() const noexcept { return mcast_; }
  [[nodiscard]] unsigned tx_pages_in_flight() const noexcept { return attached_; }

 private:
  struct Pending;
  struct TxBurst;
  struct TxWork;

  VifQueue(NetWorker& worker, const Config& config, VifQueueStats& stats, HaltSink on_halt) noexcept;
  Status init() noexcept;
  // keep_tx_pages: abandon() (the TX data mappings, the eventfd and bitmap
  // the free callback uses stay).
  void teardown(bool keep_tx_pages = false) noexcept;
  void halt(const char* why) noexcept;

  static void page_released(void* addr, void* opaque);
  bool reap_tx() noexcept;
  void finish_burst(uint32_t b) noexcept;
  bool tx_poll() noexcept;
  bool flush_tx_backlog() noexcept;
  unsigned parse_tx_burst(unsigned& works) noexcept;
  void execute_tx(unsigned works) noexcept;
  bool map_tx(unsigned works) noexcept;
  void build_tx(TxWork& w) noexcept;
  void respond_tx(uint16_t id, int16_t status, uint16_t nulls) noexcept;
  uint16_t alloc_pending() noexcept;
  void free_pending(uint16_t idx) noexcept;

  bool rx_poll() noexcept;
  void fetch_rx() noexcept;
  void queue_rx(PacketBuf* p, RateLimiter::Clock::time_point now) noexcept;
  void admit_rx(PacketBuf* p, const FrameHash* hash, RateLimiter::Clock::time_point now) noexcept;
  void flush_steered() noexcept;
  bool take_steered() noexcept;
  void push_rx(PacketBuf* p, const FrameHash* hash, RateLimiter::Clock::time_point now) noexcept;
  void pop_rx() noexcept;
  bool check_rx_stall(RateLimiter::Clock::time_point now) noexcept;
  bool finish_tx_meta(PacketBuf* p, const TxPlan& plan) noexcept;
  bool deliver_rx() noexcept;

  bool publish() noexcept;
  void arm_credit_timer() noexcept;

  NetWorker& worker_;
  Config config_;
  VifQueueStats& stats_;
  HaltSink on_halt_;
  DeviceLog log_;

  GrantMapping tx_ring_map_;
  GrantMapping rx_ring_map_;
  BackRing<NetifTxRing> tx_;
  BackRing<NetifRxRing> rx_;
  EvtchnPort tx_port_ = 0;
  EvtchnPort rx_port_ = 0;
  bool tx_bound_ = false;
  bool rx_bound_ = false;
  bool polling_ = false;
  bool masked_tx_ = false;
  bool masked_rx_ = false;
  bool halted_ = false;
  bool stopped_ = false;
  bool tx_responses_ = false;
  bool rx_responses_ = false;
  int done_fd_ = -1;
  bool watching_done_ = false;
  Reactor::TimerId timer_ = 0;
  bool have_timer_ = false;
  // The rate limiter's replenish: a one-shot timer, created the first time
  // credit runs out, armed for replenish_at() (credit_at_; {} = disarmed).
  Reactor::TimerId credit_timer_ = 0;
  bool have_credit_timer_ = false;
  bool credit_timer_failed_ = false;  // could not create it: periodic wake-ups only
  RateLimiter::Clock::time_point credit_at_{};

  RateLimiter rate_;
  MulticastFilter mcast_;

  // TX state (sized at start; no datapath allocation).
  std::vector<netif_tx_request> carry_;  // consumed, not yet parsed
  unsigned carry_len_ = 0;
  std::vector<Pending> pend_;
  std::vector<uint16_t> free_pend_;
  std::unique_ptr<std::atomic<uint64_t>[]> done_bits_;
  unsigned done_words_ = 0;
  std::atomic<bool> sleeping_{false};
  std::atomic<int> in_callback_{0};  // free callbacks running right now (stop() waits)
  bool tx_again_ = false;  // the last burst stopped at its size limit
  bool rx_again_ = false;
  std::vector<TxBurst> bursts_;
  std::vector<uint32_t> free_bursts_;
  std::vector<TxWork> work_;
  std::vector<GrantCopySegment> tx_copies_;
  std::vector<uint16_t> tx_copy_owner_;
  std::vector<GrantRef> tx_refs_;
  std::vector<PacketBuf*> tx_out_;
  std::vector<PacketBuf*> tx_backlog_;
  size_t tx_backlog_len_ = 0;
  unsigned attached_ = 0;  // guest pages attached to packets, not yet released

  // RX state.
  std::vector<netif_rx_request> rx_carry_;
  unsigned rx_carry_len_ = 0;
  std::vector<PacketBuf*> rx_pkts_;  // FIFO ring of packets for the guest
  struct RxInfo {
    RateLimiter::Clock::time_point queued{};
    FrameHash hash{};
    bool has_hash = false;
  };
  std::vector<RxInfo> rx_info_;      // parallel to rx_pkts_
  std::shared_ptr<const NetifCtrl> hash_;
  std::vector<SteeredRx> steer_out_;  // per target queue, flushed after each fetch
  bool watching_inbox_ = false;
  bool rx_stalled_ = false;
  int rx_fd_ = -1;           // the port queue's receive wake-up, or -1
  bool rx_fd_watched_ = false;
  RateLimiter::Clock::time_point rx_progress_{};  // last time the guest's buffers let us deliver
  size_t rx_head_ = 0;
  size_t rx_len_ = 0;
  std::vector<GrantCopySegment> rx_copies_;
  std::vector<uint16_t> rx_copy_owner_;
  std::vector<netif_rx_response> rx_rsps_;
  std::unique_ptr<RxBatch> rx_batch_;
  std::vector<PacketSegment> rx_segs_;
  std::vector<PacketBuf*> rx_scratch_;
};

}  // namespace xenpath
