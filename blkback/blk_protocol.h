// Admission of canonical blkif requests: the one decision, per request, of
// whether the backend performs it, against what a VBD is and what was
// negotiated, including the copy of indirect segment descriptors out of guest
// pages.
//
// Pure functions: no thread affinity. The only guest-shared memory touched is
// the mapped indirect pages handed to blk_admit() (through
// blk_copy_indirect_segments()), read once per descriptor into a private
// array; everything is validated on copies.
//
// What is checked, and what the frontend gets back (Linux xen-blkback is the
// reference: EOPNOTSUPP for what the backend does not do, ERROR otherwise):
//   operation unknown (RESERVED_1, 7..255)            -> EOPNOTSUPP kUnknownOp
//   barrier/flush/discard/indirect not offered         -> EOPNOTSUPP kNotNegotiated
//   indirect_op other than READ/WRITE                  -> ERROR kBadIndirectOp
//   anything but READ on a read-only VBD               -> ERROR kReadOnly
//   segments: READ/WRITE 1..11, FLUSH/BARRIER 0..11,
//             indirect 1..max_indirect_segments        -> ERROR kBadSegmentCount
//   indirect descriptor pages could not be mapped      -> ERROR kIndirectMapFailed
//   first_sect <= last_sect < kPageSize / sector_size  -> ERROR kBadSegment
//   start, offsets and lengths on the image's I/O
//   granularity (O_DIRECT on a 4K-sector disk)         -> ERROR kMisaligned
//   the whole transfer / discard inside the image
//   (overflow-safe)                                     -> ERROR kOutOfRange
// None of these is fatal: Linux xen-blkback answers a malformed request and
// goes on; only a producer overrun stops a ring, and BackRing finds that.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "blkback/blk_abi.h"
#include "common/result.h"
#include "common/stats.h"

namespace xenpath {

// Features the backend offered (and, for persistent grants, the frontend
// accepted). Requests for operations outside this set are refused.
enum BlkFeature : uint32_t {
  kBlkFeatureFlush = 1u << 0,          // feature-flush-cache
  kBlkFeatureBarrier = 1u << 1,        // feature-barrier
  kBlkFeatureDiscard = 1u << 2,        // feature-discard
  kBlkFeatureDiscardSecure = 1u << 3,  // discard-secure
};

// Linux blkback's MAX_INDIRECT_SEGMENTS; what we offer unless configured.
inline constexpr uint32_t kBlkDefaultMaxIndirectSegments = 256;

struct VbdLimits {
  // Capacity in units of sector_size (the `sectors` backend key).
  uint64_t sectors = 0;
  // The unit of every sector quantity on the ring: 512, or the image's
  // logical block size for a frontend with feature-large-sector-size.
  uint32_t sector_size = 512;
  // I/O granularity the image needs (O_DIRECT: its logical block size), in
  // sector_size units, a power of two. Start sector, segment offsets and
  // lengths, and discard ranges must be multiples of it.
  uint32_t align_sectors = 1;
  bool read_only = false;
  // 0: indirect requests not offered; otherwise feature-max-indirect-segments
  // (at most kBlkMaxIndirectSegmentsAbi).
  uint32_t max_indirect_segments = 0;
  uint32_t features = 0;  // BlkFeature bits

