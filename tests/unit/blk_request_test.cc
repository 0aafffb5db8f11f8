// Validation of canonical blkif requests: every rejection reason with the
// response status the frontend gets, boundaries on both sides, the copy of
// indirect descriptors out of (simulated) guest pages, and blk_admit(), the
// one admission the queue runs, built of those pieces.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "blkback/blk_protocol.h"

namespace xenpath {
namespace {

constexpr uint64_t kSectors = 1 << 20;  // 512 MiB of 512-byte sectors

VbdLimits limits(uint32_t features = kBlkFeatureFlush | kBlkFeatureBarrier | kBlkFeatureDiscard) {
  VbdLimits l;
  l.sectors = kSectors;
  l.max_indirect_segments = kBlkDefaultMaxIndirectSegments;
  l.features = features;
  return l;
}

BlkRequest rw(uint8_t op, uint64_t sector, unsigned nseg, uint8_t first = 0, uint8_t last = 7) {
  BlkRequest r;
  r.ring_op = r.op = op;
  r.id = 42;
  r.sector = sector;
  r.nr_segments = nseg;
  for (unsigned i = 0; i < nseg && i < kBlkDirectSegments; ++i) r.seg[i] = BlkSegment{100 + i, first, last};
  return r;
}

BlkRequest indirect(uint8_t op, uint64_t sector, unsigned nseg) {
  BlkRequest r;
  r.ring_op = BLKIF_OP_INDIRECT;
  r.op = op;
  r.indirect = true;
  r.id = 43;
  r.sector = sector;
  r.nr_segments = nseg;
  r.nr_indirect_pages = static_cast<uint8_t>(std::min(blk_indirect_pages(nseg), kBlkMaxIndirectPages));
  return r;
}

BlkRequest discard(uint64_t sector, uint64_t count) {
  BlkRequest r;
  r.ring_op = r.op = BLKIF_OP_DISCARD;
  r.id = 44;
  r.sector = sector;
  r.nr_sectors = count;
  return r;
}

BlkVerdict check(const BlkRequest& r, const VbdLimits& l, uint64_t* total = nullptr) {
  return blk_validate(r, r.direct_segments(), l, total);
}

void expect_reject(const BlkVerdict& v, BlkReason reason, int16_t status = BLKIF_RSP_ERROR) {
  EXPECT_EQ(v.reason, reason) << blk_reason_name(v.reason) << " instead of " << blk_reason_name(reason);
  EXPECT_EQ(v.status, status);
  EXPECT_FALSE(v.ok());
}

TEST(BlkValidate, PlainReadsAndWritesPass) {
  uint64_t total = 0;
  BlkVerdict v = check(rw(BLKIF_OP_READ, 0, 11), limits(), &total);
  EXPECT_TRUE(v.ok());
  EXPECT_EQ(v.status, BLKIF_RSP_OKAY);
  EXPECT_EQ(total, 88u);
  EXPECT_TRUE(check(rw(BLKIF_OP_WRITE, kSectors - 8, 1), limits(), &total).ok());
  EXPECT_EQ(total, 8u);
  EXPECT_TRUE(check(rw(BLKIF_OP_WRITE, 3, 1, 2, 2), limits(), &total).ok());
  EXPECT_EQ(total, 1u);
}

TEST(BlkValidate, UnknownOperationsAreNotSupported) {
  for (unsigned op : {unsigned{BLKIF_OP_RESERVED_1}, 7u, 100u, 255u}) {
    BlkRequest r = rw(static_cast<uint8_t>(op), 0, 1);
    expect_reject(check(r, limits()), BlkReason::kUnknownOp, BLKIF_RSP_EOPNOTSUPP);
  }
}

TEST(BlkValidate, OperationsMustHaveBeenOffered) {
  const VbdLimits none = limits(0);
  expect_reject(check(rw(BLKIF_OP_WRITE_BARRIER, 0, 1), none), BlkReason::kNotNegotiated, BLKIF_RSP_EOPNOTSUPP);
  expect_reject(check(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0), none), BlkReason::kNotNegotiated, BLKIF_RSP_EOPNOTSUPP);
  expect_reject(check(discard(0, 8), none), BlkReason::kNotNegotiated, BLKIF_RSP_EOPNOTSUPP);
  VbdLimits no_indirect = limits();
  no_indirect.max_indirect_segments = 0;
  expect_reject(check(indirect(BLKIF_OP_READ, 0, 20), no_indirect), BlkReason::kNotNegotiated, BLKIF_RSP_EOPNOTSUPP);
  // Each feature enables exactly its operation.
  EXPECT_TRUE(check(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0), limits(kBlkFeatureFlush)).ok());
  EXPECT_FALSE(check(rw(BLKIF_OP_WRITE_BARRIER, 0, 0), limits(kBlkFeatureFlush)).ok());
  EXPECT_TRUE(check(rw(BLKIF_OP_WRITE_BARRIER, 0, 0), limits(kBlkFeatureBarrier)).ok());
  EXPECT_TRUE(check(discard(0, 8), limits(kBlkFeatureDiscard)).ok());
}

