// SimFrontRing<Types>: the frontend end of a shared ring, for simulated
// guests, built on the real <xen/io/ring.h> macros (what Linux blkfront and
// netfront use), so the backend is exercised against the genuine index and
// event protocol.
//
// Owned by the simulated guest's thread. Works on the guest's own view of its
// ring pages (caller-provided, page aligned). It can misbehave on request:
// publish a bogus producer index or rewrite a request after publishing it.
#pragma once

#include <cstddef>
#include <span>

#include "common/result.h"
#include "common/xen/ring_protocol.h"
#include "common/xen/types.h"

namespace xenpath::sim {

template <typename Types>
class SimFrontRing {
 public:
  using Sring = typename Types::Sring;
  using Request = typename Types::Request;
  using Response = typename Types::Response;

  // Initialises the shared ring (SHARED_RING_INIT) in `shared`, `bytes` long.
  Status init(void* shared, size_t bytes) noexcept {
    if (shared == nullptr || bytes < kPageSize || (bytes & (bytes - 1)) != 0) return unexpected(EINVAL);
    auto* sring = static_cast<Sring*>(shared);
    SHARED_RING_INIT(sring);
    FRONT_RING_INIT(&ring_, sring, bytes);
    return ok();
  }

  // As init(), but with every index starting at `start` (e.g. just below
  // 2^32, to exercise index wrap-around in the backend).
  Status init_at(void* shared, size_t bytes, RING_IDX start) noexcept {
    XP_TRY(init(shared, bytes));
    auto* sring = static_cast<Sring*>(shared);
    sring->req_prod = sring->rsp_prod = start;
    sring->req_event = sring->rsp_event = start + 1;
    FRONT_RING_ATTACH(&ring_, sring, start, bytes);
    return ok();
  }

  [[nodiscard]] unsigned size() const noexcept { return RING_SIZE(&ring_); }
  [[nodiscard]] unsigned free_slots() const noexcept { return RING_FREE_REQUESTS(&ring_); }
  [[nodiscard]] Sring* shared() const noexcept { return ring_.sring; }
  [[nodiscard]] RING_IDX req_prod_pvt() const noexcept { return ring_.req_prod_pvt; }

  // Queues a request (published at flush()). False when the ring is full.
  bool push(const Request& req) noexcept {
    if (RING_FULL(&ring_)) return false;
    *RING_GET_REQUEST(&ring_, ring_.req_prod_pvt) = req;
    ++ring_.req_prod_pvt;
    return true;
  }

  // Publishes queued requests; true when the backend must be notified.
  bool flush() noexcept {
    int notify = 0;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&ring_, notify);
    return notify != 0;
  }

  // Copies out up to out.size() responses.
  unsigned take_responses(std::span<Response> out) noexcept {
    const RING_IDX rp = ring_.sring->rsp_prod;
    xen_rmb();
    unsigned n = 0;
    while (ring_.rsp_cons != rp && n < out.size()) {
      RING_COPY_RESPONSE(&ring_, ring_.rsp_cons, &out[n]);
      ++ring_.rsp_cons;
      ++n;
    }
    return n;
  }

  // Re-arms rsp_event; true when responses arrived meanwhile.
  bool final_check_responses() noexcept {
    int work = 0;
    RING_FINAL_CHECK_FOR_RESPONSES(&ring_, work);
    return work != 0;
  }

  // Misbehaviour, for hostile-input tests.
  void set_req_prod_raw(RING_IDX prod) noexcept {
    xen_wmb();
    ring_.sring->req_prod = prod;
  }
  void rewrite_request(RING_IDX idx, const Request& req) noexcept { *RING_GET_REQUEST(&ring_, idx) = req; }

 private:
  typename Types::FrontRing ring_{};
};

}  // namespace xenpath::sim
