// The simulated grant table: real mmap permissions, Xen's GNTST codes, the
// errno a gntdev user sees, grant copy, and the counters other tests use as
// leak checks.
#include "sim/sim_grant_table.h"

#include "common/xen/ring_protocol.h"  // GNTST_*

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstring>
#include <vector>

#include "sim/sim_hypervisor.h"
#include "tests/fixtures/sim_guest.h"

namespace xenpath::sim {
namespace {

constexpr DomId kGuest = 5;
constexpr DomId kOther = 7;  // a domain the guest's grants are not for

// A bare hypervisor (no xenstore, no toolstack): the grant table alone.
class SimGrantTableTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(test::open_guest_and_grant_table(hv_, kGuest, 256, guest_, gt_)); }

  GrantRef grant_page(SimDomain* d, uint8_t fill, bool readonly, DomId to = kDom0, uint32_t* pfn_out = nullptr) {
    return test::grant_filled_page(*d, fill, readonly, to, pfn_out);
  }

  uint64_t live() { return hv_.counters().mapped_pages_live.load(); }

  // Declared first so that the handle goes before the hypervisor.
  SimHypervisor hv_;
  SimDomain* guest_ = nullptr;
  std::unique_ptr<GrantTable> gt_;
};

bool all_bytes(const std::byte* p, size_t n, uint8_t v) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != std::byte{v}) return false;
  }
  return true;
}

TEST_F(SimGrantTableTest, ReadOnlyMapIsReadableAndAWriteFaults) {
  uint32_t pfn = 0;
  GrantRef ref = grant_page(guest_, 0xab, /*readonly=*/true, kDom0, &pfn);
  std::array<int16_t, 1> st{99};
  auto m = gt_->map(kGuest, std::span(&ref, 1), /*writable=*/false, st);
  ASSERT_TRUE(m) << error_string(m.error());
  EXPECT_EQ(st[0], GNTST_okay);
  EXPECT_EQ(m->pages(), 1u);
  EXPECT_TRUE(all_bytes(m->page(0), kPageSize, 0xab));
  // Same memory: what the guest writes later shows through the mapping.
  guest_->page(pfn)[100] = std::byte{0x11};
  EXPECT_EQ(m->page(0)[100], std::byte{0x11});

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Die of the fault itself rather than the sanitizer's report.
    signal(SIGSEGV, SIG_DFL);
    *reinterpret_cast<volatile uint8_t*>(m->page(0)) = 0x55;
    _exit(0);  // reached only if the write went through
  }
  int ws = 0;
  ASSERT_EQ(waitpid(child, &ws, 0), child);
  ASSERT_TRUE(WIFSIGNALED(ws)) << "write to a read-only grant mapping did not fault, status " << ws;
  EXPECT_EQ(WTERMSIG(ws), SIGSEGV);
  EXPECT_EQ(guest_->page(pfn)[0], std::byte{0xab});
}

TEST_F(SimGrantTableTest, WritableMapSharesMemoryBothWays) {
  uint32_t pfn = 0;
  GrantRef ref = grant_page(guest_, 0, /*readonly=*/false, kDom0, &pfn);
  auto m = gt_->map(kGuest, std::span(&ref, 1), /*writable=*/true);
  ASSERT_TRUE(m) << error_string(m.error());
  m->page(0)[10] = std::byte{0x42};
  EXPECT_EQ(guest_->page(pfn)[10], std::byte{0x42});
  guest_->page(pfn)[4095] = std::byte{0x24};
  EXPECT_EQ(m->page(0)[4095], std::byte{0x24});
  EXPECT_EQ(guest_->active_maps(ref), 1u);
  m->reset();
  EXPECT_EQ(guest_->active_maps(ref), 0u);
}

