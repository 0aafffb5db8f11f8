// BackRing against SimFrontRing over one shared buffer, with the real blkif
// and netif layouts.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <vector>

#include "common/ring.h"
#include "common/ring_types.h"
#include "sim/front_ring.h"
#include "tests/fixtures/aligned_pages.h"

namespace xenpath {
namespace {

using test::AlignedPages;

template <typename Types>
struct Pair {
  explicit Pair(unsigned order = 0, RING_IDX start = 0) : mem(kPageSize << order) {
    EXPECT_TRUE(start == 0 ? front.init(mem.p, mem.size).has_value()
                           : front.init_at(mem.p, mem.size, start).has_value());
    EXPECT_TRUE(back.attach(mem.p, mem.size, &stats).has_value());
  }
  AlignedPages mem;
  sim::SimFrontRing<Types> front;
  BackRing<Types> back;
  RingQueueStats stats;
};

blkif_request read_req(uint64_t id, blkif_sector_t sector) {
  blkif_request r{};
  r.operation = BLKIF_OP_READ;
  r.nr_segments = 1;
  r.id = id;
  r.sector_number = sector;
  r.seg[0].gref = 100 + static_cast<grant_ref_t>(id);
  r.seg[0].first_sect = 0;
  r.seg[0].last_sect = 7;
  return r;
}

// blkif responses have padding: they are built in place (XSA-216).
bool respond(BackRing<BlkifRing>& back, uint64_t id = 0, uint8_t op = BLKIF_OP_READ) {
  return back.emplace_response([&](blkif_response& r) {
    r.id = id;
    r.operation = op;
    r.status = BLKIF_RSP_OKAY;
  });
}

TEST(BackRing, RequestsFlowAndResponsesReturn) {
  Pair<BlkifRing> r;
  for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(r.front.push(read_req(i, i * 8)));
  EXPECT_TRUE(r.front.flush());  // the backend waits for the first request
  blkif_request got[32];
  auto n = r.back.consume(got);
  ASSERT_TRUE(n.has_value());
  ASSERT_EQ(*n, 5u);
  for (uint64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(got[i].id, i);
    EXPECT_EQ(got[i].sector_number, i * 8);
    EXPECT_TRUE(respond(r.back, got[i].id, got[i].operation));
  }
  EXPECT_FALSE(respond(r.back));  // nothing left to answer
  EXPECT_TRUE(r.back.flush());
  blkif_response rsps[8];
  ASSERT_EQ(r.front.take_responses(rsps), 5u);
  EXPECT_EQ(rsps[4].id, 4u);
  EXPECT_EQ(r.stats.requests.get(), 5u);
  EXPECT_EQ(r.stats.responses.get(), 5u);
  EXPECT_EQ(r.stats.batches.get(), 1u);
}

TEST(BackRing, ConsumeIsBoundedByTheOutputSpan) {
  Pair<BlkifRing> r;
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(r.front.push(read_req(i, 0)));
  r.front.flush();
  std::vector<blkif_request> out(7);
  EXPECT_EQ(*r.back.consume(out), 7u);
  EXPECT_EQ(r.back.unconsumed(), 13u);
  EXPECT_EQ(*r.back.consume(out), 7u);
  EXPECT_EQ(*r.back.consume(out), 6u);
  EXPECT_EQ(*r.back.consume(out), 0u);
}

TEST(BackRing, RingSizesFollowThePageOrder) {
  // Entries per ring as the ring macros compute them (power of two that
  // fits): blkif 112-byte slots, netif TX 12-byte, RX 8-byte.
  const unsigned blk[] = {32, 64, 128, 256, 512};
  for (unsigned order = 0; order <= 4; ++order) {
    Pair<BlkifRing> r(order);
    EXPECT_EQ(r.back.size(), blk[order]) << "order " << order;
    EXPECT_EQ(r.front.size(), blk[order]);
  }
  Pair<NetifTxRing> tx;
  EXPECT_EQ(tx.back.size(), 256u);
  Pair<NetifRxRing> rx;
  EXPECT_EQ(rx.back.size(), 256u);
  BackRing<BlkifRing> bad;
  AlignedPages mem(3 * kPageSize);
  EXPECT_EQ(bad.attach(mem.p, 3 * kPageSize).error(), EINVAL);   // not a power of two
  EXPECT_EQ(bad.attach(mem.p, kPageSize << 5).error(), EINVAL);  // beyond order 4
}

TEST(BackRing, ProducerOverflowHaltsTheRing) {
  Pair<BlkifRing> r;
  ASSERT_TRUE(r.front.push(read_req(1, 0)));
  r.front.flush();
  // A frontend claiming more requests than the ring can hold.
  r.front.set_req_prod_raw(r.front.req_prod_pvt() + 1000);
  blkif_request out[64];
  auto n = r.back.consume(out);
  ASSERT_FALSE(n.has_value());
  EXPECT_EQ(n.error(), EPROTO);
  EXPECT_TRUE(r.back.halted());
  EXPECT_EQ(r.stats.halted.get(), 1u);
  EXPECT_EQ(r.stats.requests.get(), 0u);
  // Even a sane producer index afterwards does not resurrect it.
  r.front.set_req_prod_raw(1);
  EXPECT_EQ(r.back.consume(out).error(), EPROTO);
  EXPECT_FALSE(r.back.final_check());
  EXPECT_LE(r.back.unconsumed(), r.back.size());
}

TEST(BackRing, ProducerIndexMovingBackwardsHaltsTheRing) {
  Pair<BlkifRing> r;
  for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(r.front.push(read_req(i, 0)));
  r.front.flush();
  blkif_request out[64];
  ASSERT_EQ(*r.back.consume(out), 6u);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(respond(r.back));
  r.back.flush();
  // Behind req_cons (6) but ahead of rsp_prod_pvt (3): no overflow by the
  // ring macros, yet it would replay consumed slots.
  r.front.set_req_prod_raw(4);
  EXPECT_EQ(r.back.consume(out).error(), EPROTO);
  EXPECT_TRUE(r.back.halted());
}

TEST(BackRing, AttachRefusesInconsistentIndexes) {
  AlignedPages mem(kPageSize);
  sim::SimFrontRing<BlkifRing> front;
  ASSERT_TRUE(front.init(mem.p, mem.size).has_value());
  front.set_req_prod_raw(33);  // 33 outstanding on a 32-entry ring
  BackRing<BlkifRing> back;
  EXPECT_EQ(back.attach(mem.p, mem.size).error(), EPROTO);
}

TEST(BackRing, RewrittenRequestDoesNotChangeThePrivateCopy) {
  Pair<BlkifRing> r;
  const blkif_request orig = read_req(7, 64);
  ASSERT_TRUE(r.front.push(orig));
  r.front.flush();
  blkif_request out[1];
  ASSERT_EQ(*r.back.consume(out), 1u);
  // The guest rewrites the slot after the backend read it (a TOCTOU attack:
  // valid when checked, hostile when used).
  blkif_request evil = orig;
  evil.nr_segments = 255;
  evil.sector_number = ~0ull;
  evil.seg[0].last_sect = 200;
  r.front.rewrite_request(0, evil);
  EXPECT_EQ(out[0].nr_segments, 1);
  EXPECT_EQ(out[0].sector_number, 64u);
  EXPECT_EQ(out[0].seg[0].last_sect, 7);
  EXPECT_EQ(std::memcmp(&out[0], &orig, sizeof(orig)), 0);
}

TEST(BackRing, NotifiesOnlyWhenTheFrontendAsked) {
  Pair<BlkifRing> r;
  blkif_request in[8];
  blkif_response rsps[8];
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(r.front.push(read_req(i, 0)));
  r.front.flush();
  ASSERT_EQ(*r.back.consume(in), 2u);
  ASSERT_TRUE(respond(r.back));
  EXPECT_TRUE(r.back.flush());  // rsp_event starts at 1: first response notifies
  // The frontend has not re-armed (it is still busy): no event needed.
  ASSERT_TRUE(respond(r.back));
  EXPECT_FALSE(r.back.flush());
  EXPECT_EQ(r.stats.notifications_sent.get(), 1u);
  EXPECT_EQ(r.stats.notifications_suppressed.get(), 1u);
  // The frontend drains and re-arms; the next response notifies again.
  EXPECT_EQ(r.front.take_responses(rsps), 2u);
  EXPECT_FALSE(r.front.final_check_responses());
  ASSERT_TRUE(r.front.push(read_req(3, 0)));
  r.front.flush();
  ASSERT_EQ(*r.back.consume(in), 1u);
  ASSERT_TRUE(respond(r.back));
  EXPECT_TRUE(r.back.flush());
  // Nothing new to publish: no notification either.
  EXPECT_FALSE(r.back.flush());
}

TEST(BackRing, FinalCheckRearmsRequestEvents) {
  Pair<BlkifRing> r;
  blkif_request in[8];
  ASSERT_TRUE(r.front.push(read_req(1, 0)));
  EXPECT_TRUE(r.front.flush());
  ASSERT_EQ(*r.back.consume(in), 1u);
  // Without re-arming, further requests need no event (the backend is
  // polling): the frontend does not notify.
  ASSERT_TRUE(r.front.push(read_req(2, 0)));
  EXPECT_FALSE(r.front.flush());
  // The final check sees the late request instead of sleeping on it.
  EXPECT_TRUE(r.back.final_check());
  ASSERT_EQ(*r.back.consume(in), 1u);
  // Now the ring is empty: re-armed, and the next request notifies.
  EXPECT_FALSE(r.back.final_check());
  ASSERT_TRUE(r.front.push(read_req(3, 0)));
  EXPECT_TRUE(r.front.flush());
}

TEST(BackRing, IndexesWrapAround) {
  Pair<BlkifRing> r(0, 0xFFFFFFF0u);
  blkif_request in[32];
  blkif_response rsps[32];
  uint64_t next = 0, seen = 0;
  for (int round = 0; round < 4; ++round) {  // crosses 2^32
    for (int i = 0; i < 12; ++i) ASSERT_TRUE(r.front.push(read_req(next++, 0)));
    r.front.flush();
    auto n = r.back.consume(in);
    ASSERT_TRUE(n.has_value());
    ASSERT_EQ(*n, 12u);
    for (unsigned i = 0; i < *n; ++i) {
      EXPECT_EQ(in[i].id, seen++);
      ASSERT_TRUE(respond(r.back, in[i].id));
    }
    r.back.flush();
    ASSERT_EQ(r.front.take_responses(rsps), 12u);
  }
  EXPECT_FALSE(r.back.halted());
}

TEST(BackRing, ResponsesCarryNoBackendBytesInTheirPadding) {
  Pair<BlkifRing> r;
  ASSERT_TRUE(r.front.push(read_req(1, 0)));
  r.front.flush();
  blkif_request in[1];
  ASSERT_EQ(*r.back.consume(in), 1u);
  // The slot still holds the request; the response must overwrite every
  // byte of its own size, padding included.
  auto* slot = reinterpret_cast<unsigned char*>(&r.front.shared()->ring[0].rsp);
  std::memset(slot, 0xAA, sizeof(blkif_response));
  ASSERT_TRUE(respond(r.back, 0x1122334455667788ull, BLKIF_OP_WRITE));
  blkif_response want;
  std::memset(&want, 0, sizeof(want));
  want.id = 0x1122334455667788ull;
  want.operation = BLKIF_OP_WRITE;
  want.status = BLKIF_RSP_OKAY;
  EXPECT_EQ(std::memcmp(slot, &want, sizeof(want)), 0);
  static_assert(!std::has_unique_object_representations_v<blkif_response>, "blkif_response has padding");
  static_assert(std::has_unique_object_representations_v<netif_rx_response>);
  static_assert(std::has_unique_object_representations_v<netif_tx_response>);
}

TEST(BackRing, NetifRxResponsesReuseTheRequestSlots) {
  Pair<NetifRxRing> r;
  for (uint16_t i = 0; i < 4; ++i) {
    netif_rx_request req{};
    req.id = i;
    req.gref = 500 + i;
    ASSERT_TRUE(r.front.push(req));
  }
  r.front.flush();
  netif_rx_request in[4];
  ASSERT_EQ(*r.back.consume(in), 4u);
  for (const auto& q : in) {
    netif_rx_response rsp{};
    rsp.id = q.id;
    rsp.status = 60;
    ASSERT_TRUE(r.back.push_response(rsp));
  }
  r.back.flush();
  // Slot i now holds the response to the request that was in slot i.
  auto* sring = r.front.shared();
  for (uint16_t i = 0; i < 4; ++i) EXPECT_EQ(sring->ring[i].rsp.id, i);
}

}  // namespace
}  // namespace xenpath
