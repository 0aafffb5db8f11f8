// SimBlkfront: what a blkfront driver in a simulated guest does on the ring,
// in any of the three ABIs: grants its data pages (read-only for writes, as
// Linux blkfront does; or a pool of read-write grants reused LIFO when
// persistent), builds direct or indirect requests, publishes them with the
// real ring macros, notifies when they say so, and collects the responses.
// It can also misbehave on request (raw requests, a bogus producer index).
//
// Two ways to drive it: run() (the tests) keeps the ring as full as it can
// until every I/O of a batch is answered; the non-blocking calls (start,
// publish, reap, rearm, wait_event: what BlkLoad uses) let one guest thread
// keep a queue depth outstanding on several rings at once.
//
// Owned by one thread (the simulated guest's). Touches the guest's own
// memory: ring pages, data pages, indirect descriptor pages.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "blkback/blk_abi.h"
#include "common/result.h"
#include "common/xen/event_channel.h"
#include "sim/sim_host.h"

namespace xenpath::sim {

struct BlkResponse {
  uint64_t id = 0;
  uint8_t op = 0;
  int16_t status = 0;
};

class SimBlkfront {
 public:
  struct Options {
    BlkProtocol protocol = BlkProtocol::kNative;
    unsigned ring_order = 0;
    bool persistent = false;  // reuse a pool of read-write grants
    DomId backend = kDom0;
    uint32_t max_indirect_segments = 0;  // offered by the backend; 0: direct only
    uint32_t sector_size = 512;          // the ring's sector unit
  };

  // One I/O. `data` is the caller's buffer (sectors * sector_size bytes):
  // the source of a write, the destination of a read. nullptr: no copy at
  // all, the granted pages are the buffer (as Linux blkfront grants a bio's
  // own pages when not persistent); their content is then whatever the
  // guest page held or the backend put there.
  struct Io {
    uint8_t op = BLKIF_OP_READ;  // READ, WRITE, FLUSH_DISKCACHE, WRITE_BARRIER, DISCARD
    uint64_t sector = 0;
    uint32_t sectors = 0;  // data sectors (0: a dataless flush/barrier)
    std::byte* data = nullptr;
    uint8_t first_sect = 0;        // where in its first page the data starts
    bool indirect = false;         // send as BLKIF_OP_INDIRECT even if it fits direct
    uint64_t discard_sectors = 0;  // DISCARD
    bool secure = false;           // DISCARD with BLKIF_DISCARD_SECURE
    int16_t status = 1;            // out: BLKIF_RSP_*
    // out: the frontend's own verdict on the answer: EPROTO answered with
    // the wrong operation, EBUSY a grant still mapped after the answer.
    int error = 0;
  };

  static Result<std::unique_ptr<SimBlkfront>> create(SimDomain& dom, EventChannel& evtchn,
                                                     const Options& opts) noexcept;
  // Revokes every grant it still holds.
  ~SimBlkfront();
  SimBlkfront(const SimBlkfront&) = delete;
  SimBlkfront& operator=(const SimBlkfront&) = delete;

  // What the backend needs (xenbus would carry them): ring-ref(s), port.
  [[nodiscard]] const std::vector<GrantRef>& ring_refs() const noexcept { return ring_refs_; }
  [[nodiscard]] EvtchnPort port() const noexcept { return port_; }
  [[nodiscard]] unsigned ring_size() const noexcept;
  [[nodiscard]] const Options& options() const noexcept { return opts_; }

  // Submits every I/O (as many at once as the ring holds), waits for all the
  // answers and fills their status. EPROTO for an answer to nothing we sent
  // or with the wrong operation, ETIMEDOUT when answers stop, EBUSY when a
  // data grant could not be revoked after its answer (the backend kept it
  // mapped: a leak), EINVAL for an I/O that cannot be expressed.
  Status run(std::span<Io> ios, std::chrono::milliseconds timeout = std::chrono::seconds(10)) noexcept;

