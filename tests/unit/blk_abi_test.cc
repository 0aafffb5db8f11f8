// The three blkif ABIs byte for byte: hand-built slots (offsets written out
// from the i386 and x86_64 psABI layouts, not from our structs) decode into
// the canonical request, canonical requests encode into the same bytes, and
// the rings built from them carry requests and responses at those offsets.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "blkback/blk_abi.h"
#include "common/ring.h"
#include "sim/front_ring.h"
#include "tests/fixtures/aligned_pages.h"

namespace xenpath {
namespace {

// A little-endian byte buffer written field by field at explicit offsets.
struct Bytes {
  explicit Bytes(size_t n) : b(n, 0) {}
  void u8(size_t off, uint8_t v) { b.at(off) = v; }
  void u16(size_t off, uint16_t v) {
    for (int i = 0; i < 2; ++i) b.at(off + i) = static_cast<uint8_t>(v >> (8 * i));
  }
  void u32(size_t off, uint32_t v) {
    for (int i = 0; i < 4; ++i) b.at(off + i) = static_cast<uint8_t>(v >> (8 * i));
  }
  void u64(size_t off, uint64_t v) {
    for (int i = 0; i < 8; ++i) b.at(off + i) = static_cast<uint8_t>(v >> (8 * i));
  }
  // Little-endian fields, as (offset, width in bytes, value), on zeroes.
  struct Field {
    size_t off;
    size_t width;
    uint64_t v;
  };
  static std::vector<uint8_t> laid_out(size_t n, std::initializer_list<Field> fields) {
    Bytes out(n);
    for (const Field& f : fields) {
      for (size_t i = 0; i < f.width; ++i) out.b.at(f.off + i) = static_cast<uint8_t>(f.v >> (8 * i));
    }
    return out.b;
  }
  template <typename T>
  T as() const {
    EXPECT_EQ(sizeof(T), b.size());
    T t;
    std::memcpy(&t, b.data(), sizeof(T));
    return t;
  }
  template <typename T>
  static std::vector<uint8_t> of(const T& t) {
    std::vector<uint8_t> v(sizeof(T));
    std::memcpy(v.data(), &t, sizeof(T));
    return v;
  }
  std::vector<uint8_t> b;
};

// Per-ABI offsets of the read/write layout (i386: u64 on 4 bytes).
struct RwOffsets {
  size_t size, id, sector, seg;
};
constexpr RwOffsets kRw32{108, 4, 12, 20};
constexpr RwOffsets kRw64{112, 8, 16, 24};

Bytes rw_slot(const RwOffsets& o, uint8_t op, uint8_t nseg) {
  Bytes s(o.size);
  s.u8(0, op);
  s.u8(1, nseg);
  s.u16(2, 0xca01);                        // handle
  s.u64(o.id, 0x1122334455667788ULL);      // id
  s.u64(o.sector, 0x0000000102030405ULL);  // sector_number
  for (unsigned i = 0; i < nseg && i < 11; ++i) {
    s.u32(o.seg + 8 * i, 0x1000 + i);  // gref
    s.u8(o.seg + 8 * i + 4, static_cast<uint8_t>(i % 8));
    s.u8(o.seg + 8 * i + 5, 7);
  }
  return s;
}

void expect_rw(const BlkRequest& r, uint8_t op, uint8_t nseg) {
  EXPECT_EQ(r.ring_op, op);
  EXPECT_EQ(r.op, op);
  EXPECT_FALSE(r.indirect);
  EXPECT_EQ(r.handle, 0xca01);
  EXPECT_EQ(r.id, 0x1122334455667788ULL);
  EXPECT_EQ(r.sector, 0x0000000102030405ULL);
  EXPECT_EQ(r.nr_segments, nseg);
  ASSERT_EQ(r.direct_segments().size(), std::min<size_t>(nseg, 11));
  for (unsigned i = 0; i < r.direct_segments().size(); ++i) {
    EXPECT_EQ(r.seg[i], (BlkSegment{0x1000 + i, static_cast<uint8_t>(i % 8), 7})) << i;
  }
}

TEST(BlkifAbi, X86_32ReadWriteDecodesAtPackedOffsets) {
  for (uint8_t op : {BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE}) {
    const Bytes s = rw_slot(kRw32, op, 11);
    expect_rw(blk_decode(s.as<BlkifX86_32Request>()), op, 11);
  }
}

TEST(BlkifAbi, X86_64AndNativeReadWriteDecodeAtAlignedOffsets) {
  const Bytes s = rw_slot(kRw64, BLKIF_OP_WRITE, 3);
  expect_rw(blk_decode(s.as<BlkifX86_64Request>()), BLKIF_OP_WRITE, 3);
  expect_rw(blk_decode(s.as<blkif_request>()), BLKIF_OP_WRITE, 3);
}

TEST(BlkifAbi, TheWrongAbiSeesOtherValues) {
  // The same bytes read with the other ABI land elsewhere: the protocol key
  // matters (a 32-bit guest's id at 4 is not the 64-bit id at 8).
  const Bytes s = rw_slot(kRw32, BLKIF_OP_READ, 1);
  Bytes wide(112);
  std::memcpy(wide.b.data(), s.b.data(), s.b.size());
  EXPECT_NE(blk_decode(wide.as<BlkifX86_64Request>()).id, 0x1122334455667788ULL);
}

TEST(BlkifAbi, OnlyTheAnnouncedDirectSegmentsAreCopied) {
  Bytes s = rw_slot(kRw32, BLKIF_OP_READ, 2);
  s.u32(kRw32.seg + 8 * 5, 0xdead);  // garbage beyond nr_segments
  const BlkRequest r = blk_decode(s.as<BlkifX86_32Request>());
  EXPECT_EQ(r.direct_segments().size(), 2u);
  EXPECT_EQ(r.seg[5].gref, 0u);
  // An oversized count keeps its value (validation refuses it) but copies 11.
  Bytes big = rw_slot(kRw64, BLKIF_OP_READ, 11);
  big.u8(1, 200);
  const BlkRequest rb = blk_decode(big.as<BlkifX86_64Request>());
  EXPECT_EQ(rb.nr_segments, 200u);
  EXPECT_EQ(rb.direct_segments().size(), 11u);
}

TEST(BlkifAbi, DiscardLayouts) {
  // i386: flag 1, handle 2, id 4, sector 12, nr_sectors 20.
  Bytes s32(108);
  s32.u8(0, BLKIF_OP_DISCARD);
  s32.u8(1, BLKIF_DISCARD_SECURE);
  s32.u64(4, 77);
  s32.u64(12, 4096);
  s32.u64(20, 0x100000000ULL);
  BlkRequest r = blk_decode(s32.as<BlkifX86_32Request>());
  EXPECT_EQ(r.op, BLKIF_OP_DISCARD);
  EXPECT_EQ(r.id, 77u);
  EXPECT_EQ(r.sector, 4096u);
  EXPECT_EQ(r.nr_sectors, 0x100000000ULL);
  EXPECT_TRUE(r.secure);
  // x86_64: id 8, sector 16, nr_sectors 24.
  Bytes s64(112);
  s64.u8(0, BLKIF_OP_DISCARD);
  s64.u64(8, 78);
  s64.u64(16, 8);
  s64.u64(24, 16);
  r = blk_decode(s64.as<BlkifX86_64Request>());
  EXPECT_EQ(r.id, 78u);
  EXPECT_EQ(r.sector, 8u);
  EXPECT_EQ(r.nr_sectors, 16u);
  EXPECT_FALSE(r.secure);
  EXPECT_EQ(blk_decode(s64.as<blkif_request>()).nr_sectors, 16u);
}

TEST(BlkifAbi, IndirectLayouts) {
  // i386: indirect_op 1, nr_segments(u16) 2, id 4, sector 12, handle 20, grefs 24.
  Bytes s32(108);
  s32.u8(0, BLKIF_OP_INDIRECT);
  s32.u8(1, BLKIF_OP_WRITE);
  s32.u16(2, 1025);  // three descriptor pages
  s32.u64(4, 9);
  s32.u64(12, 1 << 20);
  s32.u16(20, 0x51);
  for (unsigned i = 0; i < 8; ++i) s32.u32(24 + 4 * i, 500 + i);
  BlkRequest r = blk_decode(s32.as<BlkifX86_32Request>());
  EXPECT_TRUE(r.indirect);
  EXPECT_EQ(r.ring_op, BLKIF_OP_INDIRECT);
  EXPECT_EQ(r.op, BLKIF_OP_WRITE);
  EXPECT_EQ(r.nr_segments, 1025u);
  EXPECT_EQ(r.id, 9u);
  EXPECT_EQ(r.sector, 1u << 20);
  EXPECT_EQ(r.handle, 0x51);
  EXPECT_EQ(r.nr_indirect_pages, 3);
  EXPECT_EQ(r.indirect_grefs[0], 500u);
  EXPECT_EQ(r.indirect_grefs[2], 502u);
  EXPECT_EQ(r.indirect_grefs[3], 0u);  // beyond the pages in use: not copied
  EXPECT_TRUE(r.direct_segments().empty());
  // x86_64: nr_segments 2, id 8, sector 16, handle 24, grefs 28.
  Bytes s64(112);
  s64.u8(0, BLKIF_OP_INDIRECT);
  s64.u8(1, BLKIF_OP_READ);
  s64.u16(2, 65535);  // more than 8 pages can hold: grefs capped at 8
  s64.u64(8, 10);
  s64.u64(16, 24);
  s64.u16(24, 0x52);
  for (unsigned i = 0; i < 8; ++i) s64.u32(28 + 4 * i, 600 + i);
  r = blk_decode(s64.as<BlkifX86_64Request>());
  EXPECT_EQ(r.op, BLKIF_OP_READ);
  EXPECT_EQ(r.nr_segments, 65535u);
  EXPECT_EQ(r.id, 10u);
  EXPECT_EQ(r.sector, 24u);
  EXPECT_EQ(r.handle, 0x52);
  EXPECT_EQ(r.nr_indirect_pages, 8);
  EXPECT_EQ(r.indirect_grefs[7], 607u);
  EXPECT_EQ(blk_decode(s64.as<blkif_request>()).indirect_grefs[7], 607u);
}

TEST(BlkifAbi, UnknownOperationsKeepOnlyTheId) {
  Bytes s32(108);
  s32.u8(0, 0xee);
  s32.u8(1, 5);
  s32.u64(4, 0xabcdef);
  BlkRequest r = blk_decode(s32.as<BlkifX86_32Request>());
  EXPECT_EQ(r.op, 0xee);
  EXPECT_EQ(r.id, 0xabcdefu);
  EXPECT_EQ(r.nr_segments, 0u);
  Bytes s64(112);
  s64.u8(0, BLKIF_OP_RESERVED_1);
  s64.u64(8, 0xabcdee);
  EXPECT_EQ(blk_decode(s64.as<BlkifX86_64Request>()).id, 0xabcdeeu);
}

TEST(BlkifAbi, EncodeProducesTheHandBuiltBytes) {
  BlkRequest rw;
  rw.op = rw.ring_op = BLKIF_OP_WRITE_BARRIER;
  rw.handle = 0xca01;
  rw.id = 0x1122334455667788ULL;
  rw.sector = 0x0000000102030405ULL;
  rw.nr_segments = 4;
  for (unsigned i = 0; i < 4; ++i) rw.seg[i] = BlkSegment{0x1000 + i, static_cast<uint8_t>(i % 8), 7};
  BlkifX86_32Request a{};
  blk_encode(rw, a);
  EXPECT_EQ(Bytes::of(a), rw_slot(kRw32, BLKIF_OP_WRITE_BARRIER, 4).b);
  BlkifX86_64Request b{};
  blk_encode(rw, b);
  Bytes expect64 = rw_slot(kRw64, BLKIF_OP_WRITE_BARRIER, 4);
  EXPECT_EQ(Bytes::of(b), expect64.b);
  blkif_request c{};
  blk_encode(rw, c);
  EXPECT_EQ(Bytes::of(c), expect64.b);

  BlkRequest ind;
  ind.ring_op = BLKIF_OP_INDIRECT;
  ind.op = BLKIF_OP_READ;
  ind.indirect = true;
  ind.nr_segments = 600;
  ind.id = 3;
  ind.sector = 16;
  ind.handle = 2;
  ind.nr_indirect_pages = 2;
  ind.indirect_grefs = {40, 41, 0, 0, 0, 0, 0, 0};
  BlkifX86_32Request i32{};
  blk_encode(ind, i32);
  EXPECT_EQ(Bytes::of(i32), Bytes::laid_out(108, {{0, 1, BLKIF_OP_INDIRECT},
                                                  {1, 1, BLKIF_OP_READ},
                                                  {2, 2, 600},
                                                  {4, 8, 3},
                                                  {12, 8, 16},
                                                  {20, 2, 2},
                                                  {24, 4, 40},
                                                  {28, 4, 41}}));
  // Round trips through every ABI.
  BlkifX86_64Request i64{};
  blk_encode(ind, i64);
  const BlkRequest back = blk_decode(i64);
  EXPECT_EQ(back.nr_segments, 600u);
  EXPECT_EQ(back.nr_indirect_pages, 2);
  EXPECT_EQ(back.indirect_grefs[1], 41u);

  BlkRequest d;
  d.op = d.ring_op = BLKIF_OP_DISCARD;
  d.id = 5;
  d.sector = 8;
  d.nr_sectors = 64;
  d.secure = true;
  BlkifX86_32Request d32{};
  blk_encode(d, d32);
  EXPECT_EQ(Bytes::of(d32),
            Bytes::laid_out(
                108, {{0, 1, BLKIF_OP_DISCARD}, {1, 1, BLKIF_DISCARD_SECURE}, {4, 8, 5}, {12, 8, 8}, {20, 8, 64}}));
}

TEST(BlkifAbi, ResponsesInEachLayout) {
  // Built in a slot that is first filled with a marker: blk_set_response()
  // sets the fields only; BackRing::emplace_response() zeroes the slot.
  BlkifX86_32Response r32;
  std::memset(&r32, 0, sizeof(r32));
  blk_set_response(r32, 0x0102030405060708ULL, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP);
  Bytes e32(12);
  e32.u64(0, 0x0102030405060708ULL);
  e32.u8(8, BLKIF_OP_WRITE);
  e32.u16(10, static_cast<uint16_t>(BLKIF_RSP_EOPNOTSUPP));
  EXPECT_EQ(Bytes::of(r32), e32.b);
  BlkifX86_64Response r64;
  std::memset(&r64, 0, sizeof(r64));
  blk_set_response(r64, 9, BLKIF_OP_READ, BLKIF_RSP_ERROR);
  Bytes e64(16);
  e64.u64(0, 9);
  e64.u8(8, BLKIF_OP_READ);
  e64.u16(10, static_cast<uint16_t>(BLKIF_RSP_ERROR));
  EXPECT_EQ(Bytes::of(r64), e64.b);
}

TEST(BlkifAbi, ProtocolKey) {
  EXPECT_EQ(*parse_blk_protocol(std::string_view("x86_32-abi")), BlkProtocol::kX86_32);
#if defined(__x86_64__)
  // On an x86_64 host the x86_64 ABI is the native one.
  EXPECT_EQ(*parse_blk_protocol(std::string_view("x86_64-abi")), BlkProtocol::kNative);
  EXPECT_EQ(*parse_blk_protocol(std::nullopt), BlkProtocol::kX86_32);
#endif
  EXPECT_EQ(parse_blk_protocol(std::string_view("x86_16-abi")).error(), ENOSYS);
  EXPECT_EQ(parse_blk_protocol(std::string_view("")).error(), ENOSYS);
  EXPECT_EQ(blk_protocol_name(BlkProtocol::kX86_32), "x86_32-abi");
  EXPECT_EQ(blk_protocol_name(BlkProtocol::kX86_64), "x86_64-abi");
}

template <typename Types>
void ring_round_trip(unsigned order, unsigned expect_size, size_t slot, size_t status_off) {
  test::AlignedPages mem(kPageSize << order);
  sim::SimFrontRing<Types> front;
  BackRing<Types> back;
  ASSERT_TRUE(front.init(mem.p, mem.size).has_value());
  ASSERT_TRUE(back.attach(mem.p, mem.size).has_value());
  EXPECT_EQ(back.size(), expect_size);
  BlkRequest rq;
  rq.op = rq.ring_op = BLKIF_OP_READ;
  rq.id = 0xfeed;
  rq.sector = 24;
  rq.nr_segments = 1;
  rq.seg[0] = BlkSegment{77, 0, 7};
  typename Types::Request slotreq{};
  blk_encode(rq, slotreq);
  // Fill a few slots so the second lands at a known offset.
  ASSERT_TRUE(front.push(slotreq));
  rq.id = 0xbeef;
  blk_encode(rq, slotreq);
  ASSERT_TRUE(front.push(slotreq));
  front.flush();
  // The second request starts at 64 + slot in the shared page.
  uint64_t id_at;
  std::memcpy(&id_at, mem.p + 64 + slot + (slot == 108 ? 4 : 8), 8);
  EXPECT_EQ(id_at, 0xbeefu);
  typename Types::Request got[4];
  auto n = back.consume(got);
  ASSERT_TRUE(n.has_value());
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(blk_decode(got[1]).id, 0xbeefu);
  EXPECT_EQ(blk_decode(got[1]).seg[0].gref, 77u);
  EXPECT_TRUE(back.emplace_response([](auto& r) { blk_set_response(r, 0xfeed, BLKIF_OP_READ, BLKIF_RSP_OKAY); }));
  EXPECT_TRUE(back.emplace_response([](auto& r) { blk_set_response(r, 0xbeef, BLKIF_OP_READ, BLKIF_RSP_ERROR); }));
  back.flush();
  int16_t st;
  std::memcpy(&st, mem.p + 64 + slot + status_off, 2);
  EXPECT_EQ(st, BLKIF_RSP_ERROR);
  typename Types::Response rsp[4];
  ASSERT_EQ(front.take_responses(rsp), 2u);
  // Copies: the i386 response's u64 is only 4-byte aligned.
  const uint64_t rsp_id = rsp[1].id;
  const int16_t rsp_status = rsp[1].status;
  EXPECT_EQ(rsp_id, 0xbeefu);
  EXPECT_EQ(rsp_status, BLKIF_RSP_ERROR);
}

TEST(BlkifAbi, RingsOfEachAbiCarryRequestsAndResponses) {
  ring_round_trip<BlkifX86_32Ring>(0, 32, 108, 10);
  ring_round_trip<BlkifX86_64Ring>(0, 32, 112, 10);
  ring_round_trip<BlkifNativeRing>(0, 32, 112, 10);
  // Order 4 (16 pages): (65536 - 64) / 108 = 606 -> 512 slots.
  ring_round_trip<BlkifX86_32Ring>(4, 512, 108, 10);
  ring_round_trip<BlkifX86_64Ring>(4, 512, 112, 10);
}

}  // namespace
}  // namespace xenpath