TEST_F(SimGrantTableTest, BatchIsOneContiguousMappingFromOneCall) {
  constexpr uint32_t kN = 16;
  auto base = guest_->alloc_pages(kN);
  ASSERT_TRUE(base);
  // Grant the pages in a scrambled order so the batch is not guest-contiguous
  // (and partly is: 3,4,5 are in sequence).
  const std::array<uint32_t, kN> order{9, 3, 4, 5, 0, 15, 7, 1, 12, 2, 14, 6, 11, 8, 13, 10};
  std::vector<GrantRef> refs;
  for (uint32_t i : order) {
    std::memset(guest_->page(*base + i), static_cast<int>(i + 1), kPageSize);
    auto ref = guest_->grant_access(kDom0, *base + i, false);
    ASSERT_TRUE(ref);
    refs.push_back(*ref);
  }
  const uint64_t calls0 = hv_.counters().map_calls.load();
  const uint64_t pages0 = hv_.counters().map_pages.load();
  const uint64_t unmaps0 = hv_.counters().unmap_calls.load();
  std::vector<int16_t> st(kN, 99);
  {
    auto m = gt_->map(kGuest, refs, /*writable=*/true, st);
    ASSERT_TRUE(m) << error_string(m.error());
    ASSERT_EQ(m->pages(), kN);
    EXPECT_EQ(hv_.counters().map_calls.load() - calls0, 1u);
    EXPECT_EQ(hv_.counters().map_pages.load() - pages0, kN);
    EXPECT_EQ(live(), kN);
    for (uint32_t i = 0; i < kN; ++i) {
      EXPECT_EQ(st[i], GNTST_okay);
      EXPECT_EQ(static_cast<std::byte*>(m->data()) + i * kPageSize, m->page(i));
      EXPECT_TRUE(all_bytes(m->page(i), kPageSize, static_cast<uint8_t>(order[i] + 1))) << "page " << i;
      EXPECT_EQ(guest_->active_maps(refs[i]), 1u);
    }
    // Writes through the batch land in the right guest frames.
    m->page(kN - 1)[0] = std::byte{0xee};
    EXPECT_EQ(guest_->page(*base + order[kN - 1])[0], std::byte{0xee});
  }
  EXPECT_EQ(hv_.counters().unmap_calls.load() - unmaps0, 1u);
  EXPECT_EQ(live(), 0u);
  for (GrantRef r : refs) EXPECT_EQ(guest_->active_maps(r), 0u);
}

// Every failed batch: EINVAL, the exact GNTST per ref, nothing left mapped.
class SimGrantTableFailureTest : public SimGrantTableTest {
 protected:
  void expect_failed_map(DomId dom, std::vector<GrantRef> refs, bool writable, std::vector<int16_t> want) {
    const uint64_t failures0 = hv_.counters().map_failures.load();
    std::vector<int16_t> st(refs.size(), 99);
    auto m = gt_->map(dom, refs, writable, st);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error(), EINVAL);
    EXPECT_EQ(st, want);
    EXPECT_EQ(hv_.counters().map_failures.load() - failures0, 1u);
    EXPECT_EQ(live(), 0u);
    if (SimDomain* d = hv_.domain(dom)) {
      for (GrantRef r : refs) EXPECT_EQ(d->active_maps(r), 0u) << "ref " << r;
    }
  }
};

TEST_F(SimGrantTableFailureTest, RefBeyondTheTableIsBadGntref) {
  GrantRef good = grant_page(guest_, 1, false);
  expect_failed_map(kGuest, {good, 1u << 20}, false, {GNTST_okay, GNTST_bad_gntref});
}

TEST_F(SimGrantTableFailureTest, RefNeverGrantedIsGeneralError) {
  GrantRef good = grant_page(guest_, 1, false);
  // Inside the table's first frame, never handed out; 0 is a reserved ref.
  expect_failed_map(kGuest, {300, good, 0}, false, {GNTST_general_error, GNTST_okay, GNTST_general_error});
}

TEST_F(SimGrantTableFailureTest, RefGrantedToAnotherDomainIsGeneralError) {
  auto other = hv_.create_domain(kOther, 16, "driver-domain");
  ASSERT_TRUE(other);
  GrantRef ref = grant_page(guest_, 0x33, true, kOther);
  expect_failed_map(kGuest, {ref}, false, {GNTST_general_error});
  // The domain it was granted to can map it.
  auto gt7 = hv_.open_grant_table(kOther);
  ASSERT_TRUE(gt7);
  auto m = (*gt7)->map(kGuest, std::span(&ref, 1), false);
  ASSERT_TRUE(m) << error_string(m.error());
  EXPECT_TRUE(all_bytes(m->page(0), kPageSize, 0x33));
}

TEST_F(SimGrantTableFailureTest, UnknownDomainIsBadDomain) {
  GrantRef ref = grant_page(guest_, 1, false);
  expect_failed_map(42, {ref, ref}, false, {GNTST_bad_domain, GNTST_bad_domain});
}

