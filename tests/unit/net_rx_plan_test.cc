// Guest RX planning: coalesced grant copies, extras, flags, slot accounting,
// and (over the simulated hypervisor) that the guest pages end up holding
// the packet.
#include "netback/net_protocol_rx.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "sim/sim_hypervisor.h"

namespace xenpath {
namespace {

constexpr DomId kGuest = 9;

struct Burst {
  explicit Burst(size_t copies = 512, size_t rsps = 256) : segs(copies), owner(copies), rsps(rsps) {}
  std::vector<GrantCopySegment> segs;
  std::vector<uint16_t> owner;
  std::vector<netif_rx_response> rsps;
  RxBatch batch{segs, owner, rsps};
  std::vector<netif_rx_request> reqs;
  // The guest posts `n` buffers (ids from 100, grefs from 500) for one burst.
  void post(size_t n);
};

std::vector<netif_rx_request> posted(size_t n, uint16_t first_id = 100) {
  std::vector<netif_rx_request> r(n);
  for (size_t i = 0; i < n; ++i) {
    r[i].id = static_cast<uint16_t>(first_id + i);
    r[i].gref = static_cast<GrantRef>(500 + i);
  }
  return r;
}

void Burst::post(size_t n) {
  reqs = posted(n);
  batch.reset(reqs, kGuest);
}

// A packet of `len` bytes cut into segments of the given sizes (cycled).
struct Pkt {
  Pkt(size_t len, std::vector<size_t> cuts) : bytes(len) {
    std::iota(bytes.begin(), bytes.end(), 0);
    size_t off = 0;
    for (size_t i = 0; off < len; ++i) {
      const size_t n = std::min(cuts[i % cuts.size()], len - off);
      segs.push_back({reinterpret_cast<const std::byte*>(bytes.data()) + off, static_cast<uint32_t>(n)});
      off += n;
    }
    pkt.segs = segs;
  }
  std::vector<uint8_t> bytes;
  std::vector<PacketSegment> segs;
  RxPacket pkt;
};

netif_extra_info extra_at(const netif_rx_response& r) {
  netif_extra_info e;
  std::memcpy(&e, &r, sizeof(e));
  return e;
}

TEST(NetRxPlan, SmallPacketOneSlotOneCopy) {
  Burst b;
  b.post(4);
  Pkt p(60, {60});
  ASSERT_EQ(b.batch.add(p.pkt), RxVerdict::kPlanned);
  ASSERT_EQ(b.batch.copies().size(), 1u);
  const auto& c = b.batch.copies()[0];
  EXPECT_EQ(c.flags, kCopyDestGref);
  EXPECT_EQ(c.dest.foreign.ref, 500u);
  EXPECT_EQ(c.dest.foreign.offset, 0);
  EXPECT_EQ(c.dest.foreign.domid, kGuest);
  EXPECT_EQ(c.len, 60);
  EXPECT_EQ(c.source.virt, p.bytes.data());
  ASSERT_EQ(b.batch.responses().size(), 1u);
  const auto& r = b.batch.responses()[0];
  EXPECT_EQ(r.id, 100);
  EXPECT_EQ(r.status, 60);
  EXPECT_EQ(r.offset, 0);
  EXPECT_EQ(r.flags, 0);
  EXPECT_EQ(b.batch.requests_used(), 1u);
}

TEST(NetRxPlan, CoalescesIntoFullPagesNeverCrossingOne) {
  Burst b;
  b.post(32);
  Pkt p(65535, {1, 3001, 77, 4096, 129});  // odd cuts everywhere
  ASSERT_EQ(b.batch.add(p.pkt), RxVerdict::kPlanned);
  const auto rs = b.batch.responses();
  ASSERT_EQ(rs.size(), 16u);  // ceil(65535 / 4096)
  for (size_t i = 0; i < rs.size(); ++i) {
    EXPECT_EQ(rs[i].id, 100 + i);
    const bool last = i + 1 == rs.size();
    EXPECT_EQ(rs[i].status, last ? 65535 - 15 * 4096 : 4096) << i;
    EXPECT_EQ((rs[i].flags & NETRXF_more_data) != 0, !last) << i;
  }
  // Copies walk the packet in order and fill each slot from offset 0.
  size_t src = 0;
  std::vector<uint32_t> filled(rs.size(), 0);
  for (size_t i = 0; i < b.batch.copies().size(); ++i) {
    const auto& c = b.batch.copies()[i];
    EXPECT_EQ(static_cast<const uint8_t*>(c.source.virt), p.bytes.data() + src) << i;
    const size_t slot = c.dest.foreign.ref - 500;
    EXPECT_EQ(b.owner[i], slot);
    EXPECT_EQ(c.dest.foreign.offset, filled[slot]) << i;
    EXPECT_LE(c.dest.foreign.offset + c.len, 4096) << i;
    filled[slot] += c.len;
    src += c.len;
  }
  EXPECT_EQ(src, 65535u);
  EXPECT_EQ(b.batch.bytes(), 65535u);
}

TEST(NetRxPlan, ExtrasFollowTheFirstDataSlot) {
  Burst b;
  b.post(8);
  Pkt p(9000, {9000});
  p.pkt.csum_blank = true;
  p.pkt.gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
  p.pkt.gso_size = 1448;
  p.pkt.has_hash = true;
  p.pkt.hash_type = _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
  p.pkt.hash_value = 0x51ccc178;
  ASSERT_EQ(b.batch.add(p.pkt), RxVerdict::kPlanned);
  const auto rs = b.batch.responses();
  ASSERT_EQ(rs.size(), 5u);  // data, gso, hash, data, data
  EXPECT_EQ(rs[0].flags, NETRXF_csum_blank | NETRXF_data_validated | NETRXF_extra_info | NETRXF_more_data);
  EXPECT_EQ(rs[0].status, 4096);
  const auto g = extra_at(rs[1]);
  EXPECT_EQ(g.type, XEN_NETIF_EXTRA_TYPE_GSO);
  EXPECT_EQ(g.flags, XEN_NETIF_EXTRA_FLAG_MORE);
  EXPECT_EQ(g.u.gso.type, XEN_NETIF_GSO_TYPE_TCPV4);
  EXPECT_EQ(g.u.gso.size, 1448);
  const auto h = extra_at(rs[2]);
  EXPECT_EQ(h.type, XEN_NETIF_EXTRA_TYPE_HASH);
  EXPECT_EQ(h.flags, 0);
  EXPECT_EQ(h.u.hash.algorithm, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ);
  uint32_t v;
  std::memcpy(&v, h.u.hash.value, 4);
  EXPECT_EQ(v, 0x51ccc178u);
  EXPECT_EQ(rs[3].id, 103);
  EXPECT_EQ(rs[3].flags, NETRXF_more_data) << "csum flags only on the first slot";
  EXPECT_EQ(rs[4].status, 9000 - 2 * 4096);
  EXPECT_EQ(rs[4].flags, 0);
  // No copy lands in an extra slot's page.
  for (const auto& c : b.batch.copies()) EXPECT_TRUE(c.dest.foreign.ref != 501 && c.dest.foreign.ref != 502);
}

// A coalesced (GRO) packet: the first frame's 54 header bytes + payload,
// then 43 payload-only segments; it fills whole pages (16 slots, not one
// per segment) plus its GSO extra.
TEST(NetRxPlan, CoalescedChainFillsWholePages) {
  Burst b;
  b.post(32);
  std::vector<size_t> cuts = {54 + 1448};
  for (int i = 0; i < 43; ++i) cuts.push_back(1448);
  const size_t len = 54 + 44 * 1448;
  Pkt p(len, cuts);
  ASSERT_EQ(p.segs.size(), 44u);
  p.pkt.csum_blank = true;
  p.pkt.gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
  p.pkt.gso_size = 1448;
  ASSERT_EQ(b.batch.add(p.pkt), RxVerdict::kPlanned);
  const auto rs = b.batch.responses();
  ASSERT_EQ(rs.size(), 17u);  // ceil(63766 / 4096) data slots + the GSO extra
  EXPECT_EQ(extra_at(rs[1]).type, XEN_NETIF_EXTRA_TYPE_GSO);
  size_t total = 0;
  for (size_t i = 0; i < rs.size(); ++i) {
    if (i == 1) continue;
    const bool last = i + 1 == rs.size();
    EXPECT_EQ(rs[i].status, last ? static_cast<int>(len - 15 * 4096) : 4096) << i;
    total += static_cast<size_t>(rs[i].status);
  }
  EXPECT_EQ(total, len);
  // One copy per slot plus one per segment boundary inside a slot.
  EXPECT_LE(b.batch.copies().size(), 16u + 44u);
  size_t src = 0;
  for (const auto& c : b.batch.copies()) {
    EXPECT_EQ(static_cast<const uint8_t*>(c.source.virt), p.bytes.data() + src);
    src += c.len;
  }
  EXPECT_EQ(src, len);
}

TEST(NetRxPlan, ChecksumFlags) {
  Burst b;
  b.post(4);
  Pkt v(100, {100});
  v.pkt.data_validated = true;
  ASSERT_EQ(b.batch.add(v.pkt), RxVerdict::kPlanned);
  EXPECT_EQ(b.batch.responses()[0].flags, NETRXF_data_validated);
  Pkt plain(100, {100});
  ASSERT_EQ(b.batch.add(plain.pkt), RxVerdict::kPlanned);
  EXPECT_EQ(b.batch.responses()[1].flags, 0);
  EXPECT_EQ(b.batch.packets(), 2u);
}

TEST(NetRxPlan, WaitsForEnoughRequestsAndFlushesWhenFull) {
  Burst b(/*copies=*/4);
  b.post(3);
  Pkt big(3 * 4096 + 1, {4096});  // needs 4 slots
  EXPECT_EQ(b.batch.add(big.pkt), RxVerdict::kNoSlots);
  EXPECT_EQ(b.batch.requests_used(), 0u);
  EXPECT_TRUE(b.batch.copies().empty());
  Pkt two(5000, {1000});  // 2 slots, 5 source segments -> more copies than fit in 4
  EXPECT_EQ(b.batch.add(two.pkt), RxVerdict::kBatchFull);
  EXPECT_EQ(b.batch.requests_used(), 0u);
  Pkt one(100, {100});
  EXPECT_EQ(b.batch.add(one.pkt), RxVerdict::kPlanned);
  b.post(8);  // the next burst
  Pkt fits(4096, {4096});
  EXPECT_EQ(b.batch.add(fits.pkt), RxVerdict::kPlanned);
  EXPECT_EQ(rx_slots_needed(4096, false, false), 1u);
  EXPECT_EQ(rx_slots_needed(4097, true, true), 4u);
}

TEST(NetRxPlan, RefusesEmptyAndOversizedPackets) {
  Burst b;
  b.post(64);
  Pkt empty(0, {1});
  EXPECT_EQ(b.batch.add(empty.pkt), RxVerdict::kEmpty);
  Pkt huge(kMaxRxDataSlots * 4096 + 1, {4096});
  EXPECT_EQ(b.batch.add(huge.pkt), RxVerdict::kTooBig);
  Pkt max(kMaxRxDataSlots * 4096, {4096});
  EXPECT_EQ(b.batch.add(max.pkt), RxVerdict::kPlanned);
}

TEST(NetRxPlan, FailedCopiesMarkTheirSlot) {
  Burst b;
  b.post(4);
  Pkt p(6000, {6000});
  ASSERT_EQ(b.batch.add(p.pkt), RxVerdict::kPlanned);
  auto copies = b.batch.copies();
  ASSERT_EQ(copies.size(), 2u);
  copies[1].status = GNTST_bad_gntref;
  EXPECT_EQ(b.batch.apply_copy_status(), 1u);
  EXPECT_EQ(b.batch.responses()[0].status, 4096);
  EXPECT_EQ(b.batch.responses()[1].status, NETIF_RSP_ERROR) << "a netif status, not the grant table's";
}

TEST(NetRxPlan, GuestPagesReceiveThePacketThroughGrantCopy) {
  sim::SimHypervisor hv;
  auto d = hv.create_domain(kGuest, 64, "guest");
  ASSERT_TRUE(d) << error_string(d.error());
  sim::SimDomain* guest = *d;
  auto gt = hv.open_grant_table(kDom0);
  ASSERT_TRUE(gt);
  // The guest posts 6 pages (one read-only by mistake: its copy must fail).
  std::vector<netif_rx_request> reqs(6);
  std::vector<uint32_t> pfns;
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto pfn = guest->alloc_pages(1);
    ASSERT_TRUE(pfn);
    pfns.push_back(*pfn);
    auto ref = guest->grant_access(kDom0, *pfn, /*readonly=*/i == 5);
    ASSERT_TRUE(ref);
    reqs[i].id = static_cast<uint16_t>(i);
    reqs[i].gref = *ref;
  }
  Burst b;
  b.batch.reset(reqs, kGuest);
  Pkt a(10000, {999, 1, 3000});
  Pkt c(100, {60, 40});
  for (auto& x : c.bytes) x = static_cast<uint8_t>(~x);
  Pkt ro(50, {50});
  ASSERT_EQ(b.batch.add(a.pkt), RxVerdict::kPlanned);
  ASSERT_EQ(b.batch.add(c.pkt), RxVerdict::kPlanned);
  ASSERT_EQ(b.batch.add(ro.pkt), RxVerdict::kPlanned);
  const uint64_t calls = hv.counters().copy_calls.load();
  auto r = (*gt)->copy(b.batch.copies());
  ASSERT_TRUE(r) << error_string(r.error());
  EXPECT_EQ(hv.counters().copy_calls.load(), calls + 1) << "one grant-copy call per burst";
  EXPECT_EQ(b.batch.apply_copy_status(), 0u);
  // Packet a in slots 0..2, c in slot 3, ro in slot 4: the bytes the guest sees.
  const auto* g0 = reinterpret_cast<const uint8_t*>(guest->page(pfns[0]));
  EXPECT_EQ(std::memcmp(g0, a.bytes.data(), 4096), 0);
  const auto* g2 = reinterpret_cast<const uint8_t*>(guest->page(pfns[2]));
  EXPECT_EQ(std::memcmp(g2, a.bytes.data() + 8192, 10000 - 8192), 0);
  const auto* g3 = reinterpret_cast<const uint8_t*>(guest->page(pfns[3]));
  EXPECT_EQ(std::memcmp(g3, c.bytes.data(), 100), 0);
  EXPECT_EQ(b.batch.responses()[2].status, 10000 - 8192);
  EXPECT_EQ(b.batch.responses()[3].status, 100);
  EXPECT_EQ(b.batch.responses()[4].status, 50);
  EXPECT_EQ(b.batch.requests_used(), 5u);
  // A sixth packet would land in the read-only page: the copy fails and the
  // response says NETIF_RSP_ERROR.
  b.batch.reset({reqs.begin() + 5, reqs.end()}, kGuest);
  ASSERT_EQ(b.batch.add(ro.pkt), RxVerdict::kPlanned);
  ASSERT_TRUE((*gt)->copy(b.batch.copies()));
  EXPECT_EQ(b.batch.apply_copy_status(), 1u);
  EXPECT_EQ(b.batch.responses()[0].status, NETIF_RSP_ERROR);
}

}  // namespace
}  // namespace xenpath
