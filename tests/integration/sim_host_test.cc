// The simulated host's hypervisor half: grant tables with Xen's permission
// checks and status codes, grant copy, event channels, and a grant-mapped
// ring under a hostile frontend.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <vector>

#include "common/ring.h"
#include "common/ring_types.h"
#include "common/xen/ring_protocol.h"
#include "sim/front_ring.h"
#include "sim/sim_host.h"
#include "tests/fixtures/sim_guest.h"

namespace xenpath::sim {
namespace {

constexpr DomId kGuest = 5;
constexpr DomId kOther = 6;

class SimHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto h = SimHost::create({});
    ASSERT_TRUE(h.has_value()) << error_string(h.error());
    host_ = std::move(*h);
    ASSERT_NO_FATAL_FAILURE(test::open_guest_and_grant_table(*host_, kGuest, 1024, guest_, gnt_));
    ASSERT_TRUE(host_->create_domain(kOther, 64, "other").has_value());
  }

  GrantRef grant_page(uint8_t fill, bool readonly, DomId to = kDom0, uint32_t* pfn_out = nullptr) {
    return test::grant_filled_page(*guest_, fill, readonly, to, pfn_out);
  }

  std::unique_ptr<SimHost> host_;
  SimDomain* guest_ = nullptr;
  std::unique_ptr<GrantTable> gnt_;
};

TEST_F(SimHostTest, ReadOnlyGrantMapsReadableAndWritesFault) {
  const GrantRef ref = grant_page(0xAB, /*readonly=*/true);
  auto m = gnt_->map(kGuest, std::span(&ref, 1), /*writable=*/false);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(static_cast<uint8_t>(m->page(0)[100]), 0xAB);
  auto* target = reinterpret_cast<volatile uint8_t*>(m->page(0));
  const pid_t pid = fork();
  if (pid == 0) {
    struct sigaction sa {};
    sa.sa_handler = [](int) { _exit(42); };
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    target[0] = 1;  // must fault: the page is mapped PROT_READ
    _exit(0);
  }
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  EXPECT_FALSE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "write through a read-only grant succeeded";
  EXPECT_EQ(static_cast<uint8_t>(m->page(0)[0]), 0xAB);
}

TEST_F(SimHostTest, WritableGrantSharesMemoryBothWays) {
  uint32_t pfn = 0;
  const GrantRef ref = grant_page(0, false, kDom0, &pfn);
  auto m = gnt_->map(kGuest, std::span(&ref, 1), true);
  ASSERT_TRUE(m.has_value());
  std::memcpy(m->page(0), "backend", 8);
  EXPECT_EQ(std::memcmp(guest_->page(pfn), "backend", 8), 0);
  std::memcpy(guest_->page(pfn) + 64, "guest", 6);
  EXPECT_EQ(std::memcmp(m->page(0) + 64, "guest", 6), 0);
}

TEST_F(SimHostTest, BatchIsOneCallAndOneContiguousMapping) {
  std::vector<GrantRef> refs;
  for (uint8_t i = 0; i < 8; ++i) refs.push_back(grant_page(i, false));
  auto& c = host_->counters();
  const auto calls = c.map_calls.load(), pages = c.map_pages.load();
  {
    auto m = gnt_->map(kGuest, refs, true);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->pages(), 8u);
    for (uint8_t i = 0; i < 8; ++i) EXPECT_EQ(static_cast<uint8_t>(m->page(i)[kPageSize - 1]), i);
    EXPECT_EQ(c.map_calls.load(), calls + 1);
    EXPECT_EQ(c.map_pages.load(), pages + 8);
    EXPECT_EQ(c.mapped_pages_live.load(), 8u);
    EXPECT_EQ(guest_->active_maps(refs[3]), 1u);
  }
  EXPECT_EQ(c.mapped_pages_live.load(), 0u);  // RAII unmapped
  EXPECT_EQ(guest_->active_maps(refs[3]), 0u);
}

TEST_F(SimHostTest, MapFailuresCarryXensStatusCodesAndMapNothing) {
  const GrantRef good = grant_page(1, false);
  const GrantRef ro = grant_page(2, true);
  const GrantRef not_ours = grant_page(3, false, kOther);
  uint32_t pfn = 0;
  const GrantRef revoked = grant_page(4, false, kDom0, &pfn);
  ASSERT_TRUE(guest_->end_access(revoked).has_value());

  struct Case {
    const char* what;
    DomId dom;
    GrantRef ref;
    bool writable;
    int16_t want;
  } cases[] = {
      {"ref beyond the table", kGuest, 10'000'000, false, GNTST_bad_gntref},
      {"granted to another domain", kGuest, not_ours, false, GNTST_general_error},
      {"revoked", kGuest, revoked, false, GNTST_general_error},
      {"write map of a read-only grant", kGuest, ro, true, GNTST_general_error},
      {"unknown domain", 77, good, false, GNTST_bad_domain},
      {"wrong domid (the ref exists in the other guest's table only)", kOther, good, false, GNTST_general_error},
  };
  for (const auto& k : cases) {
    const GrantRef refs[2] = {good, k.ref};
    int16_t status[2] = {99, 99};
    auto m = gnt_->map(k.dom, refs, k.writable, status);
    ASSERT_FALSE(m.has_value()) << k.what;
    EXPECT_EQ(m.error(), EINVAL) << k.what;
    EXPECT_EQ(status[1], k.want) << k.what;
    EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u) << k.what;
    EXPECT_EQ(guest_->active_maps(good), 0u) << k.what;
  }
  // Read-only map of a read-only grant is fine.
  EXPECT_TRUE(gnt_->map(kGuest, std::span(&ro, 1), false).has_value());
}

