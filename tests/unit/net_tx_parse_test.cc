// Guest TX request parsing: Linux xen-netback's rules, slot by slot.
#include "netback/net_protocol_tx.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace xenpath {
namespace {

netif_tx_request slot(uint16_t id, uint16_t size, uint16_t flags = 0, uint16_t offset = 0, GrantRef gref = 0) {
  netif_tx_request r{};
  r.gref = gref != 0 ? gref : 1000u + id;
  r.offset = offset;
  r.flags = flags;
  r.id = id;
  r.size = size;
  return r;
}

netif_tx_request extra_slot(const netif_extra_info& e) {
  netif_tx_request r{};
  std::memset(&r, 0xee, sizeof(r));  // the padding is garbage in real rings
  std::memcpy(&r, &e, sizeof(e));
  return r;
}

netif_tx_request gso_extra(uint16_t size, uint8_t type = XEN_NETIF_GSO_TYPE_TCPV4, bool more = false) {
  netif_extra_info e{};
  e.type = XEN_NETIF_EXTRA_TYPE_GSO;
  e.flags = more ? XEN_NETIF_EXTRA_FLAG_MORE : 0;
  e.u.gso.size = size;
  e.u.gso.type = type;
  return extra_slot(e);
}

netif_tx_request hash_extra(uint8_t type, uint32_t value, bool more = false) {
  netif_extra_info e{};
  e.type = XEN_NETIF_EXTRA_TYPE_HASH;
  e.flags = more ? XEN_NETIF_EXTRA_FLAG_MORE : 0;
  e.u.hash.type = type;
  e.u.hash.algorithm = XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ;
  std::memcpy(e.u.hash.value, &value, 4);
  return extra_slot(e);
}

netif_tx_request mcast_extra(uint8_t type, uint8_t last_octet) {
  netif_extra_info e{};
  e.type = type;
  const uint8_t mac[6] = {0x01, 0x00, 0x5e, 0x00, 0x00, last_octet};
  std::memcpy(e.u.mcast.addr, mac, 6);
  return extra_slot(e);
}

TxPlan parse(const std::vector<netif_tx_request>& reqs, bool more = false, NetifTxLimits lim = {}) {
  TxPlan p;
  parse_tx(reqs, more, lim, p);
  return p;
}

uint32_t piece_total(const TxPlan& p) {
  uint32_t t = 0;
  for (const auto& pc : p.piece_span()) t += pc.len;
  return t;
}

TEST(NetTxParse, OneSlotCopiesTheHeaderAndMapsTheRest) {
  const auto p = parse({slot(7, 1000, 0, 100)});
  ASSERT_EQ(p.verdict, TxVerdict::kPacket);
  EXPECT_EQ(p.consumed, 1);
  EXPECT_EQ(p.size, 1000u);
  EXPECT_EQ(p.header_len, 128);
  ASSERT_EQ(p.n_pieces, 2);
  EXPECT_EQ(p.pieces[0].kind, TxPiece::kHeader);
  EXPECT_EQ(p.pieces[0].offset, 100);
  EXPECT_EQ(p.pieces[0].len, 128);
  EXPECT_EQ(p.pieces[0].gref, 1007u);
  EXPECT_EQ(p.pieces[1].kind, TxPiece::kMap);
  EXPECT_EQ(p.pieces[1].offset, 228);
  EXPECT_EQ(p.pieces[1].len, 872);
  ASSERT_EQ(p.n_slots, 1);
  EXPECT_EQ(p.slots[0].id, 7);
  EXPECT_EQ(p.slots[0].nulls, 0);
  EXPECT_EQ(p.slots[0].pieces, 2);
}

TEST(NetTxParse, SmallPacketIsCopiedWhole) {
  const auto p = parse({slot(1, 60)});
  ASSERT_EQ(p.verdict, TxVerdict::kPacket);
  ASSERT_EQ(p.n_pieces, 1);
  EXPECT_EQ(p.pieces[0].kind, TxPiece::kHeader);
  EXPECT_EQ(p.header_len, 60);
  EXPECT_EQ(p.size, 60u);
}

TEST(NetTxParse, ChainedSlotsSubtractFromTheFirstSize) {
  // total 5000: first slot 1000 of its own, then 2000 + 2000.
  const auto p = parse({slot(1, 5000, NETTXF_more_data), slot(2, 2000, NETTXF_more_data), slot(3, 2000)});
  ASSERT_EQ(p.verdict, TxVerdict::kPacket) << tx_error_name(p.error);
  EXPECT_EQ(p.consumed, 3);
  EXPECT_EQ(p.size, 5000u);
  ASSERT_EQ(p.n_pieces, 4);
  EXPECT_EQ(p.pieces[0].kind, TxPiece::kHeader);
  EXPECT_EQ(p.pieces[1].kind, TxPiece::kMap);
  EXPECT_EQ(p.pieces[1].len, 872);
  EXPECT_EQ(p.pieces[2].slot, 1);
  EXPECT_EQ(p.pieces[2].len, 2000);
  EXPECT_EQ(p.pieces[3].slot, 2);
  ASSERT_EQ(p.n_slots, 3);
  EXPECT_EQ(p.slots[1].id, 2);
  EXPECT_EQ(p.slots[2].pieces, 1);
}

TEST(NetTxParse, HeaderCopySpansSlotsWhenTheFirstIsShort) {
  // XSA-423: a 14-byte first slot must not leave the IP header in mapped
  // (guest-writable) memory.
  const auto p = parse({slot(1, 1000, NETTXF_more_data, 4082), slot(2, 986, 0, 10)});
  ASSERT_EQ(p.verdict, TxVerdict::kPacket) << tx_error_name(p.error);
  EXPECT_EQ(p.header_len, 128);
  ASSERT_EQ(p.n_pieces, 3);
  EXPECT_EQ(p.pieces[0].len, 14);
  EXPECT_EQ(p.pieces[1].kind, TxPiece::kHeader);
  EXPECT_EQ(p.pieces[1].slot, 1);
  EXPECT_EQ(p.pieces[1].offset, 10);
  EXPECT_EQ(p.pieces[1].len, 114);
  EXPECT_EQ(p.pieces[2].kind, TxPiece::kMap);
  EXPECT_EQ(p.pieces[2].offset, 124);
  EXPECT_EQ(p.pieces[2].len, 872);
  EXPECT_EQ(p.slots[0].pieces, 1);
  EXPECT_EQ(p.slots[1].pieces, 2);
}

TEST(NetTxParse, ZeroLengthFollowOnSlotsAreAnsweredAtOnce) {
  // XSA-448: never map (or attach) an empty slot.
  const auto p = parse({slot(1, 3000, NETTXF_more_data), slot(2, 0, NETTXF_more_data, 4096), slot(3, 1000)});
  ASSERT_EQ(p.verdict, TxVerdict::kPacket) << tx_error_name(p.error);
  EXPECT_EQ(p.slots[1].pieces, 0);
  for (const auto& pc : p.piece_span()) EXPECT_NE(pc.slot, 1);
  EXPECT_EQ(piece_total(p), 3000u);
}

TEST(NetTxParse, ChecksumFlagsBecomeMetadata) {
  auto p = parse({slot(1, 100, NETTXF_csum_blank)});
  EXPECT_TRUE(p.csum_blank);
  EXPECT_FALSE(p.data_validated);
  p = parse({slot(1, 100, NETTXF_data_validated)});
  EXPECT_FALSE(p.csum_blank);
  EXPECT_TRUE(p.data_validated);
}

TEST(NetTxParse, ExtrasAreNullAnsweredAndTheLastOfATypeWins) {
  const auto p = parse({slot(1, 3000, NETTXF_extra_info | NETTXF_csum_blank), gso_extra(1000, 1, true),
                        hash_extra(_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, 0xabcdef01, true),
                        gso_extra(1448, XEN_NETIF_GSO_TYPE_TCPV6)});
  ASSERT_EQ(p.verdict, TxVerdict::kPacket) << tx_error_name(p.error);
  EXPECT_EQ(p.consumed, 4);
  ASSERT_EQ(p.n_slots, 1);
  EXPECT_EQ(p.slots[0].nulls, 3);
  EXPECT_EQ(p.gso_type, XEN_NETIF_GSO_TYPE_TCPV6);
  EXPECT_EQ(p.gso_size, 1448);
  EXPECT_TRUE(p.has_hash);
  EXPECT_EQ(p.hash_type, _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
  EXPECT_EQ(p.hash_value, 0xabcdef01u);
}

TEST(NetTxParse, HashOfAnUnknownTypeIsIgnored) {
  const auto p = parse({slot(1, 100, NETTXF_extra_info), hash_extra(9, 1)});
  ASSERT_EQ(p.verdict, TxVerdict::kPacket);
  EXPECT_FALSE(p.has_hash);
}

TEST(NetTxParse, InvalidExtrasAreFatal) {
  netif_extra_info e{};
  e.type = XEN_NETIF_EXTRA_TYPE_NONE;
  auto p = parse({slot(1, 100, NETTXF_extra_info), extra_slot(e)});
  EXPECT_EQ(p.verdict, TxVerdict::kFatal);
  EXPECT_EQ(p.error, TxError::kBadExtraType);
  e.type = XEN_NETIF_EXTRA_TYPE_MAX;
  p = parse({slot(1, 100, NETTXF_extra_info), extra_slot(e)});
  EXPECT_EQ(p.error, TxError::kBadExtraType);
  p = parse({slot(1, 100, NETTXF_extra_info), gso_extra(0)});
  EXPECT_EQ(p.verdict, TxVerdict::kFatal);
  EXPECT_EQ(p.error, TxError::kBadGso);
  p = parse({slot(1, 100, NETTXF_extra_info), gso_extra(1448, 3)});
  EXPECT_EQ(p.error, TxError::kBadGso);
}

TEST(NetTxParse, MulticastRequestsCarryNoPacket) {
  // The data flags of a multicast request are ignored (Linux answers it
  // before counting slots): the next request is a packet of its own.
  const std::vector<netif_tx_request> reqs = {slot(4, 0, NETTXF_extra_info | NETTXF_more_data),
                                              mcast_extra(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, 0x42), slot(5, 60)};
  const auto p = parse(reqs);
  ASSERT_EQ(p.verdict, TxVerdict::kMulticast);
  EXPECT_EQ(p.mcast_type, XEN_NETIF_EXTRA_TYPE_MCAST_ADD);
  EXPECT_EQ(p.mcast_addr[5], 0x42);
  EXPECT_EQ(p.consumed, 2);
  EXPECT_EQ(p.slots[0].id, 4);
  EXPECT_EQ(p.slots[0].nulls, 1);
  const auto next = parse({reqs.begin() + p.consumed, reqs.end()});
  EXPECT_EQ(next.verdict, TxVerdict::kPacket);
  const auto del = parse({slot(6, 0, NETTXF_extra_info), mcast_extra(XEN_NETIF_EXTRA_TYPE_MCAST_DEL, 1)});
  EXPECT_EQ(del.verdict, TxVerdict::kMulticast);
  EXPECT_EQ(del.mcast_type, XEN_NETIF_EXTRA_TYPE_MCAST_DEL);
}

std::vector<netif_tx_request> chain(unsigned follow_on, bool last_more = false) {
  std::vector<netif_tx_request> r;
  const uint16_t each = 100;
  r.push_back(slot(0, static_cast<uint16_t>(200 + follow_on * each), NETTXF_more_data));
  for (unsigned i = 1; i <= follow_on; ++i) {
    const bool more = i < follow_on || last_more;
    r.push_back(slot(static_cast<uint16_t>(i), each, more ? NETTXF_more_data : 0));
  }
  return r;
}

TEST(NetTxParse, SlotCountLimitsFollowLinux) {
  // 18 follow-on slots (XEN_NETBK_LEGACY_SLOTS_MAX) pass.
  auto p = parse(chain(18));
  EXPECT_EQ(p.verdict, TxVerdict::kPacket) << tx_error_name(p.error);
  EXPECT_EQ(p.n_slots, 19);
  // 19 and 20: dropped, every slot answered with an error.
  for (unsigned n : {19u, 20u}) {
    p = parse(chain(n));
    EXPECT_EQ(p.verdict, TxVerdict::kDrop) << n;
    EXPECT_EQ(p.error, TxError::kTooManySlots) << n;
    EXPECT_EQ(p.consumed, n + 1) << n;
    EXPECT_EQ(p.n_slots, n + 1) << n;
    EXPECT_EQ(p.slots[n].id, n);
  }
  // 21: beyond fatal_skb_slots: malicious.
  p = parse(chain(21));
  EXPECT_EQ(p.verdict, TxVerdict::kFatal);
  EXPECT_EQ(p.error, TxError::kChainTooLong);
  // The thresholds are configurable.
  NetifTxLimits lim;
  lim.legacy_slots_max = 4;
  lim.fatal_slots = 6;
  EXPECT_EQ(parse(chain(4), false, lim).verdict, TxVerdict::kPacket);
  EXPECT_EQ(parse(chain(5), false, lim).verdict, TxVerdict::kDrop);
  EXPECT_EQ(parse(chain(7), false, lim).verdict, TxVerdict::kFatal);
}

TEST(NetTxParse, OversizeFrameIsDroppedNotFatal) {
  // A >= 64 KiB frame wraps the 16-bit total: a later slot is larger than
  // what remains. Every slot of the chain is consumed and answered.
  const auto p = parse({slot(1, 1000, NETTXF_more_data), slot(2, 600, NETTXF_more_data), slot(3, 600), slot(9, 60)});
  EXPECT_EQ(p.verdict, TxVerdict::kDrop);
  EXPECT_EQ(p.error, TxError::kSlotOverflow);
  EXPECT_EQ(p.consumed, 3);
  EXPECT_EQ(p.n_slots, 3);
}

TEST(NetTxParse, RuntsAreDropped) {
  auto p = parse({slot(1, 10)});
  EXPECT_EQ(p.verdict, TxVerdict::kDrop);
  EXPECT_EQ(p.error, TxError::kRunt);
  p = parse({slot(1, 0)});
  EXPECT_EQ(p.error, TxError::kRunt);
  // A first slot left with 10 bytes after its follow-on slots.
  p = parse({slot(1, 100, NETTXF_more_data), slot(2, 90)});
  EXPECT_EQ(p.verdict, TxVerdict::kDrop);
  EXPECT_EQ(p.error, TxError::kRunt);
  EXPECT_EQ(p.consumed, 2);
}

TEST(NetTxParse, CrossingAPageIsFatal) {
  auto p = parse({slot(1, 200, 0, 4000)});
  EXPECT_EQ(p.verdict, TxVerdict::kFatal);
  EXPECT_EQ(p.error, TxError::kCrossesPage);
  p = parse({slot(1, 3000, NETTXF_more_data), slot(2, 2000, 0, 2097)});
  EXPECT_EQ(p.error, TxError::kCrossesPage);
  // Even inside a chain already being dropped.
  p = parse({slot(1, 100, NETTXF_more_data), slot(2, 600, NETTXF_more_data), slot(3, 100, 0, 4000)});
  EXPECT_EQ(p.verdict, TxVerdict::kFatal);
  // Exactly to the end of the page is fine.
  EXPECT_EQ(parse({slot(1, 96, 0, 4000)}).verdict, TxVerdict::kPacket);
}

TEST(NetTxParse, AChainBeyondTheCopiedRequestsWaitsOrIsFatal) {
  const std::vector<netif_tx_request> cut = {slot(1, 3000, NETTXF_more_data), slot(2, 1000, NETTXF_more_data)};
  auto p = parse(cut, /*more_published=*/true);
  EXPECT_EQ(p.verdict, TxVerdict::kNeedMore);
  EXPECT_EQ(p.consumed, 0);
  p = parse(cut, false);
  EXPECT_EQ(p.verdict, TxVerdict::kFatal);
  EXPECT_EQ(p.error, TxError::kTruncated);
  const std::vector<netif_tx_request> extras = {slot(1, 100, NETTXF_extra_info), gso_extra(1000, 1, true)};
  EXPECT_EQ(parse(extras, true).verdict, TxVerdict::kNeedMore);
  EXPECT_EQ(parse(extras, false).error, TxError::kTruncated);
  EXPECT_EQ(parse({}, false).verdict, TxVerdict::kNeedMore);
}

TEST(NetTxParse, SmallRemaindersAreCopiedBelowTheCrossover) {
  NetifTxLimits lim;
  lim.copy_below = 512;
  const auto p =
      parse({slot(1, 128 + 300 + 600, NETTXF_more_data), slot(2, 300, NETTXF_more_data), slot(3, 600)}, false, lim);
  ASSERT_EQ(p.verdict, TxVerdict::kPacket);
  ASSERT_EQ(p.n_pieces, 3);  // first slot is exactly the header
  EXPECT_EQ(p.pieces[1].kind, TxPiece::kCopy);
  EXPECT_EQ(p.pieces[2].kind, TxPiece::kMap);
}

TEST(NetTxParse, PiecesAlwaysDescribeThePacketExactly) {
  // Every shape of a legal chain: the pieces cover the packet once, in
  // order, never past a page, header pieces first.
  for (unsigned follow = 0; follow <= 18; ++follow) {
    for (uint16_t first_own : {14, 50, 127, 128, 129, 4000}) {
      std::vector<netif_tx_request> r;
      uint32_t total = first_own;
      for (unsigned i = 1; i <= follow; ++i) total += static_cast<uint16_t>(i * 97 % 4096);
      if (total > 0xffff) continue;
      r.push_back(slot(0, static_cast<uint16_t>(total), follow ? NETTXF_more_data : 0, 96));
      for (unsigned i = 1; i <= follow; ++i) {
        r.push_back(slot(static_cast<uint16_t>(i), static_cast<uint16_t>(i * 97 % 4096),
                         i < follow ? NETTXF_more_data : 0, static_cast<uint16_t>(4096 - i * 97 % 4096)));
      }
      const auto p = parse(r);
      ASSERT_EQ(p.verdict, TxVerdict::kPacket) << follow << "/" << first_own << ": " << tx_error_name(p.error);
      EXPECT_EQ(p.size, total);
      EXPECT_EQ(piece_total(p), total);
      EXPECT_EQ(p.header_len, std::min<uint32_t>(128, total));
      bool past_header = false;
      int prev_slot = -1;
      for (const auto& pc : p.piece_span()) {
        EXPECT_GT(pc.len, 0);
        EXPECT_LE(pc.offset + pc.len, 4096);
        if (pc.kind != TxPiece::kHeader) past_header = true;
        else EXPECT_FALSE(past_header) << "header piece after data";
        EXPECT_GE(static_cast<int>(pc.slot), prev_slot);
        prev_slot = pc.slot;
      }
    }
  }
}

}  // namespace
}  // namespace xenpath
