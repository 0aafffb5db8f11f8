// SimBlkfront: what a blkfront driver in a simulated guest does on the ring,
// in any of the three ABIs: grants its data pages (read-only for writes, as
// Linux blkfront does; or a pool of read-write grants reused LIFO when
// persistent), builds direct or indirect requests, publishes them with the
// real ring macros, notifies when they say so, and collects the responses.
// It can also misbehave on request (raw requests, a bogus producer index).
//
// Used by the integration tests and meant for the load generator: run() keeps
// the ring as full as it can until every I/O is answered.
//
// Owned by one thread (the simulated guest's). Touches the guest's own
// memory: ring pages, data pages, indirect descriptor pages.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "blkback/blkif_abi.h"
#include "common/result.h"
#include "common/sim/sim_host.h"
#include "common/xen/event_channel.h"

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
    bool persistent = false;             // reuse a pool of read-write grants
    DomId backend = kDom0;
    uint32_t max_indirect_segments = 0;  // offered by the backend; 0: direct only
    uint32_t sector_size = 512;          // the ring's sector unit
  };

  // One I/O. `data` is the caller's buffer (sectors * sector_size bytes):
  // the source of a write, the destination of a read.
  struct Io {
    uint8_t op = BLKIF_OP_READ;  // READ, WRITE, FLUSH_DISKCACHE, WRITE_BARRIER, DISCARD
    uint64_t sector = 0;
    uint32_t sectors = 0;          // data sectors (0: a dataless flush/barrier)
    std::byte* data = nullptr;
    uint8_t first_sect = 0;        // where in its first page the data starts
    bool indirect = false;         // send as BLKIF_OP_INDIRECT even if it fits direct
    uint64_t discard_sectors = 0;  // DISCARD
    bool secure = false;           // DISCARD with BLKIF_DISCARD_SECURE
    int16_t status = 1;            // out: BLKIF_RSP_*
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

  // Raw access, for hostile tests. push_raw encodes `req` in the ring's ABI
  // as is (its grefs must have been granted by the caller).
  bool push_raw(const BlkRequest& req) noexcept;
  Status kick() noexcept;  // publish + notify (unconditionally)
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
  struct Pending {
    size_t io = 0;
    uint8_t op = 0;
    std::vector<Page> data;      // data pages (pool pages when persistent)
    std::vector<Page> indirect;  // descriptor pages
  };

  SimBlkfront(SimDomain& dom, EventChannel& evtchn, const Options& opts) noexcept;
  Status init() noexcept;
  Result<Page> take_page(bool readonly) noexcept;
  Status give_back(Page p, bool persistent_pool) noexcept;
  Status submit(std::span<Io> ios, size_t i) noexcept;
  Status complete(std::span<Io> ios, const BlkResponse& r) noexcept;
  Status wait_event(std::chrono::milliseconds limit) noexcept;

  SimDomain& dom_;
  EventChannel& evtchn_;
  Options opts_;
  std::unique_ptr<Ring> ring_;
  uint32_t ring_pfn_ = 0;
  std::vector<GrantRef> ring_refs_;
  EvtchnPort port_ = 0;
  bool bound_ = false;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Pending> pending_;
  std::vector<Page> pool_;       // every persistent page (revoked at the end)
  std::vector<Page> pool_free_;  // LIFO, as blkfront keeps them
  // Non-persistent: guest pages reused for I/O (a guest's buffers are
  // long-lived memory), granted per request and revoked after the answer.
  std::vector<uint32_t> spare_pfns_;
};

}  // namespace xenpath::sim
