// The blkif datapath of one VBD queue (one shared ring + event channel), and
// the per-reactor worker its queues share.
//
// Per reactor iteration a VbdQueue (a Poller):
//  1. publishes the responses completed since the last iteration, once, and
//     notifies only when the ring macros say the frontend wants it;
//  2. consumes a bounded burst (<= 32, and no more than free request slots)
//     of private copies and admits each once (blk_admit, blk_protocol.h):
//     a direct request as it is taken, an indirect one in step 3;
//  3. maps the burst's indirect descriptor pages in one call (only for
//     requests whose header admission accepts), admits each indirect request
//     (descriptors copied out, then checked), unmaps the pages;
//  4. maps the burst's data grants in one GrantTable::map call per
//     direction (reads need writable mappings, writes are granted read-only
//     by a non-persistent frontend), or resolves them through the persistent
//     grant table when negotiated;
//  5. builds readv/writev straight into the mapped guest pages (no bounce
//     buffer) and hands them to the image channel; the reactor submits the
//     io_uring once for everyone.
// On completion a request releases its grants; a burst's mapping is
// unmapped (one call) when its last request is done, and only then are its
// requests answered (a response must never precede the unmap of its grants).
//
// Ordering (blkif.h): FLUSH_DISKCACHE answers after fdatasync (after its
// data, if it carries any, was written). WRITE_BARRIER waits until every
// earlier request completed, fdatasyncs (earlier writes durable), writes its
// data, fdatasyncs again (itself durable), and only then are later requests
// dispatched.
//
// Hostile frontends: a request failing validation or whose grants do not
// map is answered (EOPNOTSUPP / ERROR) and counted by reason, and a failed
// batch map is retried request by request so only the culprit fails; a
// producer overflow halts the queue for good (logged once, counted, and
// reported through the halt callback so the device goes to Closing).
//
// Threads: a VbdQueue and its BlkWorker belong to one reactor thread;
// start/stop/destruction run there (the device uses Reactor::call). The
// stats are single-writer counters readable from any thread. Guest memory:
// the ring pages (through BlkRingPort), indirect descriptor pages (read once
// per descriptor), and data pages, which only the kernel reads or writes
// (the iovecs of the I/O); never dereferenced here, except the last block
// of a probed raw disk, copied out of a write before it is checked
// (guard_write).
#pragma once

#include <sys/uio.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "blkback/blk_persistent_grants.h"
#include "blkback/blk_protocol.h"
#include "blkback/blk_qos.h"
#include "blkback/blk_ring.h"
#include "blkback/image.h"
#include "common/guest_channel.h"
#include "common/latency_histogram.h"
#include "common/log.h"
#include "common/reactor.h"
#include "common/stats.h"
#include "common/xen/event_channel.h"
#include "common/xen/grant_table.h"
#include "common/xen/platform.h"
#include "common/xen_worker.h"

namespace xenpath {

class VbdQueue;
struct ProbeGuard;

// The Xen handles of one reactor, shared by the VBD queues it runs
// (common/xen_worker.h).
using BlkWorker = XenWorker;

// Linux blkback's default max_persistent_grants per ring.
inline constexpr uint32_t kLinuxMaxPersistentGrants = 1056;

struct VbdQueueStats {
  RingQueueStats ring;  // requests, responses, batches, notifications, halted
  Counter reads;
  Counter writes;
  Counter flushes;
  Counter barriers;
  Counter discards;
  Counter indirect;  // requests that came as BLKIF_OP_INDIRECT
  Counter read_bytes;
  Counter write_bytes;
  Counter discard_bytes;
  Counter in_flight;       // gauge: requests between consume and response
  Counter map_calls;       // GrantTable::map calls for data and descriptors
  Counter map_fallbacks;   // failed batch maps retried request by request
  Counter barrier_drains;  // barriers that had to wait for earlier requests
  // QoS (blk_qos.h): requests that waited for credit, and the time the
  // queue's head spent waiting (reactor time, so to within a tick).
  Counter qos_delayed;
  Counter qos_throttled_ns;
  BlkErrorStats errors;  // rejected/failed requests by reason
  // From consume (off the ring) to the response on the ring, of requests
  // answered OKAY, while the worker's fine clock is on (Reactor::fine_now):
  // reads, writes, and flushes (FLUSH_DISKCACHE and WRITE_BARRIER).
  LatencyHistogram read_latency;
  LatencyHistogram write_latency;
  LatencyHistogram flush_latency;
};

class VbdQueue final : public XenRingPoller {
 public:
  static constexpr unsigned kMaxBurst = 32;