TEST_F(SimHostTest, RevokingAMappedGrantIsRefusedUntilUnmapped) {
  const GrantRef ref = grant_page(9, false);
  auto m = gnt_->map(kGuest, std::span(&ref, 1), true);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(guest_->end_access(ref).error(), EBUSY);
  m->reset();
  EXPECT_TRUE(guest_->end_access(ref).has_value());
}

TEST_F(SimHostTest, MappingOutlivesTheDomain) {
  const GrantRef ref = grant_page(0x5A, false);
  auto m = gnt_->map(kGuest, std::span(&ref, 1), true);
  ASSERT_TRUE(m.has_value());
  ASSERT_TRUE(host_->destroy_domain(kGuest).has_value());
  EXPECT_EQ(host_->domain(kGuest), nullptr);
  // Still readable and writable (zombie memory, as on Xen)...
  EXPECT_EQ(static_cast<uint8_t>(m->page(0)[7]), 0x5A);
  m->page(0)[7] = std::byte{1};
  // ...but no new mapping of the dead domain's grants.
  int16_t st = 0;
  EXPECT_FALSE(gnt_->map(kGuest, std::span(&ref, 1), false, std::span(&st, 1)).has_value());
  EXPECT_EQ(st, GNTST_bad_domain);
  m->reset();
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u);
}

TEST_F(SimHostTest, MappingLimit) {
  std::vector<GrantRef> refs;
  for (int i = 0; i < 4; ++i) refs.push_back(grant_page(0, false));
  ASSERT_TRUE(gnt_->set_max_grants(3).has_value());
  EXPECT_EQ(gnt_->map(kGuest, refs, true).error(), ENOSPC);
  auto m = gnt_->map(kGuest, std::span(refs.data(), 3), true);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(gnt_->map(kGuest, std::span(refs.data() + 3, 1), true).error(), ENOSPC);
}

TEST_F(SimHostTest, GrantCopyBothWaysWithPerSegmentStatus) {
  uint32_t src_pfn = 0, dst_pfn = 0;
  const GrantRef src = grant_page(0x11, true, kDom0, &src_pfn);
  const GrantRef dst = grant_page(0x00, false, kDom0, &dst_pfn);
  const GrantRef ro = grant_page(0x22, true);
  std::vector<uint8_t> local(6000, 0xEE);

  GrantCopySegment segs[4]{};
  // guest -> local, 100 bytes at offset 10
  segs[0].flags = kCopySourceGref;
  segs[0].source.foreign = {src, 10, kGuest};
  segs[0].dest.virt = local.data();
  segs[0].len = 100;
  // local -> guest, crossing a page boundary on the local side is allowed
  segs[1].flags = kCopyDestGref;
  segs[1].source.virt = local.data() + 4090;
  segs[1].dest.foreign = {dst, 0, kGuest};
  segs[1].len = 200;
  // local -> read-only grant: refused
  segs[2].flags = kCopyDestGref;
  segs[2].source.virt = local.data();
  segs[2].dest.foreign = {ro, 0, kGuest};
  segs[2].len = 8;
  // bad ref
  segs[3].flags = kCopySourceGref;
  segs[3].source.foreign = {9'999'999, 0, kGuest};
  segs[3].dest.virt = local.data();
  segs[3].len = 8;
  const auto calls = host_->counters().copy_calls.load();
  auto n = gnt_->copy(segs);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 2u);
  EXPECT_EQ(host_->counters().copy_calls.load(), calls + 1);
  EXPECT_EQ(segs[0].status, GNTST_okay);
  EXPECT_EQ(segs[1].status, GNTST_okay);
  EXPECT_EQ(segs[2].status, GNTST_general_error);
  EXPECT_EQ(segs[3].status, GNTST_bad_gntref);
  EXPECT_EQ(local[0], 0x11);
  EXPECT_EQ(local[99], 0x11);
  EXPECT_EQ(local[100], 0xEE);
  EXPECT_EQ(static_cast<uint8_t>(guest_->page(dst_pfn)[0]), 0xEE);
  EXPECT_EQ(static_cast<uint8_t>(guest_->page(dst_pfn)[199]), 0xEE);
  EXPECT_EQ(static_cast<uint8_t>(guest_->page(dst_pfn)[200]), 0x00);  // exactly len bytes
}