TEST(BlkValidate, IndirectCarriesOnlyReadsAndWrites) {
  for (unsigned op : {BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT, 200}) {
    expect_reject(blk_check_header(indirect(static_cast<uint8_t>(op), 0, 16), limits()), BlkReason::kBadIndirectOp);
  }
  EXPECT_TRUE(blk_check_header(indirect(BLKIF_OP_READ, 0, 16), limits()).ok());
  EXPECT_TRUE(blk_check_header(indirect(BLKIF_OP_WRITE, 0, 16), limits()).ok());
}

TEST(BlkValidate, ReadOnlyRefusesEverythingButReads) {
  VbdLimits ro = limits();
  ro.read_only = true;
  EXPECT_TRUE(check(rw(BLKIF_OP_READ, 0, 2), ro).ok());
  EXPECT_TRUE(blk_check_header(indirect(BLKIF_OP_READ, 0, 12), ro).ok());
  expect_reject(check(rw(BLKIF_OP_WRITE, 0, 1), ro), BlkReason::kReadOnly);
  expect_reject(check(rw(BLKIF_OP_WRITE_BARRIER, 0, 1), ro), BlkReason::kReadOnly);
  expect_reject(check(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0), ro), BlkReason::kReadOnly);
  expect_reject(check(discard(0, 8), ro), BlkReason::kReadOnly);
  expect_reject(blk_check_header(indirect(BLKIF_OP_WRITE, 0, 12), ro), BlkReason::kReadOnly);
}

TEST(BlkValidate, SegmentCounts) {
  expect_reject(check(rw(BLKIF_OP_READ, 0, 0), limits()), BlkReason::kBadSegmentCount);
  expect_reject(check(rw(BLKIF_OP_WRITE, 0, 0), limits()), BlkReason::kBadSegmentCount);
  expect_reject(check(rw(BLKIF_OP_READ, 0, 12), limits()), BlkReason::kBadSegmentCount);
  expect_reject(check(rw(BLKIF_OP_WRITE, 0, 255), limits()), BlkReason::kBadSegmentCount);
  // Flush and barrier may come without data, with data up to 11 segments.
  EXPECT_TRUE(check(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0), limits()).ok());
  EXPECT_TRUE(check(rw(BLKIF_OP_WRITE_BARRIER, 0, 0), limits()).ok());
  EXPECT_TRUE(check(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 11), limits()).ok());
  expect_reject(check(rw(BLKIF_OP_WRITE_BARRIER, 0, 12), limits()), BlkReason::kBadSegmentCount);
  // Indirect: 1..max.
  expect_reject(blk_check_header(indirect(BLKIF_OP_READ, 0, 0), limits()), BlkReason::kBadSegmentCount);
  EXPECT_TRUE(blk_check_header(indirect(BLKIF_OP_READ, 0, 256), limits()).ok());
  expect_reject(blk_check_header(indirect(BLKIF_OP_READ, 0, 257), limits()), BlkReason::kBadSegmentCount);
  VbdLimits big = limits();
  big.max_indirect_segments = kBlkMaxIndirectSegmentsAbi;
  EXPECT_TRUE(blk_check_header(indirect(BLKIF_OP_READ, 0, 4096), big).ok());
  expect_reject(blk_check_header(indirect(BLKIF_OP_READ, 0, 4097), big), BlkReason::kBadSegmentCount);
  expect_reject(blk_check_header(indirect(BLKIF_OP_WRITE, 0, 65535), big), BlkReason::kBadSegmentCount);
  // The page count must be the one nr_segments implies.
  BlkRequest r = indirect(BLKIF_OP_READ, 0, 600);
  r.nr_indirect_pages = 1;
  expect_reject(blk_check_header(r, big), BlkReason::kBadSegmentCount);
  // The segments handed in must be as many as announced.
  BlkRequest two = rw(BLKIF_OP_READ, 0, 2);
  expect_reject(blk_check_segments(two, std::span<const BlkSegment>(two.seg.data(), 1), limits()),
                BlkReason::kBadSegmentCount);
}

