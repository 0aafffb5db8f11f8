#include "netback/net_protocol_rx.h"

#include <algorithm>
#include <cstring>

namespace xenpath {

unsigned rx_slots_needed(uint32_t len, bool gso, bool hash) noexcept {
  const unsigned data = static_cast<unsigned>((static_cast<uint64_t>(len) + kPageSize - 1) / kPageSize);
  return data + (gso ? 1u : 0u) + (hash ? 1u : 0u);
}

void RxBatch::reset(std::span<const netif_rx_request> reqs, DomId domid) noexcept {
  reqs_ = reqs;
  domid_ = domid;
  n_copies_ = 0;
  n_rsps_ = 0;
  n_packets_ = 0;
  bytes_ = 0;
}

RxVerdict RxBatch::add(const RxPacket& pkt) noexcept {
  uint64_t len = 0;
  size_t nonempty = 0;
  for (const auto& s : pkt.segs) {
    len += s.len;
    if (s.len != 0) ++nonempty;
  }
  if (len == 0) return RxVerdict::kEmpty;
  const bool gso = pkt.gso_type != XEN_NETIF_GSO_TYPE_NONE;
  const unsigned data_slots = static_cast<unsigned>((len + kPageSize - 1) / kPageSize);
  if (data_slots > kMaxRxDataSlots) return RxVerdict::kTooBig;
  const unsigned extras = (gso ? 1u : 0u) + (pkt.has_hash ? 1u : 0u);
  const unsigned needed = data_slots + extras;
  if (n_rsps_ + needed > reqs_.size()) return RxVerdict::kNoSlots;
  // Each copy ends at a slot end or a segment end: at most one per slot
  // plus one per segment boundary.
  const size_t worst_copies = data_slots + nonempty;
  if (n_rsps_ + needed > rsps_.size() || n_copies_ + worst_copies > copies_.size() ||
      n_copies_ + worst_copies > owner_.size()) {
    return RxVerdict::kBatchFull;
  }

  size_t seg = 0;
  uint32_t seg_off = 0;
  uint64_t remaining = len;
  unsigned extras_left = extras;
  bool first = true;
  while (remaining > 0 || extras_left > 0) {
    const unsigned ri = n_rsps_++;
    const netif_rx_request& req = reqs_[ri];
    netif_rx_response& rsp = rsps_[ri];
    if (!first && extras_left > 0) {
      // Extras right after the first data slot: GSO before HASH, as the
      // type order Linux walks them in.
      netif_extra_info e{};
      const bool gso_next = gso && extras_left == extras;
      if (gso_next) {
        e.type = XEN_NETIF_EXTRA_TYPE_GSO;
        e.u.gso.type = pkt.gso_type;
        e.u.gso.size = pkt.gso_size;
      } else {
        e.type = XEN_NETIF_EXTRA_TYPE_HASH;
        e.u.hash.type = pkt.hash_type;
        e.u.hash.algorithm = XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ;
        std::memcpy(e.u.hash.value, &pkt.hash_value, sizeof(pkt.hash_value));
      }
      --extras_left;
      if (extras_left > 0) e.flags = XEN_NETIF_EXTRA_FLAG_MORE;
      static_assert(sizeof(e) == sizeof(rsp));
      std::memcpy(&rsp, &e, sizeof(rsp));
      continue;
    }
    // A data slot: fill the guest page from offset 0.
    uint32_t off = 0;
    while (off < kPageSize && remaining > 0) {
      while (pkt.segs[seg].len == seg_off) {  // next non-empty segment
        ++seg;
        seg_off = 0;
      }
      const PacketSegment& s = pkt.segs[seg];
      const uint32_t n = std::min<uint32_t>(s.len - seg_off, static_cast<uint32_t>(kPageSize - off));
      GrantCopySegment& c = copies_[n_copies_];
      c = GrantCopySegment{};
      c.source.virt = const_cast<std::byte*>(s.data + seg_off);
      c.dest.foreign.ref = req.gref;
      c.dest.foreign.offset = static_cast<uint16_t>(off);
      c.dest.foreign.domid = domid_;
      c.len = static_cast<uint16_t>(n);
      c.flags = kCopyDestGref;
      c.status = GNTST_okay;
      owner_[n_copies_] = static_cast<uint16_t>(ri);
      ++n_copies_;
      seg_off += n;
      off += n;
      remaining -= n;
    }
    uint16_t flags = remaining > 0 ? NETRXF_more_data : 0;
    if (first) {
      if (pkt.csum_blank) flags |= NETRXF_csum_blank | NETRXF_data_validated;
      else if (pkt.data_validated) flags |= NETRXF_data_validated;
      if (extras > 0) flags |= NETRXF_extra_info;
      first = false;
    }
    rsp.id = req.id;
    rsp.offset = 0;
    rsp.flags = flags;
    rsp.status = static_cast<int16_t>(off);
  }
  ++n_packets_;
  bytes_ += len;
  return RxVerdict::kPlanned;
}

unsigned RxBatch::apply_copy_status() noexcept {
  unsigned failed = 0;
  for (unsigned i = 0; i < n_copies_; ++i) {
    if (copies_[i].status == GNTST_okay) continue;
    ++failed;
    // NETIF_RSP_ERROR (XEN_NETIF_RSP_ERROR in Linux), as Linux's
    // xenvif_rx_copy_flush() answers: a frontend knows the netif statuses,
    // not the grant table's.
    rsps_[owner_[i]].status = NETIF_RSP_ERROR;
  }
  return failed;
}

}  // namespace xenpath
