// VbdQueue::Slot: one request's state from the ring to its response; private
// to blk_queue.cc and blk_queue_map.cc (the queue's two halves).
//
// Owned by the queue's worker thread. Its `pages` and `iov` point into
// guest pages mapped for the request (or into the persistent-grant table's
// mappings) while it is in flight.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "blkback/blk_queue.h"
#include "common/aligned_bytes.h"

namespace xenpath {

// A slot holding no share of a mapped burst.
inline constexpr uint32_t kNoBurst = UINT32_MAX;

struct VbdQueue::Slot final : ImageOp {
  VbdQueue* q = nullptr;
  BlkRequest req;                         // the private copy off the ring
  BlkAdmitted a;                          // what admission accepted (its segs point into req or indirect_segs)
  std::vector<BlkSegment> indirect_segs;  // descriptors copied out of indirect pages
  std::vector<iovec> iov;
  unsigned iovcnt = 0;
  std::vector<std::byte*> pages;  // mapped page of each segment
  std::vector<PersistentGrants::Handle> handles;
  unsigned nhandles = 0;
  uint32_t burst = kNoBurst;
  GrantMapping own;  // a request mapped on its own (fallback, or transient overflow)
  int16_t rsp_status = BLKIF_RSP_OKAY;
  Phase phase = Phase::kFree;
  bool started = false;
  // QoS: the bytes taken from its direction's bucket (corrected when it
  // starts), and whether it had to wait (counted once).
  QosDir qos_dir = QosDir::kRead;
  bool qos_waited = false;
  uint64_t qos_bytes = 0;
  // When it was taken off the ring (the fine clock; default while off).
  std::chrono::steady_clock::time_point taken{};
  Slot* next = nullptr;
  // A probed raw disk's last block, copied out of a write (made on first use).
  AlignedBytes guard_copy;

  void image_done(int result) noexcept override { q->on_done(*this, result); }
};

}  // namespace xenpath
