// Guest TX (frontend -> backend) request parsing: turns the private copies
// of a packet's ring slots into a plan — which bytes to grant-copy into the
// packet's head buffer, which slot ranges to grant-map (or copy, below a
// crossover size), the checksum/GSO/hash metadata, and the responses owed.
//
// The rules are Linux xen-netback's (netback.c: xenvif_tx_build_gops,
// xenvif_get_extras, xenvif_count_requests, xenvif_get_requests with the
// XSA-423/448 fixes), so a frontend sees the same behaviour:
// - the first slot's `size` is the whole packet; NETTXF_more_data chains the
//   following slots, whose sizes are subtracted from it;
// - NETTXF_extra_info: extra-info slots follow the first slot (chained with
//   XEN_NETIF_EXTRA_FLAG_MORE); each is answered with NETIF_RSP_NULL right
//   after the first slot's response; a later extra of a type replaces an
//   earlier one; type 0 or >= XEN_NETIF_EXTRA_TYPE_MAX is fatal;
// - MCAST_ADD/MCAST_DEL requests carry no packet: answered at once;
// - more than `legacy_slots_max` (18) follow-on slots: the packet is dropped
//   with NETIF_RSP_ERROR for every slot; more than `fatal_slots` (20), a slot
//   crossing its page, a chain or extra chain running past what the frontend
//   published, a zero GSO size or an unknown GSO type: the frontend is
//   malicious and the queue halts (Linux disables the vif);
// - a follow-on slot larger than what remains of the packet (the frontend
//   overflowed the 16-bit size with a >= 64 KiB frame) or a first slot under
//   an Ethernet header (14 bytes): dropped with errors;
// - the first `header_copy` (128) bytes are grant-copied, across slots if
//   the first is short; a slot only partly copied has its rest mapped;
//   zero-length follow-on slots are answered OKAY at once and never mapped.
//
// Pure and allocation-free: owned by the queue's thread; it reads only the
// private copies it is given, never guest memory.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "common/xen/ring_protocol.h"
#include "common/xen/types.h"

#include <xen/io/netif.h>

namespace xenpath {

struct NetifTxLimits {
  // XEN_NETBK_LEGACY_SLOTS_MAX: follow-on slots (after the first) allowed
  // before a packet is dropped.
  uint16_t legacy_slots_max = 18;
  // Linux's fatal_skb_slots: follow-on slots beyond which the frontend is
  // declared malicious. Clamped to kMaxFatalSlots.
  uint16_t fatal_slots = 20;
  // XEN_NETBACK_TX_COPY_LEN: bytes grant-copied into the head buffer so the
  // protocol headers cannot change under us.
  uint16_t header_copy = 128;
  // Slot remainders shorter than this are grant-copied instead of mapped: a
  // map + unmap costs more than copying a few hundred bytes. 0 maps all.
  uint16_t copy_below = 0;
};

inline constexpr unsigned kMaxFatalSlots = 64;
inline constexpr unsigned kMaxTxSlots = 1 + kMaxFatalSlots;
inline constexpr unsigned kMaxTxPieces = kMaxTxSlots + 1;  // one slot may be split copy/map
inline constexpr uint16_t kEthHeaderLen = 14;

enum class TxVerdict : uint8_t {
  kPacket,     // a packet: execute `pieces`, answer `slots` when their pieces are done
  kMulticast,  // an MCAST_ADD/DEL request: apply it, answer slot 0 (+ nulls)
  kDrop,       // answer every slot with NETIF_RSP_ERROR (slot 0 + nulls first)
  kNeedMore,   // the packet continues beyond the requests given: consume nothing yet
  kFatal,      // malicious frontend: halt the queue, answer nothing
};

enum class TxError : uint8_t {
  kNone,
  kTooManySlots,  // drop: more than legacy_slots_max follow-on slots
  kSlotOverflow,  // drop: a follow-on slot larger than the remaining size
  kRunt,          // drop: first slot shorter than an Ethernet header
  kChainTooLong,  // fatal: more than fatal_slots follow-on slots
  kCrossesPage,   // fatal: offset + size beyond the page
  kTruncated,     // fatal: chain or extras end where the frontend's requests end
  kBadExtraType,  // fatal
  kBadGso,        // fatal: size 0 or unknown type
};

const char* tx_error_name(TxError e) noexcept;

// One response owed per ring slot consumed, in ring order.
struct TxSlot {
  uint16_t id = 0;
  uint16_t nulls = 0;  // NETIF_RSP_NULL responses that follow this one (extras)
  uint8_t pieces = 0;  // pieces of the plan that must complete first (0: answer now)
};

struct TxPiece {
  enum Kind : uint8_t {
    kHeader,  // grant-copy into the head buffer (packet bytes [0, header_len))
    kCopy,    // grant-copy (below the crossover) as packet data
    kMap,     // grant-map and attach as an external segment
  };
  Kind kind = kHeader;
  uint8_t slot = 0;     // index into TxPlan::slots
  uint16_t offset = 0;  // within the granted page; offset + len <= 4096
  uint16_t len = 0;     // > 0
  GrantRef gref = 0;
};

struct TxPlan {
  TxVerdict verdict = TxVerdict::kNeedMore;
  TxError error = TxError::kNone;
  uint16_t consumed = 0;    // requests used from the front of the span
  uint32_t size = 0;        // packet bytes (sum of piece lengths)
  uint16_t header_len = 0;  // bytes of kHeader pieces

  bool csum_blank = false;      // NETTXF_csum_blank: L4 checksum to fill in
  bool data_validated = false;  // NETTXF_data_validated
  uint8_t gso_type = XEN_NETIF_GSO_TYPE_NONE;
  uint16_t gso_size = 0;
  bool has_hash = false;  // a HASH extra with an L3/L4 hash type
  uint8_t hash_type = 0;  // _XEN_NETIF_CTRL_HASH_TYPE_*
  uint32_t hash_value = 0;
  uint8_t mcast_type = 0;  // XEN_NETIF_EXTRA_TYPE_MCAST_ADD / _DEL for kMulticast
  std::array<uint8_t, 6> mcast_addr{};

  std::array<TxSlot, kMaxTxSlots> slots{};
  uint8_t n_slots = 0;
  std::array<TxPiece, kMaxTxPieces> pieces{};
  uint8_t n_pieces = 0;

  [[nodiscard]] std::span<const TxSlot> slot_span() const noexcept { return {slots.data(), n_slots}; }
  [[nodiscard]] std::span<const TxPiece> piece_span() const noexcept { return {pieces.data(), n_pieces}; }
};

// Parses the request at the front of `reqs` (private copies, ring order).
// `more_published`: the frontend has published requests beyond `reqs`
// (so a chain cut off at the end of `reqs` is to be continued, kNeedMore,
// rather than truncated, kFatal, as Linux judges it against req_prod).
void parse_tx(std::span<const netif_tx_request> reqs, bool more_published, const NetifTxLimits& limits,
              TxPlan& out) noexcept;

}  // namespace xenpath
