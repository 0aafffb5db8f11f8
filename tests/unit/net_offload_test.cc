// The pure offload code (netback/net_offload.h): checksums against known
// values and an independent big-endian reference, the IP header checks,
// the GSO flag rules, and the GRO classification and grouping decisions,
// all over plain byte vectors (no DPDK).
#include "netback/net_offload.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <vector>

#include "sim/net/sim_frames.h"

namespace xenpath::offload {
namespace {

using namespace xenpath::sim::frames;

// A big-endian 16-bit value as raw_sum (memory order) reports it.
uint16_t mem16(uint16_t be) {
  const uint8_t b[2] = {static_cast<uint8_t>(be >> 8), static_cast<uint8_t>(be)};
  uint16_t v;
  std::memcpy(&v, b, 2);
  return v;
}

TEST(NetOffloadChecksum, Rfc1071Example) {
  // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
  const std::vector<uint8_t> b = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
  EXPECT_EQ(raw_sum(b), mem16(0xddf2));
  // An odd tail is padded with a zero byte.
  const std::vector<uint8_t> odd = {0x00, 0x01, 0xf2};
  EXPECT_EQ(raw_sum(odd), mem16(0xf201));
}

TEST(NetOffloadChecksum, Ipv4HeaderKnownValue) {
  // A textbook header (192.168.0.1 -> 192.168.0.199, UDP): checksum b861.
  std::vector<uint8_t> ip = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
                             0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
  const uint16_t c = ipv4_header_checksum(ip.data());
  std::memcpy(ip.data() + 10, &c, 2);
  EXPECT_EQ(be16(ip.data() + 10), 0xb861);
  // Filled in and right: checks to zero.
  EXPECT_EQ(ipv4_header_checksum(ip.data()), 0);
  ip[8] = 0x3f;  // TTL changed behind the checksum
  EXPECT_NE(ipv4_header_checksum(ip.data()), 0);
}

TEST(NetOffloadChecksum, PiecesAtOddOffsetsSumAsTheWhole) {
  std::vector<uint8_t> b(1001);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 37 + 11);
  const uint16_t whole = raw_sum(b);
  for (size_t cut1 : {1u, 3u, 500u, 999u}) {
    for (size_t cut2 : {cut1 + 1, cut1 + 2, size_t{1000}}) {
      if (cut2 <= cut1 || cut2 > b.size()) continue;
      PieceSum s;
      s.add({b.data(), cut1});
      s.add({b.data() + cut1, cut2 - cut1});
      s.add({b.data() + cut2, b.size() - cut2});
      EXPECT_EQ(s.folded(), whole) << cut1 << "/" << cut2;
    }
  }
}

// The TCP/UDP checksum of a frame, from the pure pieces, stored as the
// adapter stores it; then verified with the test helpers' independent
// big-endian arithmetic.
void fill_l4_checksum(std::vector<uint8_t>& f, bool v6, bool udp) {
  L3View v;
  const uint32_t l3 = v6 ? kIp6Len : kIp4Len;
  ASSERT_TRUE(l3_view(f, static_cast<uint32_t>(f.size()), !v6, v6, kEthLen, l3, v));
  const uint8_t proto = udp ? kProtoUdp : kProtoTcp;
  uint8_t* field = f.data() + v.l4_off + csum_field_off(proto);
  store_be16(field, 0);
  const uint16_t c = l4_checksum(raw_sum({f.data() + v.l4_off, v.l4_len}), pseudo_sum(v, proto, v.l4_len), proto);
  std::memcpy(field, &c, 2);
  if (!v6) {
    store_be16(f.data() + kEthLen + 10, 0);
    const uint16_t ic = ipv4_header_checksum(f.data() + kEthLen);
    std::memcpy(f.data() + kEthLen + 10, &ic, 2);
  }
}

TEST(NetOffloadChecksum, L4ChecksumsVerifyIndependently) {
  for (bool v6 : {false, true}) {
    for (bool udp : {false, true}) {
      for (size_t payload : {0u, 1u, 7u, 1000u, 1461u}) {
        FrameSpec s;
        s.v6 = v6;
        s.udp = udp;
        s.payload = payload;
        auto f = make_frame(s);
        fill_l4_checksum(f, v6, udp);
        const ParsedFrame p = parse_frame(f);
        EXPECT_TRUE(p.error.empty()) << p.error << " v6=" << v6 << " udp=" << udp << " payload=" << payload;
      }
    }
  }
}

TEST(NetOffloadChecksum, PartialFormIsThePseudoHeaderSum) {
  FrameSpec s;
  s.payload = 100;
  auto f = make_frame(s);
  L3View v;
  ASSERT_TRUE(l3_view(f, static_cast<uint32_t>(f.size()), true, false, kEthLen, kIp4Len, v));
  const uint16_t ph = pseudo_sum(v, kProtoTcp, v.l4_len);
  std::memcpy(f.data() + v.l4_off + 16, &ph, 2);
  EXPECT_EQ(be16(f.data() + v.l4_off + 16), partial_field(f));
}

TEST(NetOffloadChecksum, L3ViewRefusesHeadersThatLie) {
  FrameSpec s;
  s.payload = 10;
  auto f = make_frame(s);
  const uint32_t len = static_cast<uint32_t>(f.size());
  L3View v;
  EXPECT_TRUE(l3_view(f, len, true, false, kEthLen, kIp4Len, v));
  EXPECT_EQ(v.l4_len, kTcpLen + 10);
  EXPECT_FALSE(l3_view(f, len, false, true, kEthLen, kIp4Len, v)) << "IPv4 bytes described as IPv6";
  EXPECT_FALSE(l3_view(f, len, true, false, kEthLen, 24, v)) << "l3 not the IHL";
  EXPECT_FALSE(l3_view(f, len - 1, true, false, kEthLen, kIp4Len, v)) << "total length past the packet";
  EXPECT_FALSE(l3_view({f.data(), 20}, len, true, false, kEthLen, kIp4Len, v)) << "header not in the head";
  EXPECT_FALSE(l3_view(f, len, false, false, kEthLen, kIp4Len, v)) << "no L3 in the metadata";
}

TEST(NetOffloadGso, FlagsFollowLinux) {
  const uint8_t all = kTcpFlagFin | kTcpFlagPsh | kTcpFlagAck | kTcpFlagCwr;
  EXPECT_EQ(gso_segment_tcp_flags(all, 0, 3), kTcpFlagAck | kTcpFlagCwr);
  EXPECT_EQ(gso_segment_tcp_flags(all, 1, 3), kTcpFlagAck);
  EXPECT_EQ(gso_segment_tcp_flags(all, 2, 3), kTcpFlagFin | kTcpFlagPsh | kTcpFlagAck);
  EXPECT_EQ(gso_segment_tcp_flags(all, 0, 1), all);
}

// ------------------------------------------------------------------ GRO

bool vector_sum(const void* ctx, uint32_t off, uint32_t len, uint16_t& out) noexcept {
  const auto& f = *static_cast<const std::vector<uint8_t>*>(ctx);
  if (static_cast<size_t>(off) + len > f.size()) return false;
  out = raw_sum({f.data() + off, len});
  return true;
}

// What the adapter's header parser would say of one of make_frame's frames.
GroProbe probe(std::vector<uint8_t>& f) {
  GroProbe p;
  p.head = f.data();
  p.head_len = static_cast<uint32_t>(f.size());
  p.pkt_len = static_cast<uint32_t>(f.size());
  p.ipv4 = be16(f.data() + 12) == 0x0800;
  p.l2_len = kEthLen;
  if (p.ipv4) {
    const uint8_t* ip = f.data() + kEthLen;
    p.l3_len = static_cast<uint16_t>((ip[0] & 0xf) * 4);
    p.ipv4_fragment = (be16(ip + 6) & 0x3fff) != 0;
    p.tcp = ip[9] == kProtoTcp;
    if (p.tcp) p.l4_len = static_cast<uint16_t>((ip[p.l3_len + 12] >> 4) * 4);
  }
  p.writable = true;
  p.sum = &vector_sum;
  p.sum_ctx = &f;
  return p;
}

class NetOffloadGro : public ::testing::Test {
 protected:
  // `n` frames of one flow in sequence, 1000 bytes each, checksums right.
  void flow(size_t n, uint32_t seq = 1000) {
    for (size_t i = 0; i < n; ++i) {
      FrameSpec s;
      s.payload = 1000;
      s.seq = seq + static_cast<uint32_t>(i * 1000);
      s.tcp_flags = kTcpAck;
      s.ip_id = static_cast<uint16_t>(50 + i);
      frames_.push_back(make_frame(s));
      fix_tcp4_checksums(frames_.back());
    }
  }
  const GroPlan& plan(pkt::CoalesceOptions o = {}) {
    fr_.clear();
    for (auto& f : frames_) fr_.push_back(gro_classify(probe(f)));
    gro_plan(fr_, o, plan_);
    return plan_;
  }
  // The burst indexes of each group, groups in plan order.
  std::vector<std::vector<uint32_t>> groups() const {
    std::vector<std::vector<uint32_t>> out;
    for (uint32_t i = 0; i < plan_.n; ++i) {
      if (plan_.groups[plan_.group_of[i]].first != i) continue;
      std::vector<uint32_t> g;
      for (uint32_t j = i; j < plan_.n; j = plan_.next_in[j]) g.push_back(j);
      out.push_back(g);
    }
    return out;
  }
  using Groups = std::vector<std::vector<uint32_t>>;