TEST_F(SimGrantTableFailureTest, RevokedRefIsGeneralError) {
  GrantRef ref = grant_page(guest_, 1, false);
  ASSERT_TRUE(guest_->end_access(ref));
  expect_failed_map(kGuest, {ref}, false, {GNTST_general_error});
}

TEST_F(SimGrantTableFailureTest, WritableMapOfReadOnlyGrantIsGeneralError) {
  GrantRef ro = grant_page(guest_, 1, /*readonly=*/true);
  GrantRef rw = grant_page(guest_, 2, /*readonly=*/false);
  expect_failed_map(kGuest, {rw, ro}, /*writable=*/true, {GNTST_okay, GNTST_general_error});
  auto m = gt_->map(kGuest, std::span(&ro, 1), /*writable=*/false);
  EXPECT_TRUE(m) << error_string(m.error());
}

TEST_F(SimGrantTableFailureTest, EmptyBatchOrWrongStatusLengthIsEinval) {
  GrantRef ref = grant_page(guest_, 1, false);
  auto m = gt_->map(kGuest, {}, false);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error(), EINVAL);
  std::array<int16_t, 2> st{};
  m = gt_->map(kGuest, std::span(&ref, 1), false, st);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error(), EINVAL);
  EXPECT_EQ(live(), 0u);
}

TEST_F(SimGrantTableTest, EndAccessWhileMappedIsBusyUntilUnmapped) {
  GrantRef ref = grant_page(guest_, 1, false);
  auto m = gt_->map(kGuest, std::span(&ref, 1), false);
  ASSERT_TRUE(m);
  auto st = guest_->end_access(ref);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), EBUSY);
  EXPECT_EQ(guest_->grants_in_use(), 1u);
  m->reset();
  EXPECT_TRUE(guest_->end_access(ref));
  EXPECT_EQ(guest_->grants_in_use(), 0u);
  // Revoked means gone: a second end_access is an error, not a double free.
  st = guest_->end_access(ref);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), EINVAL);
}

TEST_F(SimGrantTableTest, MappingSurvivesDestroyDomainUntilUnmapped) {
  GrantRef ref = grant_page(guest_, 0x5a, false);
  GrantRef unmapped = grant_page(guest_, 0x5b, false);
  auto m = gt_->map(kGuest, std::span(&ref, 1), true);
  ASSERT_TRUE(m);
  ASSERT_TRUE(hv_.destroy_domain(kGuest));
  EXPECT_EQ(hv_.domain(kGuest), nullptr);
  // Still mapped, readable and writable: the mapping holds the page.
  EXPECT_TRUE(all_bytes(m->page(0), kPageSize, 0x5a));
  m->page(0)[0] = std::byte{1};
  EXPECT_EQ(m->page(0)[0], std::byte{1});
  EXPECT_EQ(live(), 1u);
  // The dead domain's grants can no longer be mapped or copied.
  std::array<int16_t, 1> st{99};
  auto again = gt_->map(kGuest, std::span(&unmapped, 1), false, st);
  ASSERT_FALSE(again);
  EXPECT_EQ(st[0], GNTST_bad_domain);
  std::array<std::byte, 8> buf{};
  GrantCopySegment seg{};
  seg.source.foreign = {unmapped, 0, kGuest};
  seg.dest.virt = buf.data();
  seg.len = buf.size();
  seg.flags = kCopySourceGref;
  auto n = gt_->copy(std::span(&seg, 1));
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 0u);
  EXPECT_EQ(seg.status, GNTST_bad_domain);
  // The stale SimDomain* stays safe to call.
  EXPECT_EQ(guest_->page(0), nullptr);
  EXPECT_EQ(guest_->grant_access(kDom0, 0, false).error(), ESRCH);
  m->reset();
  EXPECT_EQ(live(), 0u);
  // The id can be used again.
  EXPECT_TRUE(hv_.create_domain(kGuest, 8, "guest-again"));
}

TEST_F(SimGrantTableTest, SetMaxGrantsLimitsPagesMappedAtOnce) {
  std::vector<GrantRef> refs;
  for (int i = 0; i < 4; ++i) refs.push_back(grant_page(guest_, 1, false));
  ASSERT_TRUE(gt_->set_max_grants(4));
  auto three = gt_->map(kGuest, std::span(refs).first(3), false);
  ASSERT_TRUE(three);
  std::array<int16_t, 2> st{};
  auto two = gt_->map(kGuest, std::span(refs).last(2), false, st);
  ASSERT_FALSE(two);
  EXPECT_EQ(two.error(), ENOSPC);
  EXPECT_EQ(st[0], GNTST_no_device_space);
  EXPECT_EQ(guest_->active_maps(refs[3]), 0u);
  auto one = gt_->map(kGuest, std::span(refs).last(1), false);
  ASSERT_TRUE(one);
  EXPECT_EQ(live(), 4u);
  three->reset();
  one->reset();
  auto four = gt_->map(kGuest, refs, false);
  EXPECT_TRUE(four);
}

