// Control ring messages (hash.c semantics), Toeplitz against Microsoft's
// published RSS verification vectors, frame hashing, and the multicast
// filter.
#include "netback/net_ctrl.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "sim/sim_hypervisor.h"
#include "tests/fixtures/sim_guest.h"

namespace xenpath {
namespace {

constexpr DomId kGuest = 12;

const std::vector<uint8_t> kMsKey = {0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
                                     0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
                                     0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa};

struct V4Vector {
  uint8_t src[4], dst[4];
  uint16_t sport, dport;
  uint32_t l3, l4;
};
const V4Vector kV4[] = {
    {{66, 9, 149, 187}, {161, 142, 100, 80}, 2794, 1766, 0x323e8fc2, 0x51ccc178},
    {{199, 92, 111, 2}, {65, 69, 140, 83}, 14230, 4739, 0xd718262a, 0xc626b0ea},
    {{24, 19, 198, 95}, {12, 22, 207, 184}, 12898, 38024, 0xd2d0a5de, 0x5c2b394a},
    {{38, 27, 205, 30}, {209, 142, 163, 6}, 48228, 2217, 0x82989176, 0xafc7327f},
    {{153, 39, 163, 191}, {202, 188, 127, 2}, 44251, 1303, 0x5d1809c5, 0x10e828a2},
};

std::vector<uint8_t> v4_input(const V4Vector& v, bool ports) {
  std::vector<uint8_t> in(v.src, v.src + 4);
  in.insert(in.end(), v.dst, v.dst + 4);
  if (ports) {
    in.push_back(static_cast<uint8_t>(v.sport >> 8));
    in.push_back(static_cast<uint8_t>(v.sport));
    in.push_back(static_cast<uint8_t>(v.dport >> 8));
    in.push_back(static_cast<uint8_t>(v.dport));
  }
  return in;
}

TEST(NetCtrl, ToeplitzMatchesTheRssVerificationVectors) {
  for (const auto& v : kV4) {
    EXPECT_EQ(toeplitz_hash(kMsKey, v4_input(v, false)), v.l3);
    EXPECT_EQ(toeplitz_hash(kMsKey, v4_input(v, true)), v.l4);
  }
  // 3ffe:2501:200:1fff::7 port 2794 -> 3ffe:2501:200:3::1 port 1766
  std::vector<uint8_t> in = {0x3f, 0xfe, 0x25, 0x01, 0x02, 0x00, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 7,
                             0x3f, 0xfe, 0x25, 0x01, 0x02, 0x00, 0x00, 0x03, 0, 0, 0, 0, 0, 0, 0, 1};
  EXPECT_EQ(toeplitz_hash(kMsKey, in), 0x2cc18cd5u);
  in.insert(in.end(), {0x0a, 0xea, 0x06, 0xe6});
  EXPECT_EQ(toeplitz_hash(kMsKey, in), 0x40207d3du);
  // An empty key hashes everything to zero (netif.h: unspecified octets are 0).
  EXPECT_EQ(toeplitz_hash({}, in), 0u);
}

xen_netif_ctrl_request req(uint16_t type, uint32_t d0 = 0, uint32_t d1 = 0, uint32_t d2 = 0, uint16_t id = 77) {
  xen_netif_ctrl_request r{};
  r.id = id;
  r.type = type;
  r.data[0] = d0;
  r.data[1] = d1;
  r.data[2] = d2;
  return r;
}

class NetCtrlTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(test::open_guest_and_grant_table(hv_, kGuest, 16, guest_, gt_)); }
  // A guest page holding `bytes` at offset 0, granted read-only.
  GrantRef page_with(const void* bytes, size_t n) {
    auto pfn = guest_->alloc_pages(1);
    EXPECT_TRUE(pfn);
    std::memcpy(guest_->page(*pfn), bytes, n);
    auto ref = guest_->grant_access(kDom0, *pfn, true);
    EXPECT_TRUE(ref);
    return *ref;
  }
  uint32_t status(NetifCtrl& c, const xen_netif_ctrl_request& r) {
    const auto rsp = c.handle(r, *gt_);
    EXPECT_EQ(rsp.id, r.id);
    EXPECT_EQ(rsp.type, r.type);
    return rsp.status;
  }

  sim::SimHypervisor hv_;
  sim::SimDomain* guest_ = nullptr;
  std::unique_ptr<GrantTable> gt_;
};

