// The three blkif request layouts the frontend's `protocol` key selects, and
// their conversion into one canonical request.
//
// A blkif ring slot is interpreted by the guest's ABI, not ours: a 32-bit x86
// guest lays u64 fields on 4-byte boundaries (so `id` sits at offset 4, not
// 8, and every later field moves), a 64-bit one on 8-byte boundaries. The
// public <xen/io/blkif.h> only describes the native layout, so the two
// explicit ABIs are defined here and checked byte for byte with
// static_asserts against the ABI (offsets as Linux blkback and QEMU use them).
//
// Pure functions and plain data: no thread affinity, no guest memory (the
// callers pass private copies of ring slots, made by BackRing::consume).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>

#include "common/result.h"
#include "common/ring_types.h"
#include "common/xen/ring_protocol.h"
#include "common/xen/types.h"

#include <xen/io/blkif.h>
#include <xen/io/protocols.h>

namespace xenpath {

inline constexpr unsigned kBlkDirectSegments = BLKIF_MAX_SEGMENTS_PER_REQUEST;          // 11
inline constexpr unsigned kBlkMaxIndirectPages = BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST;  // 8
// blkif_request_segment entries per indirect page (4096 / 8).
inline constexpr unsigned kBlkSegmentsPerIndirectPage = kPageSize / sizeof(blkif_request_segment);
// What the 8 indirect grefs of one request can describe at most.
inline constexpr unsigned kBlkMaxIndirectSegmentsAbi = kBlkMaxIndirectPages * kBlkSegmentsPerIndirectPage;

// Indirect pages needed for `segments` segments.
[[nodiscard]] constexpr unsigned blk_indirect_pages(unsigned segments) noexcept {
  return (segments + kBlkSegmentsPerIndirectPage - 1) / kBlkSegmentsPerIndirectPage;
}

enum class BlkProtocol : uint8_t {
  kNative,  // the host's own ABI (XEN_IO_PROTO_ABI_NATIVE)
  kX86_32,  // "x86_32-abi"
  kX86_64,  // "x86_64-abi"
};

// The `protocol` frontend key. Absent: as Linux blkback on x86, the x86_32
// ABI (old 32-bit PV frontends never wrote the key; every 64-bit one does),
// the native ABI elsewhere. Anything unknown is ENOSYS (Linux refuses the
// connection the same way).
Result<BlkProtocol> parse_blk_protocol(std::optional<std::string_view> key) noexcept;
[[nodiscard]] std::string_view blk_protocol_name(BlkProtocol p) noexcept;

// ---------------------------------------------------------------------------
// x86_32 ABI: u64 aligned on 4 bytes (i386 psABI), no padding after handle.
#pragma pack(push, 4)
struct BlkifX86_32RequestRw {
  uint8_t operation;
  uint8_t nr_segments;
  uint16_t handle;
  uint64_t id;
  uint64_t sector_number;
  blkif_request_segment seg[kBlkDirectSegments];
};
struct BlkifX86_32RequestDiscard {
  uint8_t operation;
  uint8_t flag;  // BLKIF_DISCARD_SECURE
  uint16_t handle;
  uint64_t id;
  uint64_t sector_number;
  uint64_t nr_sectors;
};
struct BlkifX86_32RequestIndirect {
  uint8_t operation;
  uint8_t indirect_op;
  uint16_t nr_segments;
  uint64_t id;
  uint64_t sector_number;
  uint16_t handle;
  uint16_t pad1;
  grant_ref_t indirect_grefs[kBlkMaxIndirectPages];
  uint64_t pad2;  // the i386 header pads the indirect request to 64 bytes
};
struct BlkifX86_32RequestOther {
  uint8_t operation;
  uint8_t pad1;
  uint16_t pad2;
  uint64_t id;
};
union BlkifX86_32Request {
  uint8_t operation;
  BlkifX86_32RequestRw rw;
  BlkifX86_32RequestDiscard discard;
  BlkifX86_32RequestIndirect indirect;
  BlkifX86_32RequestOther other;
};
struct BlkifX86_32Response {
  uint64_t id;
  uint8_t operation;
  int16_t status;
};
#pragma pack(pop)

static_assert(sizeof(blkif_request_segment) == 8);

// ---------------------------------------------------------------------------
// x86_64 ABI: natural alignment; the explicit pads put `id` at offset 8.
struct BlkifX86_64RequestRw {
  uint8_t operation;
  uint8_t nr_segments;
  uint16_t handle;
  uint32_t pad1;
  uint64_t id;
  uint64_t sector_number;
  blkif_request_segment seg[kBlkDirectSegments];
};
struct BlkifX86_64RequestDiscard {
  uint8_t operation;
  uint8_t flag;
  uint16_t handle;
  uint32_t pad1;
  uint64_t id;
  uint64_t sector_number;
  uint64_t nr_sectors;
};
struct BlkifX86_64RequestIndirect {
  uint8_t operation;
  uint8_t indirect_op;
  uint16_t nr_segments;
  uint32_t pad1;
  uint64_t id;
  uint64_t sector_number;
  uint16_t handle;
  uint16_t pad2;
  grant_ref_t indirect_grefs[kBlkMaxIndirectPages];
  uint32_t pad3;
};
struct BlkifX86_64RequestOther {
  uint8_t operation;
  uint8_t pad1;
  uint16_t pad2;
  uint32_t pad3;
  uint64_t id;
};
union BlkifX86_64Request {
  uint8_t operation;
  BlkifX86_64RequestRw rw;
  BlkifX86_64RequestDiscard discard;
  BlkifX86_64RequestIndirect indirect;
  BlkifX86_64RequestOther other;
};
struct BlkifX86_64Response {
  uint64_t id;
  uint8_t operation;
  int16_t status;
};

// Where each ABI puts the fields (the byte offsets Linux blkback and QEMU
// use), one row per ABI, every field of every layout checked against it.
struct BlkifAbiLayout {
  size_t id;      // every request layout
  size_t sector;  // rw, discard, indirect
  size_t rw_seg;
  size_t slot;  // sizeof the rw layout = the request slot
  size_t slot_align;
  size_t discard_nr_sectors;
  size_t indirect_handle;
  size_t indirect_grefs;
  size_t response;  // sizeof the response
};

template <typename Request, typename Response>
constexpr bool blkif_layout_is(const BlkifAbiLayout& l) noexcept {
  using Rw = decltype(Request::rw);
  using Discard = decltype(Request::discard);
  using Indirect = decltype(Request::indirect);
  using Other = decltype(Request::other);
  return offsetof(Rw, nr_segments) == 1 && offsetof(Rw, handle) == 2 && offsetof(Rw, id) == l.id &&
         offsetof(Rw, sector_number) == l.sector && offsetof(Rw, seg) == l.rw_seg && sizeof(Rw) == l.slot &&
         offsetof(Discard, flag) == 1 && offsetof(Discard, id) == l.id &&
         offsetof(Discard, sector_number) == l.sector && offsetof(Discard, nr_sectors) == l.discard_nr_sectors &&
         offsetof(Indirect, indirect_op) == 1 && offsetof(Indirect, nr_segments) == 2 &&
         offsetof(Indirect, id) == l.id && offsetof(Indirect, sector_number) == l.sector &&
         offsetof(Indirect, handle) == l.indirect_handle && offsetof(Indirect, indirect_grefs) == l.indirect_grefs &&
         sizeof(Indirect) == 64 && offsetof(Other, id) == l.id && sizeof(Request) == l.slot &&
         alignof(Request) == l.slot_align && offsetof(Response, operation) == 8 && offsetof(Response, status) == 10 &&
         sizeof(Response) == l.response;
}

// One row per ABI, in BlkifAbiLayout's order: id, sector, rw_seg, slot,
// slot_align, discard_nr_sectors, indirect_handle, indirect_grefs, response.
inline constexpr BlkifAbiLayout kBlkifI386Layout{4, 12, 20, 108, 4, 20, 20, 24, 12};
inline constexpr BlkifAbiLayout kBlkifX86_64Layout{8, 16, 24, 112, 8, 24, 24, 28, 16};
static_assert(blkif_layout_is<BlkifX86_32Request, BlkifX86_32Response>(kBlkifI386Layout), "the i386 blkif layout");
static_assert(blkif_layout_is<BlkifX86_64Request, BlkifX86_64Response>(kBlkifX86_64Layout), "the x86_64 blkif layout");

// The native layout (<xen/io/blkif.h>) is the x86_64 one on every host we
// build for (x86_64, arm64: both align u64 on 8).
static_assert(sizeof(blkif_request) == sizeof(BlkifX86_64Request));
static_assert(offsetof(blkif_request, id) == offsetof(BlkifX86_64RequestRw, id));
static_assert(offsetof(blkif_request, sector_number) == offsetof(BlkifX86_64RequestRw, sector_number));
static_assert(offsetof(blkif_request, seg) == offsetof(BlkifX86_64RequestRw, seg));
static_assert(offsetof(blkif_request_indirect, indirect_grefs) == offsetof(BlkifX86_64RequestIndirect, indirect_grefs));
static_assert(offsetof(blkif_request_discard, nr_sectors) == offsetof(BlkifX86_64RequestDiscard, nr_sectors));
static_assert(sizeof(blkif_response) == sizeof(BlkifX86_64Response));

}  // namespace xenpath