TEST_F(SimGrantTableTest, SameRefMapsUpTo128TimesPerKind) {
  GrantRef ref = grant_page(guest_, 1, false);
  std::vector<GrantMapping> maps;
  for (int i = 0; i < 128; ++i) {
    auto m = gt_->map(kGuest, std::span(&ref, 1), false);
    ASSERT_TRUE(m) << "map " << i;
    maps.push_back(std::move(*m));
  }
  std::array<int16_t, 1> st{};
  auto m = gt_->map(kGuest, std::span(&ref, 1), false, st);
  ASSERT_FALSE(m);
  EXPECT_EQ(st[0], GNTST_general_error);
  // The write pin counter is separate.
  auto w = gt_->map(kGuest, std::span(&ref, 1), true);
  EXPECT_TRUE(w);
  EXPECT_EQ(guest_->active_maps(ref), 129u);
  maps.clear();
  w->reset();
  EXPECT_EQ(guest_->active_maps(ref), 0u);
  EXPECT_EQ(live(), 0u);
}

TEST_F(SimGrantTableTest, CopyBothDirectionsWithLocalSideCrossingAPage) {
  uint32_t src_pfn = 0;
  uint32_t dst_pfn = 0;
  GrantRef src = grant_page(guest_, 0, true, kDom0, &src_pfn);
  GrantRef dst = grant_page(guest_, 0, false, kDom0, &dst_pfn);
  for (size_t i = 0; i < kPageSize; ++i) guest_->page(src_pfn)[i] = static_cast<std::byte>(i * 7);
  std::vector<std::byte> local(2 * kPageSize, std::byte{0});
  std::byte* straddle = local.data() + kPageSize - 100;  // 100 bytes in one page, 200 in the next

  std::array<GrantCopySegment, 2> segs{};
  segs[0].source.foreign = {src, 50, kGuest};
  segs[0].dest.virt = straddle;
  segs[0].len = 300;
  segs[0].flags = kCopySourceGref;
  for (size_t i = 0; i < 300; ++i) straddle[i] = std::byte{0};
  auto n = gt_->copy(std::span(segs).first(1));
  ASSERT_TRUE(n) << error_string(n.error());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(segs[0].status, GNTST_okay);
  for (size_t i = 0; i < 300; ++i) ASSERT_EQ(straddle[i], static_cast<std::byte>((i + 50) * 7)) << i;

  // And back out, into the writable grant, at an offset.
  segs[1].source.virt = straddle;
  segs[1].dest.foreign = {dst, 3796, kGuest};
  segs[1].len = 300;
  segs[1].flags = kCopyDestGref;
  n = gt_->copy(std::span(segs).last(1));
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(segs[1].status, GNTST_okay);
  EXPECT_EQ(std::memcmp(guest_->page(dst_pfn) + 3796, straddle, 300), 0);
  EXPECT_TRUE(all_bytes(guest_->page(dst_pfn), 3796, 0));
}

