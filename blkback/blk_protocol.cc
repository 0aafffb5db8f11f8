#include "blkback/blk_protocol.h"

#include <array>
#include <bit>
#include <cstddef>
#include <cstring>

#include "common/enum_names.h"

namespace xenpath {

static_assert(std::endian::native == std::endian::little,
              "blk_copy_indirect_segments decodes descriptors as little-endian words");
static_assert(offsetof(blkif_request_segment, gref) == 0 && offsetof(blkif_request_segment, first_sect) == 4 &&
              offsetof(blkif_request_segment, last_sect) == 5);

bool VbdLimits::sane() const noexcept {
  return sector_size >= 512 && sector_size <= kPageSize && std::has_single_bit(sector_size) && align_sectors >= 1 &&
         std::has_single_bit(align_sectors) && static_cast<uint64_t>(align_sectors) * sector_size <= kPageSize &&
         max_indirect_segments <= kBlkMaxIndirectSegmentsAbi;
}

std::string_view blk_reason_name(BlkReason r) noexcept {
  static constexpr auto kNames = std::to_array<std::string_view>(
      {"ok", "unknown-op", "not-negotiated", "bad-indirect-op", "read-only", "bad-segment-count", "bad-segment",
       "misaligned", "out-of-range", "indirect-map-failed", "map-failed", "io-error", "not-supported", "probe-guard"});
  static_assert(kNames.size() == static_cast<size_t>(BlkReason::kCount), "a name for every reason");
  return enum_name(r, kNames, std::string_view("?"));
}

namespace {

constexpr BlkVerdict reject(BlkReason r) noexcept {
  const bool unsupported =
      r == BlkReason::kUnknownOp || r == BlkReason::kNotNegotiated || r == BlkReason::kNotSupported;
  return BlkVerdict{static_cast<int16_t>(unsupported ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR), r, /*fatal=*/false};
}

// [start, start + count) inside [0, capacity), without overflowing.
constexpr bool in_range(uint64_t start, uint64_t count, uint64_t capacity) noexcept {
  return start <= capacity && count <= capacity - start;
}

constexpr bool aligned(uint64_t v, uint32_t align) noexcept { return (v & (align - 1)) == 0; }

}  // namespace

BlkVerdict blk_check_header(const BlkRequest& req, const VbdLimits& limits) noexcept {
  if (!limits.sane()) return reject(BlkReason::kOutOfRange);
  switch (req.ring_op) {
    case BLKIF_OP_READ:
    case BLKIF_OP_WRITE:
      break;
    case BLKIF_OP_WRITE_BARRIER:
      if (!limits.has(kBlkFeatureBarrier)) return reject(BlkReason::kNotNegotiated);
      break;
    case BLKIF_OP_FLUSH_DISKCACHE:
      if (!limits.has(kBlkFeatureFlush)) return reject(BlkReason::kNotNegotiated);
      break;
    case BLKIF_OP_DISCARD:
      if (!limits.has(kBlkFeatureDiscard)) return reject(BlkReason::kNotNegotiated);
      break;
    case BLKIF_OP_INDIRECT:
      if (limits.max_indirect_segments == 0) return reject(BlkReason::kNotNegotiated);
      if (req.op != BLKIF_OP_READ && req.op != BLKIF_OP_WRITE) return reject(BlkReason::kBadIndirectOp);
      break;
    default:
      return reject(BlkReason::kUnknownOp);
  }

  // Everything but a read writes (a flush or barrier too: Linux maps them to
  // REQ_OP_WRITE and refuses them on a read-only VBD).
  if (limits.read_only && req.op != BLKIF_OP_READ) return reject(BlkReason::kReadOnly);

  if (req.ring_op == BLKIF_OP_DISCARD) {
    if (!aligned(req.sector, limits.align_sectors) || !aligned(req.nr_sectors, limits.align_sectors)) {
      return reject(BlkReason::kMisaligned);
    }
    if (!in_range(req.sector, req.nr_sectors, limits.sectors)) return reject(BlkReason::kOutOfRange);
    return {};
  }

  if (req.indirect) {
    if (req.nr_segments == 0 || req.nr_segments > limits.max_indirect_segments) {
      return reject(BlkReason::kBadSegmentCount);
    }
    // Follows from the bound above; kept as the invariant the page mapping
    // relies on (never more descriptor pages than the request carries).
    if (req.nr_indirect_pages != blk_indirect_pages(req.nr_segments)) return reject(BlkReason::kBadSegmentCount);
    return {};
  }

  const bool may_be_empty = req.op == BLKIF_OP_FLUSH_DISKCACHE || req.op == BLKIF_OP_WRITE_BARRIER;
  if ((req.nr_segments == 0 && !may_be_empty) || req.nr_segments > kBlkDirectSegments) {
    return reject(BlkReason::kBadSegmentCount);
  }
  return {};
}

BlkVerdict blk_check_segments(const BlkRequest& req, std::span<const BlkSegment> segs, const VbdLimits& limits,
                              uint64_t* total_sectors) noexcept {
  if (!limits.sane()) return reject(BlkReason::kOutOfRange);
  if (segs.size() != req.nr_segments) return reject(BlkReason::kBadSegmentCount);
  const uint32_t last_allowed = limits.sectors_per_page() - 1;
  const uint32_t align = limits.align_sectors;
  // Bounded: at most kBlkMaxIndirectSegmentsAbi segments of at most 8
  // sectors each, so the sum cannot overflow.
  uint64_t total = 0;
  for (const BlkSegment& s : segs) {
    if (s.first_sect > s.last_sect || s.last_sect > last_allowed) return reject(BlkReason::kBadSegment);
    const uint32_t n = static_cast<uint32_t>(s.last_sect) - s.first_sect + 1;
    if (!aligned(s.first_sect, align) || !aligned(n, align)) return reject(BlkReason::kMisaligned);
    total += n;
  }
  if (total != 0) {
    if (!aligned(req.sector, align)) return reject(BlkReason::kMisaligned);
    if (!in_range(req.sector, total, limits.sectors)) return reject(BlkReason::kOutOfRange);
  }
  if (total_sectors != nullptr) *total_sectors = total;
  return {};
}

BlkVerdict blk_validate(const BlkRequest& req, std::span<const BlkSegment> segs, const VbdLimits& limits,
                        uint64_t* total_sectors) noexcept {
  const BlkVerdict v = blk_check_header(req, limits);
  if (!v.ok()) return v;
  if (req.ring_op == BLKIF_OP_DISCARD) {
    if (total_sectors != nullptr) *total_sectors = req.nr_sectors;
    return v;
  }
  return blk_check_segments(req, segs, limits, total_sectors);
}

std::span<const GrantRef> blk_descriptor_grefs(const BlkRequest& req, const VbdLimits& limits) noexcept {
  if (!req.indirect || !blk_check_header(req, limits).ok()) return {};
  return {req.indirect_grefs.data(), req.nr_indirect_pages};
}

BlkAdmission blk_admit(const BlkRequest& req, const VbdLimits& limits,
                       std::span<const std::byte* const> descriptor_pages, std::span<BlkSegment> descriptors) noexcept {
  BlkAdmission a;
  a.verdict = blk_check_header(req, limits);
  if (!a.verdict.ok()) return a;
  a.req.op = req.op;
  a.req.sector = req.sector;
  a.req.indirect = req.indirect;
  if (req.ring_op == BLKIF_OP_DISCARD) {
    a.req.sectors = req.nr_sectors;
    a.req.secure = req.secure && limits.has(kBlkFeatureDiscardSecure);
    return a;
  }
  std::span<const BlkSegment> segs = req.direct_segments();
  if (req.indirect) {
    if (descriptor_pages.empty()) {
      a.verdict = reject(BlkReason::kIndirectMapFailed);
      return a;
    }
    // The header vouched for the counts; a mismatch here is the caller's
    // page list or array, answered as the count it cannot carry.
    auto n = blk_copy_indirect_segments(req, descriptor_pages, descriptors);
    if (!n) {
      a.verdict = reject(BlkReason::kBadSegmentCount);
      return a;
    }
    segs = descriptors.first(*n);
  }
  a.verdict = blk_check_segments(req, segs, limits, &a.req.sectors);
  if (a.verdict.ok()) a.req.segs = segs;
  return a;
}

Result<uint32_t> blk_copy_indirect_segments(const BlkRequest& req, std::span<const std::byte* const> pages,
                                            std::span<BlkSegment> out) noexcept {
  if (!req.indirect || req.nr_segments == 0 || req.nr_segments > kBlkMaxIndirectSegmentsAbi ||
      req.nr_indirect_pages != blk_indirect_pages(req.nr_segments) || pages.size() != req.nr_indirect_pages ||
      out.size() < req.nr_segments) {
    return unexpected(EINVAL);
  }
  for (uint32_t i = 0; i < req.nr_segments; ++i) {
    const std::byte* page = pages[i / kBlkSegmentsPerIndirectPage];
    if (page == nullptr) return unexpected(EINVAL);
    // One 8-byte load per descriptor (gref, first_sect, last_sect, pad):
    // the guest cannot make us see two different values of one field.
    const auto* slot = reinterpret_cast<const volatile uint64_t*>(
        page + static_cast<size_t>(i % kBlkSegmentsPerIndirectPage) * sizeof(blkif_request_segment));
    const uint64_t word = *slot;
    out[i] = BlkSegment{static_cast<GrantRef>(word & 0xffffffffu), static_cast<uint8_t>(word >> 32),
                        static_cast<uint8_t>(word >> 40)};
  }
  return req.nr_segments;
}

}  // namespace xenpath