TEST_F(NetCtrlTest, AlgorithmAndFlagsFollowHashC) {
  NetifCtrl c(kGuest, 4);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS)), XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_HASH_TYPE_IPV4)),
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, 2)), XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ)),
            XEN_NETIF_CTRL_STATUS_SUCCESS);
  const auto flags = c.handle(req(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS), *gt_);
  EXPECT_EQ(flags.status, XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(flags.data, kHashTypesSupported);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, 1u << 4)), XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_EQ(c.flags(), 0u);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP)),
            XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(c.flags(), uint32_t{XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP});
  const auto size = c.handle(req(XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE), *gt_);
  EXPECT_EQ(size.status, XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(size.data, 128u);
  for (uint16_t t : {0, 8, 9, 10, 11, 0xffff}) {
    EXPECT_EQ(status(c, req(t)), XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED) << t;
  }
}

TEST_F(NetCtrlTest, KeyIsGrantCopiedAndZeroPadded) {
  NetifCtrl c(kGuest, 4);
  const GrantRef ref = page_with(kMsKey.data(), kMsKey.size());
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, ref, 40)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_TRUE(std::equal(kMsKey.begin(), kMsKey.end(), c.key().begin()));
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, ref, 41)), XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  // A bad grant leaves the key as it was.
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, 9999, 40)), XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_TRUE(std::equal(kMsKey.begin(), kMsKey.end(), c.key().begin()));
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, ref, 10)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_TRUE(std::equal(kMsKey.begin(), kMsKey.begin() + 10, c.key().begin()));
  for (size_t i = 10; i < kHashKeyMax; ++i) EXPECT_EQ(c.key()[i], 0) << i;
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, 0, 0)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  for (uint8_t b : c.key()) EXPECT_EQ(b, 0);
}

TEST_F(NetCtrlTest, MappingTableIsValidatedAsAWhole) {
  NetifCtrl c(kGuest, 4);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 129)), XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 8)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  ASSERT_EQ(c.mapping().size(), 8u);
  const uint32_t good[8] = {3, 2, 1, 0, 3, 2, 1, 0};
  const GrantRef g = page_with(good, sizeof(good));
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, g, 8, 0)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_TRUE(std::equal(good, good + 8, c.mapping().begin()));
  EXPECT_EQ(c.queue_for(9), good[9 % 8]);
  // One entry naming a queue the guest does not have: nothing changes.
  const uint32_t bad[2] = {1, 4};
  const GrantRef b = page_with(bad, sizeof(bad));
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, b, 2, 2)), XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_TRUE(std::equal(good, good + 8, c.mapping().begin()));
  // A sub-table update keeps the rest.
  const uint32_t sub[2] = {0, 0};
  const GrantRef s = page_with(sub, sizeof(sub));
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, s, 2, 6)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(c.mapping()[5], 2u);
  EXPECT_EQ(c.mapping()[6], 0u);
  EXPECT_EQ(c.mapping()[7], 0u);
  EXPECT_EQ(c.mapping()[0], 3u);
  // Out of range, wrapping offsets, a bad grant.
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, s, 2, 7)), XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, s, 2, 0xffffffffu)),
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, 9999, 2, 0)), XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_EQ(c.mapping()[0], 3u);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, s, 0, 8)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  // A new size zero-fills the table.
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 4)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  for (uint32_t q : c.mapping()) EXPECT_EQ(q, 0u);
  EXPECT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 0)), XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(c.queue_for(7), 3u) << "no table: modulo the queue count";
}

// An Ethernet frame for a v4 vector, optionally VLAN-tagged or fragmented.
std::vector<uint8_t> v4_frame(const V4Vector& v, bool vlan, bool fragment, uint8_t proto = 6) {
  std::vector<uint8_t> f(12, 0x02);
  if (vlan) f.insert(f.end(), {0x81, 0x00, 0x00, 0x05});
  f.insert(f.end(), {0x08, 0x00});
  std::vector<uint8_t> ip = {0x45, 0, 0, 40, 0, 1, static_cast<uint8_t>(fragment ? 0x20 : 0x40), 0, 64, proto, 0, 0};
  ip.insert(ip.end(), v.src, v.src + 4);
  ip.insert(ip.end(), v.dst, v.dst + 4);
  f.insert(f.end(), ip.begin(), ip.end());
  f.insert(f.end(), {static_cast<uint8_t>(v.sport >> 8), static_cast<uint8_t>(v.sport),
                     static_cast<uint8_t>(v.dport >> 8), static_cast<uint8_t>(v.dport)});
  f.resize(f.size() + 16, 0);
  return f;
}

