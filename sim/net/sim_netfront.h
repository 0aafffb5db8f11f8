// SimNetfront: what a netfront driver in a simulated guest does on the two
// netif rings: grants a page per TX slot (read-only, as Linux netfront
// does) and queues chained requests with their extras, posts RX buffers
// (granted writable, id = ring index, as netfront does, since extras overlay
// the id), reassembles received packets from data and extra slots, and
// revokes every grant after its answer (a grant still mapped by then is a
// backend bug it counts).
//
// Used by the integration tests and meant for a load generator. Owned by the
// simulated guest's thread; touches the guest's own memory (rings, pages).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "common/result.h"
#include "common/ring_types.h"
#include "common/xen/event_channel.h"
#include "sim/front_ring.h"
#include "sim/sim_host.h"

namespace xenpath::sim {

class SimNetfront {
 public:
  struct Options {
    DomId backend = kDom0;
    bool split_event_channels = false;
    unsigned tx_pages = 256;  // TX page pool (one page per slot in flight)
    unsigned rx_pages = 256;  // RX buffer pool
  };

  struct TxFrame {
    std::vector<uint8_t> bytes;
    // Bytes per slot, in order (sum = frame size); empty: one slot if the
    // frame fits a page from `first_offset`, else page-sized slots.
    std::vector<uint16_t> slots;
    uint16_t first_offset = 0;  // where in its page the first slot starts (others at 0)
    bool csum_blank = false;
    bool data_validated = false;
    uint8_t gso_type = XEN_NETIF_GSO_TYPE_NONE;
    uint16_t gso_size = 0;
    // A XEN_NETIF_EXTRA_TYPE_HASH extra (after the GSO one when both).
    bool has_hash = false;
    uint8_t hash_type = 0;  // _XEN_NETIF_CTRL_HASH_TYPE_*
    uint32_t hash_value = 0;
  };

  struct RxFrame {
    std::vector<uint8_t> bytes;
    uint16_t flags = 0;  // NETRXF_* of the first slot
    uint8_t gso_type = XEN_NETIF_GSO_TYPE_NONE;
    uint16_t gso_size = 0;
    bool has_hash = false;  // a HASH extra came with it
    uint8_t hash_type = 0;  // _XEN_NETIF_CTRL_HASH_TYPE_*
    uint32_t hash_value = 0;
    int16_t error = 0;  // a negative slot status (the packet is bad)
  };

  static Result<std::unique_ptr<SimNetfront>> create(SimDomain& dom, EventChannel& evtchn,
                                                     const Options& opts) noexcept;
  ~SimNetfront();
  SimNetfront(const SimNetfront&) = delete;
  SimNetfront& operator=(const SimNetfront&) = delete;

  // What xenbus would carry to the backend.
  [[nodiscard]] GrantRef tx_ring_ref() const noexcept { return tx_ref_; }
  [[nodiscard]] GrantRef rx_ring_ref() const noexcept { return rx_ref_; }
  [[nodiscard]] EvtchnPort tx_port() const noexcept { return tx_port_; }
  [[nodiscard]] EvtchnPort rx_port() const noexcept { return rx_port_; }

  // Queues one frame and kicks the backend if the ring macros say so.
  // EAGAIN when the ring or the page pool is full, EINVAL for slot sizes
  // that do not add up.
  Status send(const TxFrame& f) noexcept;
  // Raw requests (hostile tests): pushed as they are, then kicked.
  Status send_raw(std::span<const netif_tx_request> reqs) noexcept;
  // A granted TX page holding `bytes` at `offset` (for raw requests); the
  // grant is revoked when a response with `id` comes back.
  Result<GrantRef> grant_tx(std::span<const uint8_t> bytes, uint16_t offset, uint16_t& id) noexcept;
  // One raw request (hostile tests): `bytes` granted at `grant_offset`, the
  // request claiming `req_offset` and `size` (which may lie); its id.
  Result<uint16_t> send_raw_slot(std::span<const uint8_t> bytes, uint16_t grant_offset, uint16_t req_offset,
                                 uint16_t size) noexcept;
  // A TX producer index `ahead` requests past ours, kicked (hostile tests:
  // more than the ring holds overruns it).
  void overrun_tx(RING_IDX ahead) noexcept;
  // A multicast control request, as netfront sends it: an empty slot with
  // one XEN_NETIF_EXTRA_TYPE_MCAST_ADD or _DEL extra for `group`.
  Status send_multicast(uint8_t type, const uint8_t (&group)[6]) noexcept;

  // Posts up to `n` RX buffers (as many as the ring and pool allow).
  unsigned post_rx(unsigned n) noexcept;

  // Takes the TX answers that arrived (NULLs skipped), revoking their grants.
  unsigned reap_tx(std::vector<netif_tx_response>& out) noexcept;
  // Takes whole received packets.
  unsigned reap_rx(std::vector<RxFrame>& out) noexcept;

  // Before the guest sleeps on its event channel: re-arms response
  // notifications on both rings (RING_FINAL_CHECK_FOR_RESPONSES); true when
  // responses arrived meanwhile (do not sleep then).
  bool arm() noexcept;

  // Calls reap_*() until `done()` or the timeout (bounded; sleeps briefly).
  bool wait(const std::function<bool()>& done, std::chrono::milliseconds timeout = std::chrono::seconds(5));

  [[nodiscard]] unsigned tx_in_flight() const noexcept { return tx_in_flight_; }
  [[nodiscard]] unsigned rx_posted() const noexcept { return rx_posted_; }
  // Grants the backend still had mapped when their answer came (leaks).
  [[nodiscard]] unsigned revoke_failures() const noexcept { return revoke_failures_; }

 private:
  SimNetfront(SimDomain& dom, EventChannel& evtchn, const Options& opts) noexcept
      : dom_(dom), evtchn_(evtchn), opts_(opts) {}
  Status init() noexcept;
  void kick_tx(bool notify) noexcept;
  void release_page(uint32_t pfn, GrantRef ref) noexcept;

  struct TxSlot {
    uint32_t pfn = 0;
    GrantRef ref = 0;
    bool busy = false;
  };
  struct RxSlot {
    uint32_t pfn = 0;
    GrantRef ref = 0;
    bool posted = false;
  };

  SimDomain& dom_;
  EventChannel& evtchn_;
  Options opts_;
  uint32_t tx_ring_pfn_ = 0;
  uint32_t rx_ring_pfn_ = 0;
  GrantRef tx_ref_ = 0;
  GrantRef rx_ref_ = 0;
  EvtchnPort tx_port_ = 0;
  EvtchnPort rx_port_ = 0;
  SimFrontRing<NetifTxRing> tx_;
  SimFrontRing<NetifRxRing> rx_;
  std::vector<TxSlot> tx_slots_;  // by id
  std::vector<uint16_t> tx_free_;
  unsigned tx_in_flight_ = 0;
  std::vector<uint32_t> rx_pool_;  // free RX pages
  std::vector<RxSlot> rx_slots_;   // by ring index & mask
  RING_IDX rx_prod_ = 0;           // our own copy of req_prod_pvt
  RING_IDX rx_cons_ = 0;
  unsigned rx_posted_ = 0;
  std::vector<netif_rx_response> rx_pending_;  // responses of a packet still incomplete
  unsigned revoke_failures_ = 0;
};

}  // namespace xenpath::sim