TEST_F(SimGrantTableTest, CopyGivesXenStatusPerSegment) {
  auto other = hv_.create_domain(kOther, 16, "other");
  ASSERT_TRUE(other);
  GrantRef ro = grant_page(guest_, 0x77, true);
  GrantRef rw = grant_page(guest_, 0x00, false);
  GrantRef not_ours = grant_page(guest_, 0x66, true, kOther);
  GrantRef revoked = grant_page(guest_, 0x55, true);
  ASSERT_TRUE(guest_->end_access(revoked));

  std::array<std::byte, 64> out{};
  std::array<std::byte, 64> in{};
  in.fill(std::byte{0x99});
  auto read_seg = [&](GrantRef ref, DomId dom) {
    GrantCopySegment s{};
    s.source.foreign = {ref, 0, dom};
    s.dest.virt = out.data();
    s.len = 16;
    s.flags = kCopySourceGref;
    return s;
  };
  auto write_seg = [&](GrantRef ref, DomId dom) {
    GrantCopySegment s{};
    s.source.virt = in.data();
    s.dest.foreign = {ref, 0, dom};
    s.len = 16;
    s.flags = kCopyDestGref;
    return s;
  };
  std::vector<GrantCopySegment> segs{
      read_seg(ro, kGuest),        // okay
      read_seg(1u << 20, kGuest),  // beyond the table
      read_seg(ro, 42),            // no such domain
      read_seg(not_ours, kGuest),  // granted to domain 7
      read_seg(revoked, kGuest),   // revoked
      write_seg(ro, kGuest),       // dest is a read-only grant
      write_seg(rw, kGuest),       // okay
  };
  GrantCopySegment empty = read_seg(1u << 20, kGuest);
  empty.len = 0;  // gntdev issues no op at all for it
  segs.push_back(empty);
  const SimCounters& c = hv_.counters();
  const uint64_t calls0 = c.copy_calls.load();
  const uint64_t segs0 = c.copy_segs.load();
  const uint64_t fail0 = c.copy_failures.load();
  auto n = gt_->copy(segs);
  ASSERT_TRUE(n) << error_string(n.error());
  EXPECT_EQ(*n, 3u);
  const std::vector<int16_t> want{GNTST_okay,          GNTST_bad_gntref,    GNTST_bad_domain, GNTST_general_error,
                                  GNTST_general_error, GNTST_general_error, GNTST_okay,       GNTST_okay};
  std::vector<int16_t> got;
  for (const auto& s : segs) got.push_back(s.status);
  EXPECT_EQ(got, want);
  EXPECT_EQ(c.copy_calls.load() - calls0, 1u);
  EXPECT_EQ(c.copy_segs.load() - segs0, segs.size());
  EXPECT_EQ(c.copy_failures.load() - fail0, 5u);
  // Only the good read reached `out`, only the good write reached the guest.
  EXPECT_TRUE(all_bytes(out.data(), 16, 0x77));
  EXPECT_TRUE(all_bytes(out.data() + 16, out.size() - 16, 0));
  auto m = gt_->map(kGuest, std::span(&ro, 1), false);
  ASSERT_TRUE(m);
  EXPECT_TRUE(all_bytes(m->page(0), kPageSize, 0x77));
  auto mw = gt_->map(kGuest, std::span(&rw, 1), false);
  ASSERT_TRUE(mw);
  EXPECT_TRUE(all_bytes(mw->page(0), 16, 0x99));
  EXPECT_TRUE(all_bytes(mw->page(0) + 16, kPageSize - 16, 0));
}

TEST_F(SimGrantTableTest, CopyBetweenTwoForeignGrants) {
  auto other = hv_.create_domain(kOther, 16, "other");
  ASSERT_TRUE(other);
  uint32_t dst_pfn = 0;
  GrantRef src = grant_page(guest_, 0x3c, true);
  GrantRef dst = grant_page(*other, 0, false, kDom0, &dst_pfn);
  GrantCopySegment s{};
  s.source.foreign = {src, 100, kGuest};
  s.dest.foreign = {dst, 200, kOther};
  s.len = 1000;
  s.flags = kCopySourceGref | kCopyDestGref;
  auto n = gt_->copy(std::span(&s, 1));
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(s.status, GNTST_okay);
  EXPECT_TRUE(all_bytes((*other)->page(dst_pfn), 200, 0));
  EXPECT_TRUE(all_bytes((*other)->page(dst_pfn) + 200, 1000, 0x3c));
  EXPECT_TRUE(all_bytes((*other)->page(dst_pfn) + 1200, kPageSize - 1200, 0));
}

