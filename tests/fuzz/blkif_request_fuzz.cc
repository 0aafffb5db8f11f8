// Fuzz target: arbitrary bytes as a ring slot of each blkif ABI, plus the
// contents of its indirect descriptor pages, through decode and blk_admit(),
// the admission the queue runs (descriptor grefs to map, header, descriptor
// copy, segments). Nothing may crash or read outside the slot or the pages
// (ASan), and whatever is admitted must really be inside the image and
// inside its grant pages.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "blkback/blk_protocol.h"

using namespace xenpath;

namespace {

VbdLimits limits_for(uint8_t sel) {
  VbdLimits l;
  l.sectors = (sel & 0x08) ? (1ull << 20) : 4096;
  l.sector_size = (sel & 0x10) ? 4096 : 512;
  l.align_sectors = (sel & 0x20) && l.sector_size == 512 ? 8 : 1;
  l.read_only = (sel & 0x40) != 0;
  l.max_indirect_segments = (sel & 0x80) ? kBlkMaxIndirectSegmentsAbi : kBlkDefaultMaxIndirectSegments;
  l.features = (sel & 0x04) ? (kBlkFeatureFlush | kBlkFeatureBarrier | kBlkFeatureDiscard) : 0;
  return l;
}

void check_accepted(const BlkRequest& r, std::span<const BlkSegment> segs, const VbdLimits& l, uint64_t total) {
  if (r.ring_op == BLKIF_OP_DISCARD) {
    if (r.sector > l.sectors || r.nr_sectors > l.sectors - r.sector) std::abort();
    return;
  }
  if (r.op != BLKIF_OP_READ && l.read_only) std::abort();
  uint64_t sum = 0;
  for (const BlkSegment& s : segs) {
    if (s.first_sect > s.last_sect || s.last_sect >= kPageSize / l.sector_size) std::abort();
    sum += s.last_sect - s.first_sect + 1u;
  }
  if (sum != total) std::abort();
  if (total != 0 && (r.sector > l.sectors || total > l.sectors - r.sector)) std::abort();
}

template <typename Slot>
void exercise(const uint8_t* data, size_t size, const VbdLimits& l) {
  Slot slot;
  std::memset(&slot, 0, sizeof(slot));
  if (size > 0) std::memcpy(&slot, data, std::min(size, sizeof(slot)));
  const BlkRequest r = blk_decode(slot);
  if (r.direct_segments().size() > kBlkDirectSegments) std::abort();
  if (r.nr_indirect_pages > kBlkMaxIndirectPages) std::abort();

  // Round trip of what was decoded: encoding and decoding again is stable.
  if (r.ring_op <= BLKIF_OP_INDIRECT && r.ring_op != BLKIF_OP_RESERVED_1 &&
      (r.indirect || r.nr_segments <= kBlkDirectSegments)) {
    Slot again;
    blk_encode(r, again);
    const BlkRequest r2 = blk_decode(again);
    if (r2.id != r.id || r2.op != r.op || r2.nr_segments != r.nr_segments) std::abort();
  }

  // Refusals are answered, never fatal (Linux goes on after each).
  auto refused = [](const BlkAdmission& a) {
    if (a.verdict.status != BLKIF_RSP_ERROR && a.verdict.status != BLKIF_RSP_EOPNOTSUPP) std::abort();
    if (a.verdict.fatal) std::abort();
  };
  const BlkVerdict head = blk_check_header(r, l);
  const std::span<const GrantRef> grefs = blk_descriptor_grefs(r, l);
  if (!head.ok()) {
    // Refused on the header: no page is mapped for it, and admission says
    // the header's reason.
    if (!grefs.empty()) std::abort();
    const BlkAdmission a = blk_admit(r, l, {}, {});
    if (a.ok() || a.verdict.reason != head.reason || a.verdict.status != head.status) std::abort();
    refused(a);
    return;
  }
  if (r.ring_op == BLKIF_OP_DISCARD) {
    const BlkAdmission a = blk_admit(r, l, {}, {});
    if (!a.ok() || a.req.op != BLKIF_OP_DISCARD || a.req.sectors != r.nr_sectors || !a.req.segs.empty()) std::abort();
    check_accepted(r, {}, l, 0);
    return;
  }
  if (!r.indirect) {
    if (!grefs.empty()) std::abort();
    const BlkAdmission a = blk_admit(r, l, {}, {});
    if (a.ok() != blk_validate(r, r.direct_segments(), l).ok()) std::abort();
    if (!a.ok()) return refused(a);
    if (a.req.segs.data() != r.direct_segments().data() || a.req.segs.size() != r.nr_segments) std::abort();
    check_accepted(r, a.req.segs, l, a.req.sectors);
    return;
  }
  if (grefs.size() != r.nr_indirect_pages || grefs.data() != r.indirect_grefs.data()) std::abort();
  // Indirect: descriptor pages from the rest of the input, each its own
  // exactly-sized allocation so ASan sees any overrun.
  const size_t rest = size > sizeof(slot) ? size - sizeof(slot) : 0;
  const uint8_t* src = data + (size - rest);
  std::vector<std::byte*> pages;
  for (unsigned p = 0; p < grefs.size(); ++p) {
    auto* page = static_cast<std::byte*>(std::aligned_alloc(kPageSize, kPageSize));
    std::memset(page, 0, kPageSize);
    const size_t off = p * kPageSize;
    if (off < rest) std::memcpy(page, src + off, std::min(kPageSize, rest - off));
    pages.push_back(page);
  }
  const std::span<const std::byte* const> view(pages.data(), pages.size());
  // Exactly what the queue gives it: room for the negotiated maximum.
  std::vector<BlkSegment> segs(l.max_indirect_segments);
  auto n = blk_copy_indirect_segments(r, view, segs);
  if (!n || *n != r.nr_segments) std::abort();  // the header check vouched for the counts
  const BlkAdmission a = blk_admit(r, l, view, segs);
  if (a.ok()) {
    if (a.req.segs.data() != segs.data() || a.req.segs.size() != r.nr_segments || !a.req.indirect) std::abort();
    check_accepted(r, a.req.segs, l, a.req.sectors);
  } else {
    refused(a);
  }
  // Unmappable pages are refused as such, never read.
  const BlkAdmission unmapped = blk_admit(r, l, {}, segs);
  if (unmapped.ok() || unmapped.verdict.reason != BlkReason::kIndirectMapFailed) std::abort();
  // A short descriptor array or page list is refused, never read past.
  if (r.nr_segments > 1 && blk_admit(r, l, view, std::span<BlkSegment>(segs).first(r.nr_segments - 1)).ok()) {
    std::abort();
  }
  if (pages.size() > 1 && blk_admit(r, l, view.first(pages.size() - 1), segs).ok()) std::abort();
  if (r.nr_segments > 1 && blk_copy_indirect_segments(r, view, std::span<BlkSegment>(segs).first(r.nr_segments - 1))) {
    std::abort();
  }
  if (!pages.empty() && blk_copy_indirect_segments(r, view.first(pages.size() - 1), segs)) std::abort();
  for (auto* p : pages) std::free(p);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const VbdLimits l = limits_for(data[1]);
  // Steering, so random input reaches the deep paths often: mostly-known
  // operations, and indirect requests with a plausible inner op and count.
  std::vector<uint8_t> in(data + 2, data + size);
  const unsigned mode = data[0] / 3;
  if ((mode & 1) && !in.empty()) in[0] %= 8;
  if ((mode & 2) && in.size() >= 4 && in[0] == BLKIF_OP_INDIRECT) {
    in[1] %= 2;
    const uint16_t nseg = static_cast<uint16_t>((in[2] | (in[3] << 8)) % (l.max_indirect_segments + 64));
    in[2] = static_cast<uint8_t>(nseg);
    in[3] = static_cast<uint8_t>(nseg >> 8);
  }
  // Mostly-plausible sectors and segment ranges (offsets of the i386 or the
  // 64-bit layout), in the slot and in the descriptor pages behind it.
  const size_t sector_off = data[0] % 3 == 0 ? 12 : 16;
  const size_t seg_off = data[0] % 3 == 0 ? 20 : 24;
  const size_t slot_size = data[0] % 3 == 0 ? 108 : 112;
  auto tame_segment = [&](size_t at) {
    if (at + 6 > in.size()) return;
    in[at + 4] &= 7;
    in[at + 5] = static_cast<uint8_t>(in[at + 4] + in[at + 5] % (8 - in[at + 4]));
  };
  if ((mode & 4) && in.size() >= sector_off + 8) {
    for (size_t i = sector_off + 2; i < sector_off + 8; ++i) in[i] = 0;  // below 2^16
    if (in[0] != BLKIF_OP_INDIRECT) {
      in[1] %= kBlkDirectSegments + 1;
      for (size_t k = 0; k < kBlkDirectSegments; ++k) tame_segment(seg_off + 8 * k);
    }
  }
  if (mode & 8) {
    for (size_t at = slot_size; at + 8 <= in.size(); at += 8) tame_segment(at);
  }
  switch (data[0] % 3) {
    case 0:
      exercise<BlkifX86_32Request>(in.data(), in.size(), l);
      break;
    case 1:
      exercise<BlkifX86_64Request>(in.data(), in.size(), l);
      break;
    default:
      exercise<blkif_request>(in.data(), in.size(), l);
      break;
  }
  return 0;
}