  [[nodiscard]] bool has(BlkFeature f) const noexcept { return (features & f) != 0; }
  // Sectors of sector_size in one 4 KiB grant page.
  [[nodiscard]] uint32_t sectors_per_page() const noexcept { return static_cast<uint32_t>(kPageSize / sector_size); }
  // sector_size is a power of two in [512, 4096], align_sectors a power of
  // two no bigger than a page, max_indirect_segments within the ABI.
  [[nodiscard]] bool sane() const noexcept;
};

enum class BlkReason : uint8_t {
  kOk = 0,
  kUnknownOp,
  kNotNegotiated,
  kBadIndirectOp,
  kReadOnly,
  kBadSegmentCount,
  kBadSegment,
  kMisaligned,
  kOutOfRange,
  // Found on the datapath rather than by validation.
  kIndirectMapFailed,  // an indirect descriptor page could not be mapped
  kMapFailed,          // a data grant could not be mapped
  kIoError,            // the image failed the I/O
  kNotSupported,       // the image cannot do it (e.g. discard on a device without)
  kProbeGuard,         // a write that would make a probed raw disk probe as VHD (image_open.h)
  kCount,
};
[[nodiscard]] std::string_view blk_reason_name(BlkReason r) noexcept;

struct BlkVerdict {
  int16_t status = BLKIF_RSP_OKAY;  // BLKIF_RSP_*
  BlkReason reason = BlkReason::kOk;
  // The frontend broke the protocol beyond what one answer covers: the queue
  // halts (as for a producer overrun). Admission decides it so the queue
  // never has to; by Linux's rules no reason above is fatal.
  bool fatal = false;
  [[nodiscard]] bool ok() const noexcept { return reason == BlkReason::kOk; }
};

// Rejected requests by reason. One writer (the queue's reactor).
struct BlkErrorStats {
  std::array<Counter, static_cast<size_t>(BlkReason::kCount)> by_reason;
  void count(BlkReason r) noexcept {
    if (r != BlkReason::kOk && r < BlkReason::kCount) by_reason[static_cast<size_t>(r)].add();
  }
  [[nodiscard]] uint64_t get(BlkReason r) const noexcept {
    return r < BlkReason::kCount ? by_reason[static_cast<size_t>(r)].get() : 0;
  }
  [[nodiscard]] uint64_t total() const noexcept {
    uint64_t t = 0;
    for (const auto& c : by_reason) t += c.get();
    return t;
  }
};

// A request admission accepted, in the terms the datapath works in.
struct BlkAdmitted {
  // BLKIF_OP_READ, _WRITE, _FLUSH_DISKCACHE, _WRITE_BARRIER or _DISCARD (an
  // indirect request's inner operation). The response echoes BlkRequest::op.
  uint8_t op = BLKIF_OP_READ;
  uint64_t sector = 0;   // first sector, in VbdLimits::sector_size units
  uint64_t sectors = 0;  // the transfer (a discard's range); 0 for a dataless flush/barrier
  // The segments to map and transfer: the request's own copy (direct) or the
  // descriptors copied out of its pages (indirect). Empty for a discard.
  std::span<const BlkSegment> segs;
  bool secure = false;  // a secure discard, asked for and offered
  bool indirect = false;

  // A read writes into guest memory (its grants are mapped writable);
  // everything else only reads it.
  [[nodiscard]] bool writes_guest() const noexcept { return op == BLKIF_OP_READ; }
};

struct BlkAdmission {
  BlkVerdict verdict;  // what to answer unless ok()
  BlkAdmitted req;     // meaningful only if ok()
  [[nodiscard]] bool ok() const noexcept { return verdict.ok(); }
};

// The descriptor pages blk_admit() will read for `req`: its indirect grefs,
// or none if it is not indirect or is refused on its header alone, so a
// request that is refused anyway never gets guest pages mapped (and its
// answer names the header's reason, not a mapping failure).
[[nodiscard]] std::span<const GrantRef> blk_descriptor_grefs(const BlkRequest& req, const VbdLimits& limits) noexcept;

// The admission of one request: every check the backend makes before it maps
// data grants or touches the image, in one place (the queue runs exactly
// this; the fuzz target drives it). `req` is the private copy made off the
// ring. For an indirect request `descriptor_pages` are the mapped pages of
// blk_descriptor_grefs() (empty: they could not be mapped), whose
// descriptors are copied into `descriptors` (at least
// limits.max_indirect_segments long) before they are checked; the result's
// segs then point into `descriptors`, otherwise into `req`.
[[nodiscard]] BlkAdmission blk_admit(const BlkRequest& req, const VbdLimits& limits,
                                     std::span<const std::byte* const> descriptor_pages,
                                     std::span<BlkSegment> descriptors) noexcept;

// The pieces blk_admit() is made of, for tests and tools that hold segments
// already.
//
// Everything decidable without the indirect descriptor pages: operation,
// negotiation, read-only, segment count, and the whole of a discard. For an
// indirect request this is what must pass before its pages are mapped.
[[nodiscard]] BlkVerdict blk_check_header(const BlkRequest& req, const VbdLimits& limits) noexcept;

// The segments (req.direct_segments() or the copied indirect descriptors;
// segs.size() must equal req.nr_segments) and the transfer they describe.
// On success *total_sectors (if given) receives the transfer length.
[[nodiscard]] BlkVerdict blk_check_segments(const BlkRequest& req, std::span<const BlkSegment> segs,
                                            const VbdLimits& limits, uint64_t* total_sectors = nullptr) noexcept;

// Both checks. `segs` as for blk_check_segments (ignored for discards).
[[nodiscard]] BlkVerdict blk_validate(const BlkRequest& req, std::span<const BlkSegment> segs, const VbdLimits& limits,
                                      uint64_t* total_sectors = nullptr) noexcept;

// Copies the nr_segments descriptors of an indirect request out of its mapped
// descriptor pages (pages.size() == req.nr_indirect_pages, which must be
// blk_indirect_pages(req.nr_segments)) into `out`. Each descriptor is read
// exactly once, so a guest rewriting the pages meanwhile only changes which
// (still validated) values we see. EINVAL on mismatched counts or short out.
Result<uint32_t> blk_copy_indirect_segments(const BlkRequest& req, std::span<const std::byte* const> pages,
                                            std::span<BlkSegment> out) noexcept;

}  // namespace xenpath
