#include "blkback/blk_abi.h"

#include <algorithm>
#include <cstring>

namespace xenpath {

Result<BlkProtocol> parse_blk_protocol(std::optional<std::string_view> key) noexcept {
  if (!key.has_value()) {
#if defined(__x86_64__) || defined(__i386__)
    return BlkProtocol::kX86_32;
#else
    return BlkProtocol::kNative;
#endif
  }
  if (*key == XEN_IO_PROTO_ABI_NATIVE) return BlkProtocol::kNative;
  if (*key == XEN_IO_PROTO_ABI_X86_32) return BlkProtocol::kX86_32;
  if (*key == XEN_IO_PROTO_ABI_X86_64) return BlkProtocol::kX86_64;
  return unexpected(ENOSYS);
}

std::string_view blk_protocol_name(BlkProtocol p) noexcept {
  switch (p) {
    case BlkProtocol::kNative:
      return XEN_IO_PROTO_ABI_NATIVE;
    case BlkProtocol::kX86_32:
      return XEN_IO_PROTO_ABI_X86_32;
    case BlkProtocol::kX86_64:
      return XEN_IO_PROTO_ABI_X86_64;
  }
  return "?";
}

namespace {

// Reads one variant of a slot. The slot is already a private copy, so a
// memcpy into the variant is the whole story (and keeps clear of reading an
// inactive union member).
template <typename T, typename Slot>
T view(const Slot& slot) noexcept {
  static_assert(sizeof(T) <= sizeof(Slot));
  T t;
  std::memcpy(&t, &slot, sizeof(T));
  return t;
}

// The addressing fields the rw, discard and indirect layouts share, each at
// its own offset per layout and ABI.
template <typename Layout>
void decode_address(const Layout& l, BlkRequest& r) noexcept {
  r.handle = l.handle;
  r.id = l.id;
  r.sector = l.sector_number;
}

template <typename Layout>
void encode_address(const BlkRequest& r, Layout& l) noexcept {
  l.handle = r.handle;
  l.id = r.id;
  l.sector_number = r.sector;
}

template <typename Rw, typename Discard, typename Indirect, typename Other, typename Slot>
BlkRequest decode_layout(const Slot& slot) noexcept {
  BlkRequest r;
  uint8_t op;
  std::memcpy(&op, &slot, 1);
  r.ring_op = op;
  r.op = op;
  switch (op) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
    case BLKIF_OP_WRITE_BARRIER:
    case BLKIF_OP_FLUSH_DISKCACHE: {
      const auto rw = view<Rw>(slot);
      decode_address(rw, r);
      r.nr_segments = rw.nr_segments;
      const unsigned n = std::min<unsigned>(rw.nr_segments, kBlkDirectSegments);
      for (unsigned i = 0; i < n; ++i) {
        r.seg[i] = BlkSegment{rw.seg[i].gref, rw.seg[i].first_sect, rw.seg[i].last_sect};
      }
      break;
    }
    case BLKIF_OP_DISCARD: {
      const auto d = view<Discard>(slot);
      decode_address(d, r);
      r.nr_sectors = d.nr_sectors;
      r.secure = (d.flag & BLKIF_DISCARD_SECURE) != 0;
      break;
    }
    case BLKIF_OP_INDIRECT: {
      const auto ind = view<Indirect>(slot);
      r.indirect = true;
      r.op = ind.indirect_op;
      decode_address(ind, r);
      r.nr_segments = ind.nr_segments;
      const unsigned pages = std::min(blk_indirect_pages(ind.nr_segments), kBlkMaxIndirectPages);
      r.nr_indirect_pages = static_cast<uint8_t>(pages);
      for (unsigned i = 0; i < pages; ++i) r.indirect_grefs[i] = ind.indirect_grefs[i];
      break;
    }
    default: {
      // Unknown operation: only the id, so the answer reaches the request.
      r.id = view<Other>(slot).id;
      break;
    }
  }
  return r;
}

template <typename Rw, typename Discard, typename Indirect, typename Slot>
void encode_layout(const BlkRequest& req, Slot& out) noexcept {
  std::memset(&out, 0, sizeof(out));
  if (req.indirect) {
    Indirect ind{};
    ind.operation = BLKIF_OP_INDIRECT;
    ind.indirect_op = req.op;
    ind.nr_segments = static_cast<uint16_t>(req.nr_segments);
    encode_address(req, ind);
    for (unsigned i = 0; i < kBlkMaxIndirectPages; ++i) ind.indirect_grefs[i] = req.indirect_grefs[i];
    std::memcpy(&out, &ind, sizeof(ind));
    return;
  }
  if (req.op == BLKIF_OP_DISCARD) {
    Discard d{};
    d.operation = BLKIF_OP_DISCARD;
    d.flag = req.secure ? BLKIF_DISCARD_SECURE : 0;
    encode_address(req, d);
    d.nr_sectors = req.nr_sectors;
    std::memcpy(&out, &d, sizeof(d));
    return;
  }
  Rw rw{};
  rw.operation = req.op;
  rw.nr_segments = static_cast<uint8_t>(req.nr_segments);
  encode_address(req, rw);
  for (unsigned i = 0; i < kBlkDirectSegments; ++i) {
    rw.seg[i].gref = req.seg[i].gref;
    rw.seg[i].first_sect = req.seg[i].first_sect;
    rw.seg[i].last_sect = req.seg[i].last_sect;
  }
  std::memcpy(&out, &rw, sizeof(rw));
}

}  // namespace

BlkRequest blk_decode(const blkif_request& slot) noexcept {
  return decode_layout<BlkifX86_64RequestRw, BlkifX86_64RequestDiscard, BlkifX86_64RequestIndirect,
                       BlkifX86_64RequestOther>(slot);
}

BlkRequest blk_decode(const BlkifX86_32Request& slot) noexcept {
  return decode_layout<BlkifX86_32RequestRw, BlkifX86_32RequestDiscard, BlkifX86_32RequestIndirect,
                       BlkifX86_32RequestOther>(slot);
}

BlkRequest blk_decode(const BlkifX86_64Request& slot) noexcept {
  return decode_layout<BlkifX86_64RequestRw, BlkifX86_64RequestDiscard, BlkifX86_64RequestIndirect,
                       BlkifX86_64RequestOther>(slot);
}

void blk_encode(const BlkRequest& req, blkif_request& out) noexcept {
  encode_layout<BlkifX86_64RequestRw, BlkifX86_64RequestDiscard, BlkifX86_64RequestIndirect>(req, out);
}

void blk_encode(const BlkRequest& req, BlkifX86_32Request& out) noexcept {
  encode_layout<BlkifX86_32RequestRw, BlkifX86_32RequestDiscard, BlkifX86_32RequestIndirect>(req, out);
}

void blk_encode(const BlkRequest& req, BlkifX86_64Request& out) noexcept {
  encode_layout<BlkifX86_64RequestRw, BlkifX86_64RequestDiscard, BlkifX86_64RequestIndirect>(req, out);
}

}  // namespace xenpath
