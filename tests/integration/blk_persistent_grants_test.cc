// The persistent grant table over the simulated hypervisor's grant table:
// one map call per burst of new grants, hits afterwards, LRU eviction for
// room, overflow to transient mappings when in-use entries fill the table,
// idle purge, failed maps that leave nothing behind, and no leaked mapping
// whatever the sequence (the hypervisor's live-mapping counter is the judge).
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "blkback/blk_persistent_grants.h"
#include "sim/sim_hypervisor.h"
#include "tests/fixtures/sim_guest.h"

namespace xenpath {
namespace {

constexpr DomId kGuest = 3;
using Handle = PersistentGrants::Handle;

class BlkPersistentGrants : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(test::open_guest_and_grant_table(hv_, kGuest, 1024, guest_, gt_)); }

  std::vector<GrantRef> grant(unsigned n, bool readonly = false) {
    std::vector<GrantRef> refs;
    for (unsigned i = 0; i < n; ++i) {
      auto pfn = guest_->alloc_pages(1);
      EXPECT_TRUE(pfn);
      auto ref = guest_->grant_access(kDom0, *pfn, readonly);
      EXPECT_TRUE(ref);
      pfn_of_[*ref] = *pfn;
      refs.push_back(*ref);
    }
    return refs;
  }

  // Nothing in use: clear() drops every entry and nothing stays mapped.
  void expect_cleared(PersistentGrants& pg) {
    EXPECT_EQ(pg.clear(), 0u);
    EXPECT_EQ(live(), 0u);
  }
  uint64_t live() const { return const_cast<sim::SimHypervisor&>(hv_).counters().mapped_pages_live.load(); }
  uint64_t map_calls() const { return const_cast<sim::SimHypervisor&>(hv_).counters().map_calls.load(); }

  struct Use {
    std::vector<std::byte*> pages;
    std::vector<Handle> handles;
    GrantMapping transient;
  };
  Use acquire(PersistentGrants& pg, const std::vector<GrantRef>& refs, Status* st = nullptr) {
    Use u;
    u.pages.resize(refs.size());
    u.handles.resize(refs.size());
    Status s = pg.acquire(refs, u.pages, u.handles, &u.transient);
    if (st != nullptr) {
      *st = s;
    } else {
      EXPECT_TRUE(s.has_value()) << error_string(s.error());
    }
    return u;
  }

  sim::SimHypervisor hv_;
  sim::SimDomain* guest_ = nullptr;
  std::unique_ptr<GrantTable> gt_;
  std::map<GrantRef, uint32_t> pfn_of_;
};

PersistentGrants::Options opts(uint32_t max_pages) {
  PersistentGrants::Options o;
  o.max_pages = max_pages;
  o.idle_timeout = std::chrono::seconds(60);
  return o;
}

TEST_F(BlkPersistentGrants, NewGrantsMapOnceInOneCallThenHit) {
  PersistentGrants pg(*gt_, kGuest, opts(64));
  const auto refs = grant(20);
  const uint64_t calls0 = map_calls();
  Use u = acquire(pg, refs);
  EXPECT_EQ(map_calls() - calls0, 1u);
  EXPECT_EQ(live(), 20u);
  EXPECT_FALSE(u.transient);
  // Writable, and really the guest's pages.
  for (size_t i = 0; i < refs.size(); ++i) {
    std::memset(u.pages[i], static_cast<int>(i + 1), kPageSize);
    EXPECT_EQ(guest_->page(pfn_of_[refs[i]])[100], std::byte(i + 1));
  }
  pg.release(u.handles);
  Use again = acquire(pg, refs);
  EXPECT_EQ(map_calls() - calls0, 1u);
  EXPECT_EQ(again.pages, u.pages);
  EXPECT_EQ(pg.stats().misses.get(), 20u);
  EXPECT_EQ(pg.stats().hits.get(), 20u);
  pg.release(again.handles);
  EXPECT_EQ(pg.live_entries(), 20u);
  expect_cleared(pg);
}

