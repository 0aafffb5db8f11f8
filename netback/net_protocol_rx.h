// Guest RX (backend -> frontend) planning: packets plus the RX requests the
// guest posted (one granted page each) become one batch of grant-copy
// segments and the responses to push, for a single GrantTable::copy() call
// per burst.
//
// Linux xen-netback's rx.c layout, which netfront depends on:
// - data is coalesced: each slot is filled from offset 0 to the end of its
//   page, from as many source segments as it takes, so a packet uses
//   ceil(len / 4096) data slots; a copy never crosses the guest page;
// - the first data slot carries NETRXF_csum_blank|NETRXF_data_validated for
//   a packet whose L4 checksum is still blank (Linux CHECKSUM_PARTIAL),
//   NETRXF_data_validated for a verified one, NETRXF_extra_info when extras
//   follow; every data slot but the last carries NETRXF_more_data;
// - the extra-info slots (GSO, then HASH) come right after the first data
//   slot, chained with XEN_NETIF_EXTRA_FLAG_MORE;
// - every response goes in the ring slot of the request it answers (netfront
//   ignores the id for extras): the batch emits them in request order;
// - a slot whose copy failed gets the copy's GNTST status (negative) as its
//   response status.
// A packet is only started when enough requests are posted for all of it.
//
// Owned by the queue's thread. Reads the packet bytes only to point copy
// segments at them; touches no guest memory (the hypervisor does the copy).
#pragma once

#include <cstdint>
#include <span>

#include "common/xen/grant_table.h"
#include "common/xen/ring_protocol.h"
#include "common/xen/types.h"
#include "netback/port.h"

#include <xen/io/netif.h>

namespace xenpath {

// netfront accepts at most XEN_NETIF_NR_SLOTS_MIN data slots per packet.
inline constexpr unsigned kMaxRxDataSlots = XEN_NETIF_NR_SLOTS_MIN;
inline constexpr unsigned kMaxRxExtras = 2;  // GSO, HASH

struct RxPacket {
  std::span<const PacketSegment> segs;  // the bytes, in order (empty segments allowed)
  bool csum_blank = false;              // L4 checksum not filled in yet
  bool data_validated = false;          // L4 checksum verified
  // Only when the frontend negotiated this GSO type (feature-gso-tcpv4/6).
  uint8_t gso_type = XEN_NETIF_GSO_TYPE_NONE;
  uint16_t gso_size = 0;
  // Only when the frontend enabled hashing on the control ring.
  bool has_hash = false;
  uint8_t hash_type = 0;  // _XEN_NETIF_CTRL_HASH_TYPE_*
  uint32_t hash_value = 0;
};

enum class RxVerdict : uint8_t {
  kPlanned,    // copies and responses added
  kNoSlots,    // not enough posted requests for the whole packet: wait
  kBatchFull,  // no room for its copies/responses in this batch: flush first
  kTooBig,     // more data slots than a frontend accepts: drop it
  kEmpty,      // zero-length packet: drop it
};

// Slots (requests) a packet needs: data slots plus extras.
[[nodiscard]] unsigned rx_slots_needed(uint32_t len, bool gso, bool hash) noexcept;

// One burst's worth of copies and responses. The storage is the owner's
// (sized for its burst); the batch never allocates.
class RxBatch {
 public:
  RxBatch(std::span<GrantCopySegment> copies, std::span<uint16_t> copy_owner,
          std::span<netif_rx_response> responses) noexcept
      : copies_(copies), owner_(copy_owner), rsps_(responses) {}

  // Starts a burst over these posted requests (private copies, ring order,
  // starting at the ring's req_cons) of frontend `domid`.
  void reset(std::span<const netif_rx_request> reqs, DomId domid) noexcept;

  RxVerdict add(const RxPacket& pkt) noexcept;

  // After GrantTable::copy() over copies(): failed segments mark their slot.
  // Returns how many segments failed.
  unsigned apply_copy_status() noexcept;

  [[nodiscard]] std::span<GrantCopySegment> copies() noexcept { return copies_.first(n_copies_); }
  // One response per request used, in ring order (extras are
  // netif_extra_info overlaid on the 8-byte response).
  [[nodiscard]] std::span<const netif_rx_response> responses() const noexcept { return {rsps_.data(), n_rsps_}; }
  [[nodiscard]] unsigned requests_used() const noexcept { return n_rsps_; }
  [[nodiscard]] unsigned packets() const noexcept { return n_packets_; }
  [[nodiscard]] uint64_t bytes() const noexcept { return bytes_; }

 private:
  std::span<GrantCopySegment> copies_;
  std::span<uint16_t> owner_;
  std::span<netif_rx_response> rsps_;
  std::span<const netif_rx_request> reqs_;
  DomId domid_ = 0;
  unsigned n_copies_ = 0;
  unsigned n_rsps_ = 0;
  unsigned n_packets_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace xenpath