TEST(BlkValidate, SegmentSectorsStayInsideTheirPage) {
  expect_reject(check(rw(BLKIF_OP_READ, 0, 1, 5, 4), limits()), BlkReason::kBadSegment);
  expect_reject(check(rw(BLKIF_OP_READ, 0, 1, 0, 8), limits()), BlkReason::kBadSegment);
  expect_reject(check(rw(BLKIF_OP_READ, 0, 1, 255, 255), limits()), BlkReason::kBadSegment);
  EXPECT_TRUE(check(rw(BLKIF_OP_READ, 0, 1, 7, 7), limits()).ok());
  // One bad segment among good ones.
  BlkRequest r = rw(BLKIF_OP_WRITE, 0, 5);
  r.seg[3].last_sect = 9;
  expect_reject(check(r, limits()), BlkReason::kBadSegment);
}

TEST(BlkValidate, LargeSectorsLeaveOneSectorPerPage) {
  VbdLimits l = limits();
  l.sector_size = 4096;
  l.sectors = 1000;
  uint64_t total = 0;
  EXPECT_TRUE(check(rw(BLKIF_OP_READ, 999, 1, 0, 0), l, &total).ok());
  EXPECT_EQ(total, 1u);
  expect_reject(check(rw(BLKIF_OP_READ, 0, 1, 0, 1), l), BlkReason::kBadSegment);
  expect_reject(check(rw(BLKIF_OP_READ, 0, 1, 1, 1), l), BlkReason::kBadSegment);
  expect_reject(check(rw(BLKIF_OP_READ, 999, 2, 0, 0), l), BlkReason::kOutOfRange);
  l.sector_size = 2048;
  EXPECT_TRUE(check(rw(BLKIF_OP_READ, 0, 1, 0, 1), l).ok());
  expect_reject(check(rw(BLKIF_OP_READ, 0, 1, 0, 2), l), BlkReason::kBadSegment);
}

TEST(BlkValidate, ImageGranularity) {
  VbdLimits l = limits();
  l.align_sectors = 8;  // a 4K-sector disk behind a 512-byte protocol unit
  EXPECT_TRUE(check(rw(BLKIF_OP_READ, 8, 3), l).ok());
  expect_reject(check(rw(BLKIF_OP_READ, 4, 1), l), BlkReason::kMisaligned);
  expect_reject(check(rw(BLKIF_OP_READ, 8, 1, 1, 7), l), BlkReason::kMisaligned);
  expect_reject(check(rw(BLKIF_OP_READ, 8, 1, 0, 3), l), BlkReason::kMisaligned);
  expect_reject(check(discard(4, 8), l), BlkReason::kMisaligned);
  expect_reject(check(discard(8, 12), l), BlkReason::kMisaligned);
  EXPECT_TRUE(check(discard(8, 16), l).ok());
  // An empty flush has no start sector to align.
  EXPECT_TRUE(check(rw(BLKIF_OP_FLUSH_DISKCACHE, 3, 0), l).ok());
  l.align_sectors = 2;
  EXPECT_TRUE(check(rw(BLKIF_OP_READ, 2, 1, 2, 5), l).ok());
}