TEST_F(NetCtrlTest, FramesHashPerTheEnabledTypes) {
  NetifCtrl c(kGuest, 4);
  const auto& v = kV4[0];
  EXPECT_FALSE(c.hash_frame(v4_frame(v, false, false))) << "algorithm NONE: no hash";
  const GrantRef key = page_with(kMsKey.data(), kMsKey.size());
  ASSERT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ)), 0u);
  ASSERT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, key, 40)), 0u);
  EXPECT_FALSE(c.hash_frame(v4_frame(v, false, false))) << "no types enabled";
  ASSERT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, kHashTypesSupported)), 0u);
  auto h = c.hash_frame(v4_frame(v, false, false));
  ASSERT_TRUE(h);
  EXPECT_EQ(h->type, _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
  EXPECT_EQ(h->value, v.l4);
  h = c.hash_frame(v4_frame(v, true, false));
  ASSERT_TRUE(h);
  EXPECT_EQ(h->value, v.l4) << "VLAN tag skipped";
  h = c.hash_frame(v4_frame(v, false, true));
  ASSERT_TRUE(h);
  EXPECT_EQ(h->type, _XEN_NETIF_CTRL_HASH_TYPE_IPV4) << "a fragment has no usable ports";
  EXPECT_EQ(h->value, v.l3);
  h = c.hash_frame(v4_frame(v, false, false, 17));
  ASSERT_TRUE(h);
  EXPECT_EQ(h->type, _XEN_NETIF_CTRL_HASH_TYPE_IPV4) << "UDP hashes at L3";
  ASSERT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP)), 0u);
  EXPECT_FALSE(c.hash_frame(v4_frame(v, false, false, 17)));
  // IPv6 + TCP behind a hop-by-hop header.
  ASSERT_EQ(status(c, req(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, kHashTypesSupported)), 0u);
  std::vector<uint8_t> f6(12, 0x02);
  f6.insert(f6.end(), {0x86, 0xdd, 0x60, 0, 0, 0, 0, 28, 0 /*HBH*/, 64});
  f6.insert(f6.end(), {0x3f, 0xfe, 0x25, 0x01, 0x02, 0x00, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 7});
  f6.insert(f6.end(), {0x3f, 0xfe, 0x25, 0x01, 0x02, 0x00, 0x00, 0x03, 0, 0, 0, 0, 0, 0, 0, 1});
  f6.insert(f6.end(), {6 /*next: TCP*/, 0, 1, 4, 0, 0, 0, 0});
  f6.insert(f6.end(), {0x0a, 0xea, 0x06, 0xe6});
  f6.resize(f6.size() + 16, 0);
  h = c.hash_frame(f6);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->type, _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP);
  EXPECT_EQ(h->value, 0x40207d3du);
  // Truncated headers never read past the frame.
  for (size_t n = 0; n < f6.size(); ++n) (void)c.hash_frame({f6.data(), n});
}

TEST(NetMcast, SixtyFourAddressesThenEverythingMulticast) {
  MulticastFilter f;
  auto mac = [](uint8_t i) { return MulticastFilter::Mac{0x01, 0x00, 0x5e, 0x00, 0x01, i}; };
  for (uint8_t i = 0; i < 64; ++i) EXPECT_TRUE(f.add(mac(i)));
  EXPECT_TRUE(f.accepts(mac(10)));
  EXPECT_FALSE(f.accepts(mac(200)));
  EXPECT_TRUE(f.accepts({0x02, 0, 0, 0, 0, 1})) << "unicast";
  EXPECT_TRUE(f.accepts({0xff, 0xff, 0xff, 0xff, 0xff, 0xff})) << "broadcast";
  EXPECT_FALSE(f.add(mac(100))) << "the 65th is refused";
  EXPECT_TRUE(f.promiscuous());
  EXPECT_TRUE(f.accepts(mac(200)));
  f.del(mac(100));  // the guest gives the refused group up
  EXPECT_FALSE(f.promiscuous());
  EXPECT_FALSE(f.accepts(mac(200)));
  f.del(mac(10));
  EXPECT_EQ(f.size(), 63u);
  EXPECT_FALSE(f.accepts(mac(10)));
  EXPECT_TRUE(f.add(mac(7)));  // duplicates are kept, removed one at a time
  f.del(mac(7));
  EXPECT_TRUE(f.accepts(mac(7)));
  f.clear();
  EXPECT_EQ(f.size(), 0u);
  EXPECT_FALSE(f.accepts(mac(7)));
}

}  // namespace
}  // namespace xenpath