// Shared-ring types of the two explicit ABIs (xp_blkif_x86_{32,64}_sring,
// _back_ring, _front_ring), from the real ring macros.
DEFINE_RING_TYPES(xp_blkif_x86_32, xenpath::BlkifX86_32Request, xenpath::BlkifX86_32Response);
DEFINE_RING_TYPES(xp_blkif_x86_64, xenpath::BlkifX86_64Request, xenpath::BlkifX86_64Response);

namespace xenpath {

// Ring slot sizes decide RING_SIZE: both are 32 slots per page.
static_assert(sizeof(xp_blkif_x86_32_sring_entry) == 108);
static_assert(sizeof(xp_blkif_x86_64_sring_entry) == 112);
static_assert(offsetof(xp_blkif_x86_32_sring, ring) == 64);
static_assert(offsetof(xp_blkif_x86_64_sring, ring) == 64);

// Ring traits (BackRing<Types>, SimFrontRing<Types>), one per ABI.
template <typename Types, BlkProtocol P>
struct BlkifAbiRing : Types {
  static constexpr BlkProtocol kProtocol = P;
};
using BlkifNativeRing = BlkifAbiRing<BlkifRing, BlkProtocol::kNative>;
using BlkifX86_32Ring = BlkifAbiRing<RingTypes<xp_blkif_x86_32_sring, xp_blkif_x86_32_back_ring,
                                               xp_blkif_x86_32_front_ring, BlkifX86_32Request, BlkifX86_32Response>,
                                     BlkProtocol::kX86_32>;
using BlkifX86_64Ring = BlkifAbiRing<RingTypes<xp_blkif_x86_64_sring, xp_blkif_x86_64_back_ring,
                                               xp_blkif_x86_64_front_ring, BlkifX86_64Request, BlkifX86_64Response>,
                                     BlkProtocol::kX86_64>;

// ---------------------------------------------------------------------------
// The canonical request every ABI converts into.

struct BlkSegment {
  GrantRef gref = 0;
  uint8_t first_sect = 0;  // in units of VbdLimits::sector_size, inclusive
  uint8_t last_sect = 0;
  friend bool operator==(const BlkSegment&, const BlkSegment&) = default;
};

struct BlkRequest {
  // The `operation` field as read from the slot (BLKIF_OP_INDIRECT for an
  // indirect request).
  uint8_t ring_op = 0;
  // The operation to perform, and the one echoed in the response: the
  // indirect_op of an indirect request (blkfront matches a response against
  // its own request's indirect_op, as Linux blkback answers).
  uint8_t op = 0;
  bool indirect = false;
  uint16_t handle = 0;
  uint64_t id = 0;
  uint64_t sector = 0;  // first sector (r/w, indirect, discard)
  // As the guest wrote it (u8 direct, u16 indirect). Only the first
  // min(nr_segments, kBlkDirectSegments) entries of `seg` were copied.
  uint32_t nr_segments = 0;
  std::array<BlkSegment, kBlkDirectSegments> seg{};
  // Indirect: min(blk_indirect_pages(nr_segments), kBlkMaxIndirectPages)
  // grefs were copied; the segments live in those pages.
  uint8_t nr_indirect_pages = 0;
  std::array<GrantRef, kBlkMaxIndirectPages> indirect_grefs{};
  // Discard.
  uint64_t nr_sectors = 0;
  bool secure = false;  // BLKIF_DISCARD_SECURE as requested (honoured only if offered)

