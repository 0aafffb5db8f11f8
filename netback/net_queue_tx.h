// The guest TX path of one VIF queue: the TX ring to the port.
//
// Per reactor iteration (a bounded burst):
//  1. finished guest pages are collected: the port frees packets on any
//     thread, and the free callback of an attached page only sets that
//     slot's bit in an atomic bitmap (and kicks an eventfd if we sleep);
//     a burst's mapping is unmapped in one call when its last page is
//     released, and only then are those slots answered (a frontend may
//     revoke a grant the moment it sees the answer);
//  2. requests are copied out of the ring (private copies, carried over when
//     a chain straddles the burst) and parsed (net_protocol_tx.h); the rate
//     limiter is charged the packet size first, as Linux does, and a limited
//     guest is resumed by a one-shot timer at the exact replenish time;
//     multicast control requests go to the VIF's VifMulticast (net_ctrl.h);
//  3. the burst's slot remainders are grant-mapped read-only in ONE map call
//     (per packet only when that batch fails, so only the culprit fails), the
//     headers (first 128 bytes) and sub-crossover remainders are grant-copied
//     into pool buffers in ONE copy call, and the mapped pages are attached
//     as external segments: zero-copy to the port (a port that cannot take
//     external buffers, e.g. a NIC needing DMA mappings, gets everything
//     copied instead, answered at once);
//  4. offload metadata (csum_blank, data_validated, GSO) goes on the packet
//     (the port completes checksums / segments in software if it must);
//     slots answered by copy alone are answered at once. Packets the port
//     does not take wait in a backlog, and the ring waits with them.
//
// Threads: owned and driven by its VifQueue on the queue's reactor thread.
// Exception: the external-buffer free callback (page_released), which may
// run on any thread and only touches the atomic bitmap and the eventfd.
// Guest memory: the TX ring page, and the TX pages while mapped (read by the
// port, never by this code).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "common/reactor.h"
#include "common/ring.h"
#include "common/xen/grant_table.h"
#include "netback/net_protocol_tx.h"
#include "netback/net_queue_core.h"
#include "netback/net_rate.h"

namespace xenpath {

class VifTxPath {
 public:
  explicit VifTxPath(VifQueueCore& core) noexcept;
  VifTxPath(const VifTxPath&) = delete;
  VifTxPath& operator=(const VifTxPath&) = delete;
  ~VifTxPath();

  // Maps and attaches the TX ring, sizes every buffer, starts the rate
  // limiter and the page-release wake-up. core().config is validated.
  Status init() noexcept;
  // keep_pages: abandon() (the data mappings, the eventfd and bitmap the
  // free callback uses stay).
  void teardown(bool keep_pages) noexcept;

  // Step 1: released pages; true if any.
  bool reap() noexcept;
  // Steps 2-4 (after the port backlog, which holds the ring back).
  bool poll() noexcept;
  // Packets the port has not taken yet are dropped (stop()).
  void drop_backlog() noexcept;
  // Pushes the responses made since the last call; true if there were
  // any, `notify` whether the frontend wants an event.
  bool publish(bool& notify) noexcept { return flush_responses(ring_, responses_, notify); }

  // Before the reactor sleeps: from here on a released page kicks the
  // eventfd. awake() undoes it at the start of a poll.
  void sleeping() noexcept { sleeping_.store(true, std::memory_order_seq_cst); }
  void awake() noexcept { sleeping_.store(false, std::memory_order_seq_cst); }
  // Work that must not wait for an event (after sleeping()): released
  // pages, a burst cut at its size limit.
  [[nodiscard]] bool pages_released() const noexcept;
  [[nodiscard]] bool again() const noexcept { return again_; }
  // Packets the port refused wait for it (only a wake-up retries it).
  [[nodiscard]] bool backlogged() const noexcept { return backlog_len_ != 0; }
  // New requests to act on now (RING_FINAL_CHECK_FOR_REQUESTS), unless the
  // port or the rate limiter holds us back: the periodic wake-up retries
  // the port, the credit timer the limiter.
  bool final_check() noexcept;

  // The backend's "rate" key changed.
  void set_rate(const RateSpec& spec) noexcept;

  // Guest pages attached to packets and not yet released, or a free
  // callback running right now: the mappings must stay.
  [[nodiscard]] bool pages_in_use() const noexcept {
    return attached_ != 0 || in_callback_.load(std::memory_order_seq_cst) != 0;
  }
  [[nodiscard]] unsigned pages_in_flight() const noexcept { return attached_; }

 private:
  struct Pending;
  struct TxBurst;
  struct TxWork;

  static void page_released(void* addr, void* opaque);
  void finish_burst(uint32_t b) noexcept;
  bool flush_backlog() noexcept;
  unsigned parse_burst(unsigned& works) noexcept;
  void execute(unsigned works) noexcept;
  bool map(unsigned works) noexcept;
  unsigned build(unsigned works) noexcept;
  void respond(uint16_t id, int16_t status, uint16_t nulls) noexcept;
  uint16_t alloc_pending() noexcept;
  void free_pending(uint16_t idx) noexcept;
  bool finish_meta(PacketBuf* p, const TxPlan& plan) noexcept;
  void arm_credit_timer() noexcept;

  VifQueueCore& core_;
  GrantMapping ring_map_;
  BackRing<NetifTxRing> ring_;
  bool responses_ = false;
  bool again_ = false;  // the last burst stopped at its size limit
  int done_fd_ = -1;
  bool watching_done_ = false;

  RateLimiter rate_;
  // The rate limiter's replenish: a one-shot timer, created the first time
  // credit runs out, armed for replenish_at() (credit_at_; {} = disarmed).
  Reactor::TimerId credit_timer_ = 0;
  bool have_credit_timer_ = false;
  bool credit_timer_failed_ = false;  // could not create it: periodic wake-ups only
  RateLimiter::Clock::time_point credit_at_{};

  // Sized at init; no datapath allocation.
  std::vector<netif_tx_request> carry_;  // consumed, not yet parsed
  unsigned carry_len_ = 0;
  std::vector<Pending> pend_;
  std::vector<uint16_t> free_pend_;
  std::unique_ptr<std::atomic<uint64_t>[]> done_bits_;
  unsigned done_words_ = 0;
  std::atomic<bool> sleeping_{false};
  std::atomic<int> in_callback_{0};  // free callbacks running right now (stop() waits)
  std::vector<TxBurst> bursts_;
  std::vector<uint32_t> free_bursts_;
  std::vector<TxWork> work_;
  BurstCopies copies_;
  std::vector<GrantRef> refs_;
  std::vector<PacketBuf*> out_;
  std::vector<PacketBuf*> backlog_;
  size_t backlog_len_ = 0;
  unsigned attached_ = 0;  // guest pages attached to packets, not yet released
};

}  // namespace xenpath