TEST(BlkValidate, TransfersStayInsideTheImage) {
  expect_reject(check(rw(BLKIF_OP_READ, kSectors - 7, 1), limits()), BlkReason::kOutOfRange);
  expect_reject(check(rw(BLKIF_OP_WRITE, kSectors, 1, 0, 0), limits()), BlkReason::kOutOfRange);
  EXPECT_TRUE(check(rw(BLKIF_OP_WRITE, kSectors - 1, 1, 0, 0), limits()).ok());
  // Overflowing sums must not wrap into the image.
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  expect_reject(check(rw(BLKIF_OP_READ, max - 3, 1), limits()), BlkReason::kOutOfRange);
  expect_reject(check(rw(BLKIF_OP_READ, max, 11), limits()), BlkReason::kOutOfRange);
  // Discard.
  EXPECT_TRUE(check(discard(0, kSectors), limits()).ok());
  EXPECT_TRUE(check(discard(kSectors, 0), limits()).ok());
  expect_reject(check(discard(kSectors - 8, 9), limits()), BlkReason::kOutOfRange);
  expect_reject(check(discard(kSectors + 1, 0), limits()), BlkReason::kOutOfRange);
  expect_reject(check(discard(8, max - 4), limits()), BlkReason::kOutOfRange);
  expect_reject(check(discard(max, 2), limits()), BlkReason::kOutOfRange);
  // A dataless flush says nothing about sectors.
  EXPECT_TRUE(check(rw(BLKIF_OP_FLUSH_DISKCACHE, max, 0), limits()).ok());
  // An empty image refuses every transfer.
  VbdLimits empty = limits();
  empty.sectors = 0;
  expect_reject(check(rw(BLKIF_OP_READ, 0, 1, 0, 0), empty), BlkReason::kOutOfRange);
}

TEST(BlkValidate, InsaneLimitsRefuseEverything) {
  VbdLimits l = limits();
  l.sector_size = 0;
  EXPECT_FALSE(check(rw(BLKIF_OP_READ, 0, 1), l).ok());
  l = limits();
  l.sector_size = 1000;
  EXPECT_FALSE(l.sane());
  l = limits();
  l.align_sectors = 3;
  EXPECT_FALSE(l.sane());
  l = limits();
  l.max_indirect_segments = kBlkMaxIndirectSegmentsAbi + 1;
  EXPECT_FALSE(l.sane());
  EXPECT_TRUE(limits().sane());
}

TEST(BlkValidate, ErrorStatsCountByReason) {
  BlkErrorStats stats;
  const VbdLimits l = limits(0);
  for (const BlkRequest& r : {rw(7, 0, 1), rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0), rw(BLKIF_OP_READ, 0, 0),
                              rw(BLKIF_OP_READ, 0, 0), rw(BLKIF_OP_READ, 0, 1)}) {
    stats.count(check(r, l).reason);
  }
  EXPECT_EQ(stats.get(BlkReason::kUnknownOp), 1u);
  EXPECT_EQ(stats.get(BlkReason::kNotNegotiated), 1u);
  EXPECT_EQ(stats.get(BlkReason::kBadSegmentCount), 2u);
  EXPECT_EQ(stats.get(BlkReason::kOk), 0u);
  EXPECT_EQ(stats.total(), 4u);
  for (size_t i = 0; i < static_cast<size_t>(BlkReason::kCount); ++i) {
    EXPECT_NE(blk_reason_name(static_cast<BlkReason>(i)), "?");
  }
}