  std::vector<std::vector<uint8_t>> frames_;
  std::vector<GroFrame> fr_;
  GroPlan plan_;
};

TEST_F(NetOffloadGro, OneFlowInSequenceIsOneGroup) {
  flow(4);
  plan();
  EXPECT_EQ(groups(), (Groups{{0, 1, 2, 3}}));
  const GroGroup& g = plan_.groups[0];
  EXPECT_EQ(g.mss, 1000);
  EXPECT_EQ(g.ip_len, 20u + 20u + 4000u);
  EXPECT_EQ(g.next_seq, 5000u);
  EXPECT_TRUE(fr_[0].l4_verified) << "a checksum checked here need not be checked again";
}

TEST_F(NetOffloadGro, ClassifyRefusesWhatLinuxRefuses) {
  const std::vector<std::pair<const char*, std::function<void(std::vector<uint8_t>&, GroProbe&)>>> cases = {
      {"bad TCP checksum", [](auto& f, auto&) { f[60] ^= 1; }},
      {"bad IP checksum", [](auto& f, auto&) { f[24] ^= 1; }},
      {"port says L4 bad", [](auto&, auto& p) { p.l4_csum = CsumState::kBad; }},
      {"port says IP bad", [](auto&, auto& p) { p.ip_csum = CsumState::kBad; }},
      {"pending offload work", [](auto&, auto& p) { p.offload_pending = true; }},
      {"shared buffers", [](auto&, auto& p) { p.writable = false; }},
      {"padded past the IP length", [](auto&, auto& p) { p.pkt_len += 4; }},
  };
  for (const auto& [what, bend] : cases) {
    frames_.clear();
    flow(1);
    auto& f = frames_[0];
    GroProbe p = probe(f);
    bend(f, p);
    const GroFrame fr = gro_classify(p);
    EXPECT_FALSE(fr.eligible) << what;
    EXPECT_FALSE(fr.barrier) << what;
    EXPECT_NE(fr.ip, nullptr) << what << ": still a flow's frame";
  }
  // A port that checked the checksums spares the software check.
  frames_.clear();
  flow(1);
  frames_[0][60] ^= 1;
  GroProbe p = probe(frames_[0]);
  p.ip_csum = CsumState::kGood;
  p.l4_csum = CsumState::kGood;
  EXPECT_TRUE(gro_classify(p).eligible);
}

TEST_F(NetOffloadGro, FlagsOtherThanAckAndPshAreNotMerged) {
  for (uint8_t flags : {uint8_t{kTcpAck | kTcpFin}, uint8_t{kTcpAck | 0x02}, uint8_t{kTcpAck | kTcpCwr},
                        uint8_t{kTcpAck | 0x20}, uint8_t{0x00}}) {
    frames_.clear();
    flow(3);
    frames_[2][47] = flags;
    fix_tcp4_checksums(frames_[2]);
    plan();
    EXPECT_EQ(groups(), (Groups{{0, 1}, {2}})) << int{flags};
  }
}

TEST_F(NetOffloadGro, PshJoinsThenEndsItsGroup) {
  flow(4);
  frames_[1][47] = kTcpAck | kTcpPsh;
  fix_tcp4_checksums(frames_[1]);
  plan();
  EXPECT_EQ(groups(), (Groups{{0, 1}, {2, 3}}));
  EXPECT_TRUE(plan_.groups[plan_.group_of[0]].psh);
  EXPECT_FALSE(plan_.groups[plan_.group_of[2]].psh);
}

TEST_F(NetOffloadGro, HeadersMustAgree) {
  const std::vector<std::pair<const char*, std::function<void(std::vector<uint8_t>&)>>> cases = {
      {"ttl", [](auto& f) { f[22] = 63; }},
      {"tos", [](auto& f) { f[15] = 0x10; }},
      {"window", [](auto& f) { put16(f.data() + 48, 1000); }},
      {"ack", [](auto& f) { put32(f.data() + 42, 78); }},
      {"df", [](auto& f) { put16(f.data() + 20, 0); }},
      {"mac", [](auto& f) { f[0] = 0x04; }},
      {"seq gap", [](auto& f) { put32(f.data() + 38, be32(f.data() + 38) + 1); }},
  };
  for (const auto& [what, mutate] : cases) {
    frames_.clear();
    flow(3);
    mutate(frames_[2]);
    fix_tcp4_checksums(frames_[2]);
    plan();
    const Groups g = groups();
    ASSERT_EQ(g.size(), 2u) << what;
    EXPECT_EQ(g[0], (std::vector<uint32_t>{0, 1})) << what;
    EXPECT_EQ(g[1], (std::vector<uint32_t>{2})) << what;
  }
}

TEST_F(NetOffloadGro, ShortSegmentEndsAndLongerStartsAGroup) {
  flow(2);
  FrameSpec s;
  s.payload = 500;  // short: joins, then ends the group
  s.seq = 3000;
  s.tcp_flags = kTcpAck;
  s.ip_id = 52;
  frames_.push_back(make_frame(s));
  fix_tcp4_checksums(frames_.back());
  s.payload = 1000;
  s.seq = 3500;
  s.ip_id = 53;
  frames_.push_back(make_frame(s));
  fix_tcp4_checksums(frames_.back());
  plan();
  EXPECT_EQ(groups(), (Groups{{0, 1, 2}, {3}}));
}

TEST_F(NetOffloadGro, BoundedByLengthAndSegments) {
  flow(5);
  pkt::CoalesceOptions o;
  o.max_len = 14 + 40 + 2000;
  plan(o);
  EXPECT_EQ(groups(), (Groups{{0, 1}, {2, 3}, {4}}));
  o = {};
  o.max_segments = 3;
  plan(o);
  EXPECT_EQ(groups(), (Groups{{0, 1, 2}, {3, 4}}));
}

TEST_F(NetOffloadGro, FlowsInterleaveAndKeepTheirOrder) {
  flow(2);
  // A second flow (other source port), interleaved.
  for (size_t i = 0; i < 2; ++i) {
    FrameSpec s;
    s.payload = 1000;
    s.seq = 9000 + static_cast<uint32_t>(i * 1000);
    s.tcp_flags = kTcpAck;
    s.ip_id = static_cast<uint16_t>(80 + i);
    auto f = make_frame(s);
    put16(f.data() + 34, 40001);
    fix_tcp4_checksums(f);
    frames_.insert(frames_.begin() + static_cast<ptrdiff_t>(1 + 2 * i), f);
  }
  plan();
  EXPECT_EQ(groups(), (Groups{{0, 2}, {1, 3}}));
}

TEST_F(NetOffloadGro, NothingPassesAnIpv4Fragment) {
  flow(4);
  // Frame 2 becomes a fragment (MF set): it ends every open group.
  put16(frames_[2].data() + 20, 0x2000);
  fix_tcp4_checksums(frames_[2]);
  plan();
  EXPECT_TRUE(fr_[2].barrier);
  EXPECT_EQ(groups(), (Groups{{0, 1}, {2}, {3}}));
}

TEST_F(NetOffloadGro, OtherProtocolsStandAlone) {
  flow(2);
  FrameSpec u;
  u.udp = true;
  u.payload = 100;
  frames_.insert(frames_.begin() + 1, make_frame(u));
  FrameSpec v6;
  v6.v6 = true;
  v6.payload = 100;
  frames_.push_back(make_frame(v6));
  plan();
  EXPECT_EQ(groups(), (Groups{{0, 2}, {1}, {3}}));
  EXPECT_EQ(fr_[1].ip, nullptr);
}

}  // namespace
}  // namespace xenpath::offload