TEST_F(SimHostTest, GrantCopyRejectsWhatGntdevRejects) {
  const GrantRef ref = grant_page(0, false);
  uint8_t buf[16];
  GrantCopySegment s{};
  s.flags = kCopySourceGref;
  s.source.foreign = {ref, 4090, kGuest};  // crosses the granted page
  s.dest.virt = buf;
  s.len = 16;
  EXPECT_EQ(gnt_->copy(std::span(&s, 1)).error(), EINVAL);
  s.flags = 0;  // local -> local
  s.source.virt = buf;
  EXPECT_EQ(gnt_->copy(std::span(&s, 1)).error(), EINVAL);
}

TEST_F(SimHostTest, EventChannelsDeliverMaskAndLatch) {
  auto fe = host_->open_event_channel(kGuest);
  auto be = host_->open_event_channel(kDom0);
  ASSERT_TRUE(fe.has_value() && be.has_value());
  auto fe_port = (*fe)->bind_unbound(kDom0);
  ASSERT_TRUE(fe_port.has_value());
  // Only the domain the port was offered to may bind it.
  auto intruder = host_->open_event_channel(kOther);
  EXPECT_EQ((*intruder)->bind_interdomain(kGuest, *fe_port).error(), EINVAL);
  auto be_port = (*be)->bind_interdomain(kGuest, *fe_port);
  ASSERT_TRUE(be_port.has_value());
  // Xen sets the new port pending at bind time.
  auto p = (*be)->pending();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(*p, *be_port);
  EXPECT_EQ((*be)->pending().error(), EAGAIN);
  ASSERT_TRUE((*be)->unmask(*be_port).has_value());

  const auto sent = host_->counters().notify_calls.load();
  ASSERT_TRUE((*fe)->notify(*fe_port).has_value());
  pollfd pfd{(*be)->fd(), POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, 1000), 1);
  EXPECT_EQ(*(*be)->pending(), *be_port);
  // Masked until unmask: further events are latched, not queued.
  ASSERT_TRUE((*fe)->notify(*fe_port).has_value());
  ASSERT_TRUE((*fe)->notify(*fe_port).has_value());
  EXPECT_EQ((*be)->pending().error(), EAGAIN);
  EXPECT_EQ(poll(&pfd, 1, 0), 0);
  ASSERT_TRUE((*be)->unmask(*be_port).has_value());
  EXPECT_EQ(*(*be)->pending(), *be_port);  // the latched event, once
  EXPECT_EQ((*be)->pending().error(), EAGAIN);
  EXPECT_EQ(host_->counters().notify_calls.load(), sent + 3);

  // The other direction, from another thread.
  std::thread t([&] { ASSERT_TRUE((*be)->notify(*be_port).has_value()); });
  t.join();
  pollfd ffd{(*fe)->fd(), POLLIN, 0};
  ASSERT_EQ(poll(&ffd, 1, 1000), 1);
  EXPECT_EQ(*(*fe)->pending(), *fe_port);

  // After the guest dies, notifications to it are dropped silently.
  ASSERT_TRUE(host_->destroy_domain(kGuest).has_value());
  EXPECT_TRUE((*be)->notify(*be_port).has_value());
  EXPECT_TRUE((*be)->unbind(*be_port).has_value());
  EXPECT_EQ((*be)->notify(*be_port).error(), ENOTCONN);  // no longer ours
}

// A ring the guest grants and the backend maps, attacked by the guest.
TEST_F(SimHostTest, HostileFrontendOnAGrantMappedRing) {
  auto pfn = guest_->alloc_pages(1);
  ASSERT_TRUE(pfn.has_value());
  SimFrontRing<BlkifRing> front;
  ASSERT_TRUE(front.init(guest_->page(*pfn), kPageSize).has_value());
  auto ref = guest_->grant_access(kDom0, *pfn, false);
  ASSERT_TRUE(ref.has_value());
  auto m = gnt_->map(kGuest, std::span(&*ref, 1), true);
  ASSERT_TRUE(m.has_value());
  BackRing<BlkifRing> back;
  ASSERT_TRUE(back.attach(m->data(), kPageSize).has_value());

  blkif_request req{};
  req.operation = BLKIF_OP_READ;
  req.nr_segments = 1;
  req.id = 1;
  ASSERT_TRUE(front.push(req));
  front.flush();
  blkif_request got[32];
  ASSERT_EQ(*back.consume(got), 1u);
  // Rewritten after the backend's copy: the copy is what counts.
  req.nr_segments = 200;
  front.rewrite_request(0, req);
  EXPECT_EQ(got[0].nr_segments, 1);
  // Then a producer index from nowhere: the queue halts.
  front.set_req_prod_raw(0x80000000u);
  EXPECT_EQ(back.consume(got).error(), EPROTO);
  EXPECT_TRUE(back.halted());
}

}  // namespace
}  // namespace xenpath::sim