// Indirect descriptor pages as a guest fills them.
struct DescriptorPages {
  explicit DescriptorPages(unsigned pages) {
    for (unsigned i = 0; i < pages; ++i) {
      auto* p = static_cast<std::byte*>(std::aligned_alloc(kPageSize, kPageSize));
      std::memset(p, 0xa5, kPageSize);
      mem.push_back(p);
    }
  }
  ~DescriptorPages() {
    for (auto* p : mem) std::free(p);
  }
  void set(unsigned i, GrantRef gref, uint8_t first, uint8_t last) {
    blkif_request_segment s{};
    s.gref = gref;
    s.first_sect = first;
    s.last_sect = last;
    std::memcpy(mem[i / kBlkSegmentsPerIndirectPage] + (i % kBlkSegmentsPerIndirectPage) * 8, &s, sizeof(s));
  }
  std::span<const std::byte* const> view() const { return {mem.data(), mem.size()}; }
  std::vector<std::byte*> mem;
};

TEST(BlkIndirect, DescriptorsAreCopiedOutAndValidated) {
  const unsigned n = 1030;  // three pages, the last partly used
  DescriptorPages pages(3);
  for (unsigned i = 0; i < n; ++i) pages.set(i, 5000 + i, static_cast<uint8_t>(i % 8), 7);
  VbdLimits l = limits();
  l.max_indirect_segments = 2048;
  const BlkRequest r = indirect(BLKIF_OP_WRITE, 64, n);
  ASSERT_TRUE(blk_check_header(r, l).ok());
  std::vector<BlkSegment> segs(n);
  auto copied = blk_copy_indirect_segments(r, pages.view(), segs);
  ASSERT_TRUE(copied.has_value());
  EXPECT_EQ(*copied, n);
  for (unsigned i = 0; i < n; ++i) {
    ASSERT_EQ(segs[i], (BlkSegment{5000 + i, static_cast<uint8_t>(i % 8), 7})) << i;
  }
  // The guest changing the pages afterwards does not reach the copy.
  pages.set(3, 1, 7, 0);
  EXPECT_EQ(segs[3].gref, 5003u);
  uint64_t total = 0;
  EXPECT_TRUE(blk_validate(r, segs, l, &total).ok());
  uint64_t expect = 0;
  for (unsigned i = 0; i < n; ++i) expect += 8 - i % 8;
  EXPECT_EQ(total, expect);
  // A bad descriptor anywhere fails the request.
  ASSERT_TRUE(blk_copy_indirect_segments(r, pages.view(), segs).has_value());
  expect_reject(blk_validate(r, segs, l), BlkReason::kBadSegment);
  pages.set(3, 1, 0, 7);
  pages.set(1029, 9, 0, 8);
  ASSERT_TRUE(blk_copy_indirect_segments(r, pages.view(), segs).has_value());
  expect_reject(blk_validate(r, segs, l), BlkReason::kBadSegment);
}

TEST(BlkIndirect, CountsMustMatch) {
  DescriptorPages pages(2);
  std::vector<BlkSegment> segs(600);
  BlkRequest r = indirect(BLKIF_OP_READ, 0, 600);
  // One page where 600 descriptors need two.
  EXPECT_EQ(blk_copy_indirect_segments(r, pages.view().first(1), segs).error(), EINVAL);
  // Output too small.
  EXPECT_EQ(blk_copy_indirect_segments(r, pages.view(), std::span<BlkSegment>(segs).first(599)).error(), EINVAL);
  // A request whose page count disagrees with its segment count.
  r.nr_indirect_pages = 1;
  EXPECT_EQ(blk_copy_indirect_segments(r, pages.view().first(1), segs).error(), EINVAL);
  // Not indirect at all.
  EXPECT_EQ(blk_copy_indirect_segments(rw(BLKIF_OP_READ, 0, 1), pages.view().first(1), segs).error(), EINVAL);
  // Beyond what 8 pages describe (the header check refuses it first anyway).
  BlkRequest huge = indirect(BLKIF_OP_READ, 0, 5000);
  DescriptorPages eight(8);
  std::vector<BlkSegment> many(5000);
  EXPECT_EQ(blk_copy_indirect_segments(huge, eight.view(), many).error(), EINVAL);
  // A missing page.
  const std::byte* holes[2] = {pages.mem[0], nullptr};
  EXPECT_EQ(blk_copy_indirect_segments(indirect(BLKIF_OP_READ, 0, 600), holes, segs).error(), EINVAL);
  EXPECT_TRUE(blk_copy_indirect_segments(indirect(BLKIF_OP_READ, 0, 600), pages.view(), segs).has_value());
}