  // The direct segments that were copied (empty for indirect requests).
  [[nodiscard]] std::span<const BlkSegment> direct_segments() const noexcept {
    if (indirect) return {};
    return {seg.data(), nr_segments < kBlkDirectSegments ? nr_segments : kBlkDirectSegments};
  }
};

// Private copy of a slot (any ABI) -> canonical request. Total functions:
// every byte pattern converts (garbage ops convert with only ids set; the
// validation in blk_protocol.h decides what to answer).
[[nodiscard]] BlkRequest blk_decode(const blkif_request& slot) noexcept;
[[nodiscard]] BlkRequest blk_decode(const BlkifX86_32Request& slot) noexcept;
[[nodiscard]] BlkRequest blk_decode(const BlkifX86_64Request& slot) noexcept;

// A response in the frontend's layout.
template <typename Response>
void blk_set_response(Response& r, uint64_t id, uint8_t op, int16_t status) noexcept {
  // Fields only: `r` is a ring slot BackRing::emplace_response() zeroed,
  // padding included (blkif responses have padding: XSA-216).
  r.id = id;
  r.operation = op;
  r.status = status;
}

// Frontend side (simulated guests, tests): canonical -> slot of an ABI.
// Indirect requests carry their grefs; segments go in the indirect pages.
void blk_encode(const BlkRequest& req, blkif_request& out) noexcept;
void blk_encode(const BlkRequest& req, BlkifX86_32Request& out) noexcept;
void blk_encode(const BlkRequest& req, BlkifX86_64Request& out) noexcept;

}  // namespace xenpath