TEST_F(BlkPersistentGrants, DuplicatesShareOneEntry) {
  PersistentGrants pg(*gt_, kGuest, opts(16));
  const auto r = grant(2);
  Use u = acquire(pg, {r[0], r[1], r[0], r[0]});
  EXPECT_EQ(u.pages[0], u.pages[2]);
  EXPECT_EQ(u.pages[0], u.pages[3]);
  EXPECT_EQ(guest_->active_maps(r[0]), 1u);
  EXPECT_EQ(pg.live_entries(), 2u);
  // Three uses of one entry: idle only after the third release.
  pg.release(std::span<const Handle>(u.handles).first(3));
  EXPECT_EQ(pg.clear(), 1u);  // r[0] still used once
  EXPECT_TRUE(pg.contains(r[0]));
  EXPECT_FALSE(pg.contains(r[1]));
  pg.release(std::span<const Handle>(u.handles).last(1));
  expect_cleared(pg);
}

TEST_F(BlkPersistentGrants, LeastRecentlyUsedGoesFirstForRoom) {
  PersistentGrants pg(*gt_, kGuest, opts(8));
  const auto a = grant(4), b = grant(4), c = grant(4);
  Use ua = acquire(pg, a);
  Use ub = acquire(pg, b);
  pg.release(ua.handles);  // a idle first: the least recently used
  pg.release(ub.handles);
  EXPECT_EQ(live(), 8u);
  Use uc = acquire(pg, c);
  EXPECT_FALSE(uc.transient);
  for (GrantRef r : a) {
    EXPECT_FALSE(pg.contains(r));
    EXPECT_EQ(guest_->active_maps(r), 0u);  // unmapped, not just forgotten
  }
  for (GrantRef r : b) EXPECT_TRUE(pg.contains(r));
  EXPECT_EQ(live(), 8u);
  EXPECT_EQ(pg.stats().evictions.get(), 4u);
  // Using b refreshes it: now c is the oldest idle.
  pg.release(uc.handles);
  Use ub2 = acquire(pg, b);
  pg.release(ub2.handles);
  Use ua2 = acquire(pg, a);
  for (GrantRef r : c) EXPECT_FALSE(pg.contains(r));
  for (GrantRef r : b) EXPECT_TRUE(pg.contains(r));
  pg.release(ua2.handles);
  expect_cleared(pg);
}

TEST_F(BlkPersistentGrants, InUseEntriesOverflowToTransientMappings) {
  PersistentGrants pg(*gt_, kGuest, opts(8));
  const auto held = grant(8), extra = grant(3);
  Use uh = acquire(pg, held);
  const uint64_t calls0 = map_calls();
  Use ux = acquire(pg, {extra[0], held[1], extra[1], extra[2]});
  EXPECT_EQ(map_calls() - calls0, 1u);  // still one call for the new ones
  ASSERT_TRUE(ux.transient);
  EXPECT_EQ(ux.transient.pages(), 3u);
  EXPECT_EQ(ux.handles[0], PersistentGrants::kTransient);
  EXPECT_NE(ux.handles[1], PersistentGrants::kTransient);
  EXPECT_EQ(ux.pages[1], uh.pages[1]);
  std::memset(ux.pages[2], 0x5a, kPageSize);
  EXPECT_EQ(guest_->page(pfn_of_[extra[1]])[7], std::byte{0x5a});
  EXPECT_EQ(pg.stats().overflows.get(), 3u);
  for (GrantRef r : extra) EXPECT_FALSE(pg.contains(r));
  EXPECT_EQ(live(), 11u);
  ux.transient.reset();
  EXPECT_EQ(live(), 8u);
  pg.release(ux.handles);  // transient handles are ignored
  pg.release(uh.handles);
  expect_cleared(pg);
}

TEST_F(BlkPersistentGrants, ABlockStaysUntilItsLastEntryGoes) {
  PersistentGrants pg(*gt_, kGuest, opts(6));
  const auto a = grant(4), b = grant(4);
  Use ua = acquire(pg, a);
  // Three of the block's four idle, one still in use.
  pg.release(std::span<const Handle>(ua.handles).first(3));
  Use ub = acquire(pg, b, nullptr);
  // Room was needed: the idle three were evicted, but their pages belong to
  // a block still pinned by a[3], so b could not be kept.
  EXPECT_TRUE(ub.transient);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(pg.contains(a[i]));
  EXPECT_TRUE(pg.contains(a[3]));
  EXPECT_EQ(guest_->active_maps(a[0]), 1u);  // the block is still mapped
  pg.release(std::span<const Handle>(ua.handles).last(1));
  EXPECT_EQ(pg.clear(), 0u);
  EXPECT_EQ(guest_->active_maps(a[0]), 0u);
  ub.transient.reset();
  EXPECT_EQ(live(), 0u);
}