// --- blk_admit: the admission the queue runs --------------------------------

TEST(BlkAdmit, DescribesWhatItAdmits) {
  const BlkRequest r = rw(BLKIF_OP_WRITE, 16, 3, 2, 5);
  const BlkAdmission a = blk_admit(r, limits(), {}, {});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a.verdict.status, BLKIF_RSP_OKAY);
  EXPECT_EQ(a.req.op, BLKIF_OP_WRITE);
  EXPECT_EQ(a.req.sector, 16u);
  EXPECT_EQ(a.req.sectors, 12u);
  EXPECT_EQ(a.req.segs.data(), r.seg.data());  // the request's own copy
  EXPECT_EQ(a.req.segs.size(), 3u);
  EXPECT_FALSE(a.req.indirect);
  EXPECT_FALSE(a.req.writes_guest());
  EXPECT_TRUE(blk_admit(rw(BLKIF_OP_READ, 0, 1), limits(), {}, {}).req.writes_guest());
  // A dataless flush: nothing to map, nothing to transfer.
  const BlkAdmission f = blk_admit(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0), limits(), {}, {});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f.req.op, BLKIF_OP_FLUSH_DISKCACHE);
  EXPECT_TRUE(f.req.segs.empty());
  EXPECT_EQ(f.req.sectors, 0u);
}

TEST(BlkAdmit, RefusesAsTheChecksDo) {
  // Every refusal of the table above comes out of admission unchanged, and
  // none is fatal (Linux answers each and goes on).
  VbdLimits ro = limits(kBlkFeatureFlush);
  ro.read_only = true;
  const std::pair<BlkRequest, VbdLimits> cases[] = {
      {rw(7, 0, 1), limits()},
      {rw(BLKIF_OP_WRITE_BARRIER, 0, 1), limits(0)},
      {indirect(BLKIF_OP_FLUSH_DISKCACHE, 0, 8), limits()},
      {rw(BLKIF_OP_WRITE, 0, 1), ro},
      {rw(BLKIF_OP_READ, 0, 12), limits()},
      {rw(BLKIF_OP_READ, 0, 1, 5, 4), limits()},
      {rw(BLKIF_OP_READ, kSectors - 7, 1), limits()},
      {discard(kSectors - 8, 9), limits()},
  };
  for (const auto& [r, l] : cases) {
    const BlkVerdict v = blk_validate(r, r.direct_segments(), l);
    ASSERT_FALSE(v.ok());
    const BlkAdmission a = blk_admit(r, l, {}, {});
    EXPECT_FALSE(a.ok());
    EXPECT_EQ(a.verdict.reason, v.reason) << blk_reason_name(a.verdict.reason);
    EXPECT_EQ(a.verdict.status, v.status);
    EXPECT_FALSE(a.verdict.fatal);
  }
}

TEST(BlkAdmit, DiscardSecureOnlyWhenOffered) {
  BlkRequest d = discard(8, 16);
  d.secure = true;
  BlkAdmission a = blk_admit(d, limits(kBlkFeatureDiscard), {}, {});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a.req.op, BLKIF_OP_DISCARD);
  EXPECT_EQ(a.req.sector, 8u);
  EXPECT_EQ(a.req.sectors, 16u);
  EXPECT_TRUE(a.req.segs.empty());
  EXPECT_FALSE(a.req.secure);
  a = blk_admit(d, limits(kBlkFeatureDiscard | kBlkFeatureDiscardSecure), {}, {});
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a.req.secure);
  d.secure = false;
  EXPECT_FALSE(blk_admit(d, limits(kBlkFeatureDiscard | kBlkFeatureDiscardSecure), {}, {}).req.secure);
}

