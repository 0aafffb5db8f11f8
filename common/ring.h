// BackRing<Types>: the backend end of a Xen shared ring, typed, over the
// <xen/io/ring.h> macros.
//
// Owned by one reactor thread (the queue's). Touches guest-shared memory: the
// ring pages (indexes, request slots, response slots). The guest may rewrite
// any of it at any time, so:
// - req_prod is read once per consume(), then xen_rmb() before the slots;
// - each request is copied out (RING_COPY_REQUEST, a volatile copy) and only
//   the private copy is ever looked at again;
// - a producer index claiming more requests than the ring can hold means a
//   broken or hostile frontend: the ring halts for good (EPROTO) and consumes
//   nothing more (Linux blkback/netback do the same).
// Responses go to the slot at rsp_prod_pvt, which always trails req_cons: a
// response reuses the slot of an already consumed request, so netif RX's
// "response in the same slot as its request" follows from the index order.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

#include "common/result.h"
#include "common/stats.h"
#include "common/xen/ring_protocol.h"
#include "common/xen/types.h"

namespace xenpath {

template <typename Types>
class BackRing {
 public:
  using Sring = typename Types::Sring;
  using Request = typename Types::Request;
  using Response = typename Types::Response;

  // Up to 2^kMaxOrder pages (xen-blkback allows order 4; netback uses 0).
  static constexpr unsigned kMaxOrder = 4;

  BackRing() noexcept = default;

  // `shared` is the mapped ring (kPageSize << ring-page-order bytes,
  // contiguous). The frontend initialised it (SHARED_RING_INIT) before
  // publishing the ring-ref; it may also hand over a ring that is already in
  // use (reconnect after a backend restart), so we attach at its current
  // indexes, as Linux's BACK_RING_ATTACH does, and refuse a ring whose
  // indexes are already inconsistent (EPROTO).
  Status attach(void* shared, size_t bytes, RingQueueStats* stats = nullptr) noexcept {
    if (shared == nullptr || bytes < kPageSize || bytes > (kPageSize << kMaxOrder) || (bytes & (bytes - 1)) != 0) {
      return unexpected(EINVAL);
    }
    auto* sring = static_cast<Sring*>(shared);
    const RING_IDX rsp_prod = read_once(sring->rsp_prod);
    const RING_IDX req_prod = read_once(sring->req_prod);
    BACK_RING_ATTACH(&ring_, sring, rsp_prod, bytes);
    if (req_prod - rsp_prod > RING_SIZE(&ring_)) {
      ring_ = {};
      return unexpected(EPROTO);
    }
    halted_ = false;
    stats_ = stats;
    return ok();
  }

  [[nodiscard]] bool attached() const noexcept { return ring_.sring != nullptr; }
  [[nodiscard]] unsigned size() const noexcept { return RING_SIZE(&ring_); }
  [[nodiscard]] bool halted() const noexcept { return halted_; }
  [[nodiscard]] RING_IDX req_cons() const noexcept { return ring_.req_cons; }
  [[nodiscard]] RING_IDX rsp_prod_pvt() const noexcept { return ring_.rsp_prod_pvt; }
  // Requests consumed and not yet answered.
  [[nodiscard]] unsigned outstanding() const noexcept { return ring_.req_cons - ring_.rsp_prod_pvt; }

  // Requests published and not consumed yet, clamped to what the ring can
  // hold (a hostile req_prod cannot make this large).
  [[nodiscard]] unsigned unconsumed() const noexcept {
    const RING_IDX prod = read_once(ring_.sring->req_prod);
    const RING_IDX avail = prod - ring_.req_cons;
    return std::min<RING_IDX>(avail, size() - outstanding());
  }

  // Copies up to out.size() requests (never more than the ring holds) into
  // `out` and consumes them. EPROTO once the frontend overflowed the ring.
  Result<unsigned> consume(std::span<Request> out) noexcept {
    if (halted_) return unexpected(EPROTO);
    const RING_IDX rp = read_once(ring_.sring->req_prod);
    xen_rmb();  // See the slots the producer wrote before it moved req_prod.
    // Overflow: more requests than the ring holds. Also a producer index
    // that moved back behind what we already consumed (stricter than Linux):
    // either way the frontend is broken or hostile.
    if (RING_REQUEST_PROD_OVERFLOW(&ring_, rp) ||
        static_cast<RING_IDX>(rp - ring_.req_cons) > static_cast<RING_IDX>(rp - ring_.rsp_prod_pvt)) {
      halted_ = true;
      if (stats_ != nullptr) stats_->halted.set(1);
      return unexpected(EPROTO);
    }
    unsigned n = 0;
    RING_IDX rc = ring_.req_cons;
    const size_t limit = std::min<size_t>(out.size(), size());
    while (rc != rp && n < limit && !RING_REQUEST_CONS_OVERFLOW(&ring_, rc)) {
      RING_COPY_REQUEST(&ring_, rc, &out[n]);
      ++rc;
      ++n;
    }
    ring_.req_cons = rc;
    if (stats_ != nullptr && n > 0) {
      stats_->requests.add(n);
      stats_->batches.add();
    }
    return n;
  }

  // Queues one response (visible to the frontend at the next flush()).
  // Answering more requests than were consumed would overwrite requests the
  // frontend has not handed over: refused (false) rather than corrupting.
  //
  // Only for response types without padding: a struct copied from our
  // stack carries whatever its padding bytes held into guest memory
  // (XSA-216: blkif responses leaked backend stack data exactly so). Types
  // with padding (blkif's) use emplace_response().
  bool push_response(const Response& rsp) noexcept {
    static_assert(std::has_unique_object_representations_v<Response>,
                  "this response type has padding: build it in place with emplace_response() (XSA-216)");
    return emplace_response([&](Response& slot) { slot = rsp; });
  }

  // Builds the next response in place: the slot is zeroed (padding
  // included), then fill(slot) sets the fields.
  template <typename Fill>
  bool emplace_response(Fill&& fill) noexcept {
    if (ring_.rsp_prod_pvt == ring_.req_cons) return false;
    Response* slot = RING_GET_RESPONSE(&ring_, ring_.rsp_prod_pvt);
    std::memset(static_cast<void*>(slot), 0, sizeof(Response));
    fill(*slot);
    ++ring_.rsp_prod_pvt;
    if (stats_ != nullptr) stats_->responses.add();
    return true;
  }

  // Publishes the queued responses; true when the frontend asked to be
  // notified (rsp_event), i.e. the caller must notify its event channel.
  bool flush() noexcept {
    if (ring_.rsp_prod_pvt == ring_.sring->rsp_prod) return false;
    bool notify = false;
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&ring_, notify);
    if (stats_ != nullptr) (notify ? stats_->notifications_sent : stats_->notifications_suppressed).add();
    return notify;
  }

  // Before sleeping: asks for an event on the next request (req_event) and
  // re-checks, closing the race with a request published meanwhile. True =
  // requests are waiting, do not sleep.
  bool final_check() noexcept {
    if (halted_) return false;
    int work = 0;
    RING_FINAL_CHECK_FOR_REQUESTS(&ring_, work);
    return work != 0;
  }

 private:
  template <typename T>
  static T read_once(const T& v) noexcept {
    return *static_cast<const volatile T*>(&v);
  }

  typename Types::BackRing ring_{};
  RingQueueStats* stats_ = nullptr;
  bool halted_ = false;
};

}  // namespace xenpath
