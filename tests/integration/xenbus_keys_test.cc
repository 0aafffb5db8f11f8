// Guest-written keys: strict decimals, single/multi-page ring references and
// the multi-queue count.
#include <gtest/gtest.h>

#include "common/xenbus/keys.h"
#include "sim/sim_xenstored.h"

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

TEST_F(RingRefsTest, QueueCountDefaultsToOneAndIsBounded) {
  DeviceLog log("test: ");
  auto n = read_queue_count(*xs_, kXsNoTxn, "/fe", 4, log);
  ASSERT_TRUE(n.has_value());  // absent: one queue
  EXPECT_EQ(*n, 1u);
  put("multi-queue-num-queues", "4");
  n = read_queue_count(*xs_, kXsNoTxn, "/fe", 4, log);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 4u);
  for (const char* bad : {"0", "5", "-1", "01", "two", ""}) {
    put("multi-queue-num-queues", bad);
    EXPECT_EQ(read_queue_count(*xs_, kXsNoTxn, "/fe", 4, log).error(), EINVAL) << '"' << bad << '"';
  }
}

// A store error is not the guest's: it passes through (a transaction to
// retry, a node the backend may not read), never as EINVAL, which would
// fail the device.
TEST_F(RingRefsTest, QueueCountPassesStoreErrorsThrough) {
  put("multi-queue-num-queues", "2");  // dom0's node: nobody else may read it
  auto guest = xsd_->connect(5);
  ASSERT_TRUE(guest.has_value());
  ASSERT_EQ((*guest)->read(kXsNoTxn, "/fe/multi-queue-num-queues").error(), EACCES);
  DeviceLog log("test: ");
  EXPECT_EQ(read_queue_count(**guest, kXsNoTxn, "/fe", 4, log).error(), EACCES);
}

}  // namespace
}  // namespace xenpath
