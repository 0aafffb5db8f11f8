#include "netback/net_protocol_tx.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "common/enum_names.h"

namespace xenpath {

namespace {

netif_extra_info as_extra(const netif_tx_request& r) noexcept {
  static_assert(sizeof(netif_extra_info) <= sizeof(netif_tx_request));
  netif_extra_info e;
  std::memcpy(&e, &r, sizeof(e));
  return e;
}

void fail(TxPlan& out, TxVerdict v, TxError e) noexcept {
  out.verdict = v;
  out.error = e;
}

}  // namespace

const char* tx_error_name(TxError e) noexcept {
  static constexpr auto kNames = std::to_array<const char*>(
      {"none", "too many slots", "slot larger than remaining packet", "first slot shorter than an Ethernet header",
       "slot chain over the fatal limit", "slot crosses a page boundary", "chain ends where the published requests end",
       "invalid extra-info type", "invalid GSO extra"});
  static_assert(kNames.size() == static_cast<size_t>(TxError::kBadGso) + 1, "a name for every TxError");
  return enum_name(e, kNames, "?");
}

void parse_tx(std::span<const netif_tx_request> reqs, bool more_published, const NetifTxLimits& limits,
              TxPlan& out) noexcept {
  out = TxPlan{};
  const unsigned fatal_slots = std::min<unsigned>(limits.fatal_slots, kMaxFatalSlots);
  // Running out of copied requests mid-packet: wait for more when the
  // frontend published them, else Linux's verdict (req_prod reached) holds.
  auto ran_out = [&]() noexcept {
    if (more_published) fail(out, TxVerdict::kNeedMore, TxError::kNone);
    else fail(out, TxVerdict::kFatal, TxError::kTruncated);
  };
  if (reqs.empty()) {
    fail(out, TxVerdict::kNeedMore, TxError::kNone);
    return;
  }
  netif_tx_request first = reqs[0];
  size_t pos = 1;

  // Extra-info slots: the last one of each type wins.
  std::array<netif_extra_info, XEN_NETIF_EXTRA_TYPE_MAX - 1> extras{};
  uint16_t extra_count = 0;
  if ((first.flags & NETTXF_extra_info) != 0) {
    for (;;) {
      if (pos >= reqs.size()) return ran_out();
      const netif_extra_info e = as_extra(reqs[pos++]);
      ++extra_count;
      if (e.type == XEN_NETIF_EXTRA_TYPE_NONE || e.type >= XEN_NETIF_EXTRA_TYPE_MAX) {
        return fail(out, TxVerdict::kFatal, TxError::kBadExtraType);
      }
      extras[e.type - 1] = e;
      if ((e.flags & XEN_NETIF_EXTRA_FLAG_MORE) == 0) break;
    }
  }
  auto has_extra = [&](unsigned type) { return extras[type - 1].type != XEN_NETIF_EXTRA_TYPE_NONE; };

  out.slots[0] = {first.id, extra_count, 0};
  out.n_slots = 1;

  // Multicast filter updates carry no packet (Linux answers them before
  // looking at the data slots, so a more_data flag on them is ignored).
  for (unsigned type : {XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_MCAST_DEL}) {
    if (!has_extra(type)) continue;
    out.verdict = TxVerdict::kMulticast;
    out.mcast_type = static_cast<uint8_t>(type);
    std::memcpy(out.mcast_addr.data(), extras[type - 1].u.mcast.addr, 6);
    out.consumed = static_cast<uint16_t>(pos);
    return;
  }

  // Follow-on slots (xenvif_count_requests): sizes come off the first's.
  const size_t follow_start = pos;
  unsigned follow = 0;
  bool drop = false;
  TxError drop_error = TxError::kNone;
  if ((first.flags & NETTXF_more_data) != 0) {
    bool more = true;
    while (more) {
      if (pos >= reqs.size()) return ran_out();
      if (follow >= fatal_slots) return fail(out, TxVerdict::kFatal, TxError::kChainTooLong);
      if (!drop && follow >= limits.legacy_slots_max) {
        drop = true;
        drop_error = TxError::kTooManySlots;
      }
      const netif_tx_request& s = reqs[pos++];
      if (!drop && s.size > first.size) {
        // The frontend sent >= 64 KiB and the 16-bit total wrapped; buggy
        // frontends do this, so it is a drop, not fatal.
        drop = true;
        drop_error = TxError::kSlotOverflow;
      }
      first.size = static_cast<uint16_t>(first.size - s.size);
      ++follow;
      if (static_cast<uint32_t>(s.offset) + s.size > kPageSize) {
        return fail(out, TxVerdict::kFatal, TxError::kCrossesPage);
      }
      more = (s.flags & NETTXF_more_data) != 0;
    }
  }
  out.consumed = static_cast<uint16_t>(pos);
  // From here on every consumed slot gets a response (follow <= fatal_slots).
  for (size_t i = follow_start; i < pos; ++i) out.slots[out.n_slots++] = {reqs[i].id, 0, 0};

  if (drop) return fail(out, TxVerdict::kDrop, drop_error);
  if (first.size < kEthHeaderLen) return fail(out, TxVerdict::kDrop, TxError::kRunt);
  if (static_cast<uint32_t>(first.offset) + first.size > kPageSize) {
    return fail(out, TxVerdict::kFatal, TxError::kCrossesPage);
  }

  if (has_extra(XEN_NETIF_EXTRA_TYPE_GSO)) {
    const auto& g = extras[XEN_NETIF_EXTRA_TYPE_GSO - 1].u.gso;
    if (g.size == 0 || (g.type != XEN_NETIF_GSO_TYPE_TCPV4 && g.type != XEN_NETIF_GSO_TYPE_TCPV6)) {
      return fail(out, TxVerdict::kFatal, TxError::kBadGso);
    }
    out.gso_type = g.type;
    out.gso_size = g.size;
  }
  if (has_extra(XEN_NETIF_EXTRA_TYPE_HASH)) {
    const auto& h = extras[XEN_NETIF_EXTRA_TYPE_HASH - 1].u.hash;
    // Linux keeps only hashes of the types it understands (L3 or L4).
    if (h.type <= _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP) {
      out.has_hash = true;
      out.hash_type = h.type;
      uint32_t v = 0;
      std::memcpy(&v, h.value, sizeof(v));  // LSB first, as the guest wrote it
      out.hash_value = v;
    }
  }
  out.csum_blank = (first.flags & NETTXF_csum_blank) != 0;
  out.data_validated = (first.flags & NETTXF_data_validated) != 0;

  // Pieces, in packet order: the slot data are the first slot (its own
  // size now) then the follow-on slots.
  uint32_t total = 0;
  // Of the packet's total size (no slot overflowed it, so it is exact).
  uint32_t to_copy = std::min<uint32_t>(limits.header_copy, reqs[0].size);
  auto add_piece = [&](TxPiece::Kind kind, uint8_t slot, const netif_tx_request& r, uint16_t off,
                       uint16_t len) noexcept {
    out.pieces[out.n_pieces++] = {kind, slot, off, len, r.gref};
    out.slots[slot].pieces++;
    total += len;
  };
  for (uint8_t slot = 0; slot < out.n_slots; ++slot) {
    const netif_tx_request& r = slot == 0 ? first : reqs[follow_start + slot - 1];
    uint16_t off = r.offset;
    uint16_t left = r.size;
    if (left == 0) continue;  // XSA-448: answered OKAY at once, never mapped
    if (to_copy > 0) {
      const uint16_t n = static_cast<uint16_t>(std::min<uint32_t>(to_copy, left));
      add_piece(TxPiece::kHeader, slot, r, off, n);
      out.header_len = static_cast<uint16_t>(out.header_len + n);
      to_copy -= n;
      off = static_cast<uint16_t>(off + n);
      left = static_cast<uint16_t>(left - n);
      if (left == 0) continue;
    }
    add_piece(left < limits.copy_below ? TxPiece::kCopy : TxPiece::kMap, slot, r, off, left);
  }
  out.size = total;
  out.verdict = TxVerdict::kPacket;
}

}  // namespace xenpath