TEST(BlkAdmit, IndirectDescriptorsAreCopiedThenChecked) {
  const unsigned n = 600;  // two pages
  DescriptorPages pages(2);
  for (unsigned i = 0; i < n; ++i) pages.set(i, 7000 + i, 0, 7);
  VbdLimits l = limits();
  l.max_indirect_segments = 1024;
  const BlkRequest r = indirect(BLKIF_OP_READ, 8, n);
  // Its two descriptor grefs are what the queue maps.
  const auto grefs = blk_descriptor_grefs(r, l);
  EXPECT_EQ(grefs.size(), 2u);
  EXPECT_EQ(grefs.data(), r.indirect_grefs.data());
  std::vector<BlkSegment> segs(l.max_indirect_segments);
  BlkAdmission a = blk_admit(r, l, pages.view(), segs);
  ASSERT_TRUE(a.ok()) << blk_reason_name(a.verdict.reason);
  EXPECT_EQ(a.req.op, BLKIF_OP_READ);
  EXPECT_TRUE(a.req.indirect);
  EXPECT_TRUE(a.req.writes_guest());
  EXPECT_EQ(a.req.segs.data(), segs.data());
  EXPECT_EQ(a.req.segs.size(), n);
  EXPECT_EQ(a.req.segs[599], (BlkSegment{7599, 0, 7}));
  EXPECT_EQ(a.req.sectors, 8u * n);
  // One bad descriptor, anywhere: the request is refused.
  pages.set(599, 1, 3, 2);
  expect_reject(blk_admit(r, l, pages.view(), segs).verdict, BlkReason::kBadSegment);
  pages.set(599, 1, 0, 7);
  // Past the image through its descriptors.
  l.sectors = 8 + 8 * n - 1;
  expect_reject(blk_admit(r, l, pages.view(), segs).verdict, BlkReason::kOutOfRange);
}

TEST(BlkAdmit, IndirectWithoutItsPages) {
  DescriptorPages pages(1);
  std::vector<BlkSegment> segs(kBlkDefaultMaxIndirectSegments);
  const BlkRequest r = indirect(BLKIF_OP_WRITE, 0, 16);
  // Pages that could not be mapped.
  expect_reject(blk_admit(r, limits(), {}, segs).verdict, BlkReason::kIndirectMapFailed);
  // A page list or descriptor array that cannot hold the request: refused
  // as the count, never read past.
  expect_reject(blk_admit(r, limits(), pages.view(), std::span<BlkSegment>(segs).first(15)).verdict,
                BlkReason::kBadSegmentCount);
  const std::byte* three[3] = {pages.mem[0], pages.mem[0], pages.mem[0]};
  expect_reject(blk_admit(r, limits(), three, segs).verdict, BlkReason::kBadSegmentCount);
}

TEST(BlkAdmit, NoPagesForARequestRefusedOnItsHeader) {
  VbdLimits no_indirect = limits();
  no_indirect.max_indirect_segments = 0;
  VbdLimits ro = limits();
  ro.read_only = true;
  const std::pair<BlkRequest, VbdLimits> refused[] = {
      {indirect(BLKIF_OP_READ, 0, 20), no_indirect},        // not negotiated
      {indirect(BLKIF_OP_WRITE_BARRIER, 0, 20), limits()},  // bad inner op
      {indirect(BLKIF_OP_WRITE, 0, 20), ro},                // read-only
      {indirect(BLKIF_OP_READ, 0, 257), limits()},          // too many segments
      {indirect(BLKIF_OP_READ, 0, 0), limits()},            // none
  };
  for (const auto& [r, l] : refused) {
    EXPECT_TRUE(blk_descriptor_grefs(r, l).empty());
    // Without pages, admission still names the header's reason.
    const BlkAdmission a = blk_admit(r, l, {}, {});
    EXPECT_FALSE(a.ok());
    EXPECT_EQ(a.verdict.reason, blk_check_header(r, l).reason);
    EXPECT_NE(a.verdict.reason, BlkReason::kIndirectMapFailed);
  }
  // Direct requests and discards have no descriptor pages.
  EXPECT_TRUE(blk_descriptor_grefs(rw(BLKIF_OP_READ, 0, 2), limits()).empty());
  EXPECT_TRUE(blk_descriptor_grefs(discard(0, 8), limits()).empty());
}

}  // namespace
}  // namespace xenpath