  // Non-blocking interface. start() puts one I/O on the ring without
  // publishing it (ENOSPC when the ring is full, EINVAL when it cannot be
  // expressed); `io` and its data must stay put until reap() returns it.
  // publish() makes started requests visible and notifies when the ring
  // macros say so. reap() completes up to out.size() answered I/Os (status,
  // read data copied out, grants released) and returns them. rearm()
  // re-arms the response event; true when answers arrived meanwhile (reap
  // before sleeping). wait_event() blocks until the event channel fires or
  // `limit` passes, and unmasks what fired (every port of the handle: the
  // rings sharing it must all be reaped afterwards).
  [[nodiscard]] unsigned free_slots() const noexcept;
  [[nodiscard]] size_t in_flight() const noexcept { return in_flight_; }
  Status start(Io& io) noexcept;
  Status publish() noexcept;
  unsigned reap(std::span<Io*> out) noexcept;
  bool rearm() noexcept;
  Status wait_event(std::chrono::milliseconds limit) noexcept;
  // Answers to nothing in flight (a misbehaving backend), dropped by reap().
  [[nodiscard]] uint64_t stray_responses() const noexcept { return stray_; }
  [[nodiscard]] EventChannel& event_channel() noexcept { return evtchn_; }

  // Raw access, for hostile tests. push_raw encodes `req` in the ring's ABI
  // as is (its grefs must have been granted by the caller).
  bool push_raw(const BlkRequest& req) noexcept;
  Status kick() noexcept;                                     // publish + notify (unconditionally)
  Status notify() noexcept { return evtchn_.notify(port_); }  // without publishing
  Result<std::vector<BlkResponse>> wait_responses(unsigned n, std::chrono::milliseconds timeout) noexcept;
  void set_req_prod_raw(RING_IDX prod) noexcept;
  [[nodiscard]] RING_IDX req_prod_pvt() const noexcept;
  // A fresh guest page, granted to the backend (the caller ends it).
  Result<GrantRef> grant_page(bool readonly, uint32_t* pfn_out = nullptr) noexcept;
  [[nodiscard]] SimDomain& domain() noexcept { return dom_; }

  // Persistent pool size (pages granted once and kept).
  [[nodiscard]] size_t pool_pages() const noexcept { return pool_.size(); }

  class Ring;  // the ring in the chosen ABI (sim_blkfront.cc)

 private:
  struct Page {
    uint32_t pfn = 0;
    GrantRef ref = 0;
  };
  // One in-flight request, indexed by its slot. Its vectors keep their
  // capacity across requests: no allocation per I/O once warm.
  struct Pending {
    uint64_t id = 0;  // 0: free
    Io* io = nullptr;
    uint8_t op = 0;
    std::vector<Page> data;      // data pages (pool pages when persistent)
    std::vector<Page> indirect;  // descriptor pages
  };

  SimBlkfront(SimDomain& dom, EventChannel& evtchn, const Options& opts) noexcept;
  Status init() noexcept;
  Result<Page> take_page(bool readonly) noexcept;
  Status give_back(Page p, bool persistent_pool) noexcept;
  void release(Pending& p) noexcept;
  Status complete(Pending& p, const BlkResponse& r) noexcept;

  SimDomain& dom_;
  EventChannel& evtchn_;
  Options opts_;
  std::unique_ptr<Ring> ring_;
  uint32_t ring_pfn_ = 0;
  std::vector<GrantRef> ring_refs_;
  EvtchnPort port_ = 0;
  bool bound_ = false;
  // Request ids are (sequence << 16) | slot: the slot finds the request,
  // the sequence catches an answer to a request already answered.
  uint64_t next_seq_ = 1;
  std::vector<Pending> pending_;  // ring_size() slots
  std::vector<uint32_t> free_pending_;
  size_t in_flight_ = 0;
  uint64_t stray_ = 0;
  std::vector<BlkSegment> segs_;  // scratch for start()
  std::vector<Page> pool_;        // every persistent page (revoked at the end)
  std::vector<Page> pool_free_;   // LIFO, as blkfront keeps them
  // Non-persistent: guest pages reused for I/O (a guest's buffers are
  // long-lived memory), granted per request and revoked after the answer.
  std::vector<uint32_t> spare_pfns_;
};

}  // namespace xenpath::sim