  struct Config {
    DomId frontend = 0;
    BlkProtocol protocol = BlkProtocol::kNative;
    std::vector<GrantRef> ring_refs;  // 1 << ring-page-order refs
    EvtchnPort remote_port = 0;       // the frontend's event-channel
    VbdLimits limits;
    bool persistent = false;  // feature-persistent negotiated
    // 0: max(kLinuxMaxPersistentGrants, RING_SIZE * BLKIF_MAX_SEGMENTS_PER_REQUEST).
    uint32_t persistent_max_pages = 0;
    std::chrono::milliseconds persistent_idle{60'000};
    unsigned burst = kMaxBurst;
    std::string log_prefix = "vbd: ";
    // A bare path probed as raw (image_open.h): writes reaching its last
    // block are checked and written from a private copy. Outlives the queue.
    const ProbeGuard* probe_guard = nullptr;
    // The VBD's QoS limits and how many queues share them (blk_qos.h).
    QosLimits qos;
    unsigned qos_queues = 1;
  };
  // Called once, on the worker thread, when the queue halts (EPROTO).
  using HaltSink = std::function<void(int error)>;

  // On the worker's thread: maps the ring, binds the event channel, opens
  // the image channel, starts polling. The image, worker and stats must
  // outlive the queue.
  static Result<std::unique_ptr<VbdQueue>> start(BlkWorker& worker, Image& image, const Config& config,
                                                 VbdQueueStats& stats, HaltSink on_halt = {}) noexcept;
  // On the worker's thread. Stops consuming; EBUSY while I/O is in flight
  // (guest pages under DMA stay mapped until the kernel is done with them);
  // once it returns ok nothing of the guest stays mapped or bound.
  Status stop() noexcept;
  ~VbdQueue() override;

  bool poll() noexcept override;
  bool arm() noexcept override;
  void on_event(EvtchnPort local) noexcept override;

  // On the worker's thread: new QoS limits (the backend keys changed). A
  // request waiting for credit is re-checked at the next poll.
  void set_qos(const QosLimits& limits, unsigned queues) noexcept;

  [[nodiscard]] bool halted() const noexcept { return halted_; }
  [[nodiscard]] unsigned ring_size() const noexcept { return ring_->size(); }
  [[nodiscard]] const PersistentGrants* persistent() const noexcept { return pgrants_.get(); }
  [[nodiscard]] const ImageChannel& image_channel() const noexcept { return *channel_; }

 private:
  struct Slot;
  // One map call's worth of grants, shared by the requests of a burst that
  // go in one direction. Its requests are answered together once the last
  // is done and the mapping is gone: a frontend may revoke a grant the
  // moment it sees the answer (Linux blkfront treats a still-mapped grant
  // as a backend bug), so no answer may precede its unmap.
  struct BurstMap {
    GrantMapping mapping;
    uint32_t pending = 0;  // requests still using pages of `mapping`
    Slot* done = nullptr;  // finished requests waiting for the unmap
    uint32_t next_free = UINT32_MAX;
  };
  enum class Phase : uint8_t { kFree, kHeld, kWaitBarrier, kPreFlush, kData, kPostFlush, kDiscard };

  VbdQueue(BlkWorker& worker, Image& image, const Config& config, VbdQueueStats& stats, HaltSink on_halt) noexcept;
  Status init() noexcept override;
  void teardown() noexcept override;

