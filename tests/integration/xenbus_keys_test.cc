// Guest-written keys: strict decimals and single/multi-page ring references.
#include <gtest/gtest.h>

#include "sim/sim_xenstored.h"
#include "common/xenbus/keys.h"

namespace xenpath {
namespace {

TEST(ParseDecimal, StrictUnsigned) {
  EXPECT_EQ(parse_decimal<uint32_t>("0"), 0u);
  EXPECT_EQ(parse_decimal<uint32_t>("4294967295"), 4294967295u);
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "01", "1x", "0x10", "4294967296", "1\n"}) {
    EXPECT_FALSE(parse_decimal<uint32_t>(bad).has_value()) << '"' << bad << '"';
  }
  EXPECT_FALSE(parse_decimal<uint16_t>("65536").has_value());
}

class RingRefsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = sim::SimXenstored::start("");
    ASSERT_TRUE(d.has_value());
    xsd_ = std::move(*d);
    auto c = xsd_->connect(kDom0);
    ASSERT_TRUE(c.has_value());
    xs_ = std::move(*c);
  }
  void put(const std::string& key, const std::string& v) {
    ASSERT_TRUE(xs_->write(kXsNoTxn, "/fe/" + key, v).has_value());
  }
  std::unique_ptr<sim::SimXenstored> xsd_;
  std::unique_ptr<XenStore> xs_;
};

TEST_F(RingRefsTest, SinglePageWithoutOrder) {
  put("ring-ref", "8");
  auto r = read_ring_refs(*xs_, kXsNoTxn, "/fe", 4);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->order, 0u);
  EXPECT_EQ(r->refs, std::vector<GrantRef>{8});
}

TEST_F(RingRefsTest, MultiPageReadsEveryReference) {
  put("ring-page-order", "2");
  for (int i = 0; i < 4; ++i) put("ring-ref" + std::to_string(i), std::to_string(100 + i));
  auto r = read_ring_refs(*xs_, kXsNoTxn, "/fe", 4);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->order, 2u);
  EXPECT_EQ(r->refs, (std::vector<GrantRef>{100, 101, 102, 103}));
}

TEST_F(RingRefsTest, OrderZeroUsesNumberedKey) {
  put("ring-page-order", "0");
  put("ring-ref", "7");  // ignored once an order is given
  put("ring-ref0", "9");
  auto r = read_ring_refs(*xs_, kXsNoTxn, "/fe", 4);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->refs, std::vector<GrantRef>{9});
}

TEST_F(RingRefsTest, HostileValuesAreRefused) {
  put("ring-page-order", "5");
  EXPECT_EQ(read_ring_refs(*xs_, kXsNoTxn, "/fe", 4).error(), EINVAL);  // above the maximum we offered
  put("ring-page-order", "1");
  put("ring-ref0", "1");
  EXPECT_EQ(read_ring_refs(*xs_, kXsNoTxn, "/fe", 4).error(), EINVAL);  // ring-ref1 missing
  put("ring-ref1", "-3");
  EXPECT_EQ(read_ring_refs(*xs_, kXsNoTxn, "/fe", 4).error(), EINVAL);
  put("ring-page-order", "banana");
  EXPECT_EQ(read_ring_refs(*xs_, kXsNoTxn, "/fe", 4).error(), EINVAL);
  EXPECT_EQ(read_ring_refs(*xs_, kXsNoTxn, "/nowhere", 4).error(), ENOENT);
}

TEST_F(RingRefsTest, QueueDirectoriesUseTheSameRules) {
  put("queue-1/ring-page-order", "1");
  put("queue-1/ring-ref0", "20");
  put("queue-1/ring-ref1", "21");
  auto r = read_ring_refs(*xs_, kXsNoTxn, "/fe/queue-1", 4);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->refs, (std::vector<GrantRef>{20, 21}));
  put("tx-ring-ref", "30");
  auto tx = read_ring_refs(*xs_, kXsNoTxn, "/fe", 0, "tx-ring-ref");
  ASSERT_TRUE(tx.has_value());
  EXPECT_EQ(tx->refs, std::vector<GrantRef>{30});
}

}  // namespace
}  // namespace xenpath
