// Port device arguments from the operator's template (no EAL needed).
#include "netback/port_dpdk.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace xenpath {
namespace {

TEST(NetDevargs, DefaultTemplateNamesTheTapLikeKernelNetback) {
  auto r = expand_devargs(kDefaultVifDevargs, 12, 3);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, "net_tap_vif12_3,iface=vif12.3");
}

TEST(NetDevargs, PlaceholdersMayRepeatAndAppearAnywhere) {
  auto r = expand_devargs("net_memif{domid}x{devid},socket=/run/xp/{domid}-{devid}.sock,id={devid}", 7, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, "net_memif7x0,socket=/run/xp/7-0.sock,id=0");
  auto plain = expand_devargs("0000:03:00.0", 1, 1);
  ASSERT_TRUE(plain);
  EXPECT_EQ(*plain, "0000:03:00.0");
  auto big = expand_devargs("net_null{domid}_{devid}", 0x7FEF, 4294967295u);
  ASSERT_TRUE(big);
  EXPECT_EQ(*big, "net_null32751_4294967295");
}

TEST(NetDevargs, TyposFailInsteadOfNamingDevicesOddly) {
  for (const char* bad :
       {"net_tap{domain}", "net_tap{domid", "net_tap}x", "net_tap{}", "", ",iface=x", "net_tap{DOMID}"}) {
    auto r = expand_devargs(bad, 1, 2);
    EXPECT_FALSE(r) << bad;
    EXPECT_EQ(r.error(), EINVAL) << bad;
  }
}

TEST(NetDevargs, DefaultEalArgsNeedNoHugepagesAndTakeNoNicUnasked) {
  DpdkEnvOptions o;
  o.memory_mb = 64;
  auto a = dpdk_default_eal_args(o);
  auto has = [&](const std::string& s) { return std::find(a.begin(), a.end(), s) != a.end(); };
  EXPECT_TRUE(has("--no-huge"));
  EXPECT_TRUE(has("--no-shconf"));
  EXPECT_TRUE(has("--no-pci"));
  EXPECT_FALSE(has("--in-memory"));
  auto m = std::find(a.begin(), a.end(), "-m");
  ASSERT_NE(m, a.end());
  ASSERT_NE(m + 1, a.end());
  EXPECT_EQ(*(m + 1), "64");
  EXPECT_TRUE(std::any_of(a.begin(), a.end(), [](const std::string& s) { return s.rfind("--lcores=0@(", 0) == 0; }));
  o.pci_allow = {"0000:03:00.0", "0000:03:00.1"};
  o.log_level = "pmd.net.tap:debug";
  a = dpdk_default_eal_args(o);
  EXPECT_FALSE(has("--no-pci"));
  EXPECT_EQ(std::count(a.begin(), a.end(), "-a"), 2);
  EXPECT_TRUE(has("0000:03:00.1"));
  EXPECT_TRUE(has("--log-level=pmd.net.tap:debug"));
}

}  // namespace
}  // namespace xenpath