  Slot* alloc_slot() noexcept;
  void free_slot(Slot& s) noexcept;
  void process_list(Slot* head) noexcept;
  void dispatch(Slot** batch, unsigned n) noexcept;
  void admit_indirect(Slot** batch, unsigned n) noexcept;
  bool admit(Slot& s, std::span<const std::byte* const> descriptor_pages) noexcept;
  void halt(std::string_view what, int error) noexcept;
  void map_data(Slot** batch, unsigned n) noexcept;
  void map_data_persistent(Slot** batch, unsigned n) noexcept;
  void map_data_transient(Slot** batch, unsigned n, bool writable) noexcept;
  bool map_one(Slot& s, bool writable) noexcept;
  uint32_t take_burst(GrantMapping&& m, uint32_t users) noexcept;
  void put_burst(uint32_t b) noexcept;
  void respond(Slot& s) noexcept;
  void time_response(const Slot& s) noexcept;
  void start_io(Slot& s) noexcept;
  void next_phase(Slot& s) noexcept;
  bool guard_write(Slot& s, uint64_t offset, uint64_t bytes) noexcept;
  void on_done(Slot& s, int result) noexcept;
  void reject(Slot& s, BlkVerdict v) noexcept;
  void finish(Slot& s, int16_t status, BlkReason reason) noexcept;
  bool try_start_barrier() noexcept;
  Slot* qos_gate(Slot* head) noexcept;
  void qos_arm() noexcept;
  bool publish() noexcept;
  void arm_purge() noexcept;
  void count_op(const Slot& s) noexcept;
  [[nodiscard]] uint32_t segment_capacity() const noexcept;

  Image& image_;
  Config config_;
  VbdQueueStats& stats_;
  HaltSink on_halt_;
  DeviceLog log_;

  GrantMapping ring_mapping_;
  std::unique_ptr<BlkRingPort> ring_;
  std::unique_ptr<ImageChannel> channel_;
  std::unique_ptr<PersistentGrants> pgrants_;
  GuestEvtchn evtchn_;
  bool halted_ = false;
  bool stopping_ = false;
  bool stopped_ = false;
  bool responses_pending_ = false;
  Reactor::TimerId purge_timer_ = 0;
  bool have_timer_ = false;
  bool purge_armed_ = false;  // purge_timer_ set for pgrants_->next_purge()

  std::vector<std::unique_ptr<Slot>> slots_;
  Slot* free_ = nullptr;
  unsigned active_ = 0;        // dispatched to the image, not finished
  unsigned in_use_ = 0;        // consumed, not answered
  Slot* barrier_ = nullptr;    // a barrier waiting for / doing its work
  Slot* held_head_ = nullptr;  // consumed after a pending barrier, in ring order
  Slot* held_tail_ = nullptr;
  // QoS: requests consumed but waiting for credit, in ring order. While
  // there are any, nothing more is taken from the ring (the guest sees a
  // slow disk: its ring fills up), the poller reports no work and arm()
  // does not re-check the ring, so the reactor sleeps until qos_timer_.
  VbdQos qos_;
  Slot* qos_head_ = nullptr;
  Reactor::TimerId qos_timer_ = 0;
  bool have_qos_timer_ = false;
  bool qos_armed_ = false;
  bool qos_waiting_ = false;                           // the head waits for credit since qos_since_
  QosDir qos_dir_ = QosDir::kRead;                     // the waiting head's direction
  std::chrono::steady_clock::time_point qos_since_{};  // when the head began to wait
  std::vector<BurstMap> bursts_;
  uint32_t free_burst_ = UINT32_MAX;

  // Scratch for one dispatch (sized at start; no datapath allocation).
  std::array<BlkRequest, kMaxBurst> consumed_{};
  std::vector<int16_t> status_;
  // The grant scratch of one dispatch (a burst's refs, pages and handles:
  // burst x segments, 128 KiB at the defaults) is the worker thread's, shared
  // by its queues: a dispatch runs to its end before another queue's starts,
  // and a thousand idle queues do not hold a thousand copies.
  struct DispatchScratch {
    std::vector<GrantRef> refs;
    std::vector<std::byte*> pages;
    std::vector<PersistentGrants::Handle> handles;
  };
  static DispatchScratch& scratch() noexcept;
  // A slot holds room for a direct request's segments until it first
  // carries an indirect one; then for segment_capacity() (kept: the
  // frontend that used indirect requests once will again). False: no memory.
  bool grow_slot(Slot& s) noexcept;
};

}  // namespace xenpath
