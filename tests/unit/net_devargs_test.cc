// Port device arguments from the operator's template (no EAL needed).
#include "netback/port_dpdk.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace xenpath {
namespace {

TEST(NetDevargs, DefaultTemplatesNameTheInterfaceLikeKernelNetback) {
  auto r = expand_devargs(kTapVifDevargs, 12, 3);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, "net_tap_vif12_3,iface=vif12.3");
  auto v = expand_devargs(kVhostNetVifDevargs, 12, 3, 4);
  ASSERT_TRUE(v);
  EXPECT_EQ(*v, "net_virtio_user_vif12_3,path=/dev/vhost-net,iface=vif12.3,queues=4,cq=1,queue_size=1024,mrg_rxbuf=1");
}

TEST(NetDevargs, DefaultIsVhostNetExactlyWhenItCanBeOpened) {
  std::string why;
  const bool usable = vhost_net_usable(&why);
  EXPECT_EQ(default_vif_devargs(), usable ? kVhostNetVifDevargs : kTapVifDevargs);
  if (!usable) {
    EXPECT_NE(why.find("/dev/vhost-net"), std::string::npos) << why;
  }
}

TEST(NetDevargs, PlaceholdersMayRepeatAndAppearAnywhere) {
  auto r = expand_devargs("net_memif{domid}x{devid},socket=/run/xp/{domid}-{devid}.sock,id={devid}", 7, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, "net_memif7x0,socket=/run/xp/7-0.sock,id=0");
  auto plain = expand_devargs("0000:03:00.0", 1, 1);
  ASSERT_TRUE(plain);
  EXPECT_EQ(*plain, "0000:03:00.0");
  auto q = expand_devargs("x{queues}_{queues}", 1, 1, 65535);
  ASSERT_TRUE(q);
  EXPECT_EQ(*q, "x65535_65535");
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