TEST_F(BlkPersistentGrants, IdleEntriesArePurgedAfterTheTimeout) {
  PersistentGrants pg(*gt_, kGuest, opts(32));
  const auto a = grant(5), b = grant(5);
  Use ua = acquire(pg, a);
  Use ub = acquire(pg, b);
  const auto t0 = PersistentGrants::Clock::now();
  pg.release(ua.handles, t0);
  pg.release(ub.handles, t0 + std::chrono::seconds(30));
  EXPECT_EQ(pg.purge(t0 + std::chrono::seconds(59)), 0u);
  EXPECT_EQ(pg.purge(t0 + std::chrono::seconds(60)), 5u);
  EXPECT_EQ(live(), 5u);
  EXPECT_EQ(pg.purge(t0 + std::chrono::seconds(95)), 5u);
  EXPECT_EQ(live(), 0u);
  EXPECT_EQ(pg.stats().live_entries.get(), 0u);
}

TEST_F(BlkPersistentGrants, AFailedMapLeavesNothing) {
  PersistentGrants pg(*gt_, kGuest, opts(32));
  const auto good = grant(4);
  const auto ro = grant(1, /*readonly=*/true);
  Use warm = acquire(pg, {good[0], good[1]});
  pg.release(warm.handles);
  const uint64_t live0 = live();
  // A read-only grant cannot be mapped writable, as persistent grants are.
  Status st;
  Use u = acquire(pg, {good[0], good[2], ro[0], good[3]}, &st);
  EXPECT_FALSE(st.has_value());
  EXPECT_EQ(st.error(), EINVAL);
  EXPECT_EQ(live(), live0);
  EXPECT_FALSE(pg.contains(good[2]));
  EXPECT_FALSE(pg.contains(ro[0]));
  EXPECT_EQ(pg.live_entries(), 2u);
  // The hit taken during the failed call was given back: all idle.
  expect_cleared(pg);
  // A ref the guest never granted.
  Use u2 = acquire(pg, {good[1], 999999}, &st);
  EXPECT_FALSE(st.has_value());
  EXPECT_EQ(pg.live_entries(), 0u);
  EXPECT_EQ(live(), 0u);
}

TEST_F(BlkPersistentGrants, DestructionUnmapsEverything) {
  {
    PersistentGrants pg(*gt_, kGuest, opts(32));
    Use u = acquire(pg, grant(10));
    pg.release(u.handles);
    EXPECT_EQ(live(), 10u);
  }
  EXPECT_EQ(live(), 0u);
}

TEST_F(BlkPersistentGrants, RandomUseNeverExceedsTheBoundNorLeaks) {
  constexpr uint32_t kMax = 24;
  PersistentGrants pg(*gt_, kGuest, opts(kMax));
  const auto pool = grant(60);
  std::mt19937 rng(7);
  std::vector<Use> held;
  for (int step = 0; step < 400; ++step) {
    if (held.size() < 4 && rng() % 3 != 0) {
      std::vector<GrantRef> refs(1 + rng() % 11);
      for (auto& r : refs) r = pool[rng() % (rng() % 2 ? 16 : pool.size())];  // a hot set and the rest
      Use u = acquire(pg, refs);
      for (size_t i = 0; i < refs.size(); ++i) {
        // The page is the guest's page of that grant.
        u.pages[i][0] = std::byte(step & 0xff);
        ASSERT_EQ(guest_->page(pfn_of_[refs[i]])[0], std::byte(step & 0xff));
      }
      held.push_back(std::move(u));
    } else if (!held.empty()) {
      const size_t k = rng() % held.size();
      pg.release(held[k].handles);
      held.erase(held.begin() + static_cast<long>(k));
    }
    ASSERT_LE(pg.live_pages(), kMax);
    uint64_t transient = 0;
    for (const Use& u : held) transient += u.transient.pages();
    ASSERT_EQ(live(), pg.live_pages() + transient);
    if (step % 50 == 0) pg.purge(PersistentGrants::Clock::now() + std::chrono::hours(1));
  }
  for (Use& u : held) pg.release(u.handles);
  held.clear();
  expect_cleared(pg);
  EXPECT_GT(pg.stats().hits.get(), 0u);
  EXPECT_GT(pg.stats().evictions.get(), 0u);
}

}  // namespace
}  // namespace xenpath