TEST_F(SimGrantTableTest, MalformedCopyBatchFailsWholeAndCopiesNothing) {
  GrantRef src = grant_page(guest_, 0x12, true);
  std::array<std::byte, 256> out{};
  std::array<GrantCopySegment, 2> segs{};
  segs[0].source.foreign = {src, 0, kGuest};
  segs[0].dest.virt = out.data();
  segs[0].len = 16;
  segs[0].flags = kCopySourceGref;
  // Grant side past the end of its page: gntdev refuses the whole ioctl.
  segs[1].source.foreign = {src, 4000, kGuest};
  segs[1].dest.virt = out.data() + 16;
  segs[1].len = 200;
  segs[1].flags = kCopySourceGref;
  const uint64_t segs0 = hv_.counters().copy_segs.load();
  auto n = gt_->copy(segs);
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error(), EINVAL);
  EXPECT_TRUE(all_bytes(out.data(), out.size(), 0));
  EXPECT_EQ(hv_.counters().copy_segs.load(), segs0);

  // Local to local is not a grant copy at all.
  segs[1] = {};
  segs[1].source.virt = out.data();
  segs[1].dest.virt = out.data() + 128;
  segs[1].len = 16;
  n = gt_->copy(segs);
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error(), EINVAL);
  EXPECT_TRUE(all_bytes(out.data(), out.size(), 0));

  // At exactly the end of the page it is fine.
  segs[1] = segs[0];
  segs[1].source.foreign.offset = 4096 - 200;
  segs[1].len = 200;
  segs[1].dest.virt = out.data() + 16;
  n = gt_->copy(segs);
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 2u);
  EXPECT_TRUE(all_bytes(out.data(), 216, 0x12));
}

TEST_F(SimGrantTableTest, GuestPageAllocatorHandsOutZeroedContiguousRuns) {
  auto a = guest_->alloc_pages(10);
  ASSERT_TRUE(a);
  std::memset(guest_->page(*a), 0xff, 10 * kPageSize);
  auto b = guest_->alloc_pages(250);
  ASSERT_FALSE(b);  // 256 pages, 10 taken: no run of 250
  EXPECT_EQ(b.error(), ENOMEM);
  guest_->free_pages(*a, 10);
  b = guest_->alloc_pages(250);
  ASSERT_TRUE(b);
  EXPECT_TRUE(all_bytes(guest_->page(*b), 250 * kPageSize, 0));  // reused pages come back zeroed
  EXPECT_EQ(guest_->page(256), nullptr);
  EXPECT_EQ(guest_->total_pages(), 256u);
}

TEST_F(SimGrantTableTest, GrantTableGrowsAndFillsUp) {
  SimHypervisor small(1024);  // two frames of v1 entries
  auto d = small.create_domain(3, 4, "small");
  ASSERT_TRUE(d);
  std::vector<GrantRef> refs;
  for (;;) {
    auto r = (*d)->grant_access(kDom0, 0, true);
    if (!r) {
      EXPECT_EQ(r.error(), ENOSPC);
      break;
    }
    refs.push_back(*r);
  }
  // Refs 0-7 are the toolstack's.
  ASSERT_EQ(refs.size(), 1024u - 8u);
  EXPECT_EQ(refs.front(), 8u);
  EXPECT_EQ(refs.back(), 1023u);
  EXPECT_EQ((*d)->grants_in_use(), 1016u);
  ASSERT_TRUE((*d)->end_access(500));
  auto r = (*d)->grant_access(kDom0, 1, false);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 500u);
}

TEST_F(SimGrantTableTest, Dom0ExistsAndGetsMemoryOnce) {
  SimDomain* d0 = hv_.domain(kDom0);
  ASSERT_NE(d0, nullptr);
  EXPECT_EQ(d0->total_pages(), 0u);
  auto with_mem = hv_.create_domain(kDom0, 32, "Domain-0");
  ASSERT_TRUE(with_mem);
  EXPECT_EQ((*with_mem)->total_pages(), 32u);
  EXPECT_EQ(hv_.create_domain(kDom0, 32, "again").error(), EEXIST);
  EXPECT_EQ(hv_.create_domain(kGuest, 32, "dup").error(), EEXIST);
  EXPECT_EQ(hv_.destroy_domain(kDom0).error(), EPERM);
  EXPECT_EQ(hv_.destroy_domain(99).error(), ESRCH);
  EXPECT_EQ(hv_.open_grant_table(99).error(), ESRCH);
}

TEST_F(SimGrantTableTest, LargeSparseGuest) {
  auto big = hv_.create_domain(9, 1u << 20, "big");  // 4 GiB of guest memory, untouched
  ASSERT_TRUE(big) << error_string(big.error());
  auto p = (*big)->alloc_pages(1);
  ASSERT_TRUE(p);
  GrantRef ref = *(*big)->grant_access(kDom0, (1u << 20) - 1, false);
  (*big)->page((1u << 20) - 1)[0] = std::byte{7};
  auto m = gt_->map(9, std::span(&ref, 1), true);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->page(0)[0], std::byte{7});
}

}  // namespace
}  // namespace xenpath::sim
