// The real adapters can only run on a Xen host; elsewhere they must fail to
// open cleanly (an errno, no crash), which is what a daemon's platform
// selection relies on.
#include <gtest/gtest.h>
#include <unistd.h>

#include "common/libxen/libxen_evtchn.h"
#include "common/libxen/libxen_gnttab.h"
#include "common/xen/platform.h"

namespace xenpath {
namespace {

bool on_xen() { return access("/dev/xen", F_OK) == 0; }

TEST(LibxenAdaptersTest, OpenGrantTableOnXen) {
  if (!on_xen()) GTEST_SKIP() << "/dev/xen absent: not running on Xen";
  auto gt = LibxenGrantTable::open();
  ASSERT_TRUE(gt) << error_string(gt.error());
  EXPECT_TRUE((*gt)->set_max_grants(1024));
  // An empty copy batch is a no-op, a malformed one never reaches the kernel.
  EXPECT_EQ(*(*gt)->copy({}), 0u);
  GrantCopySegment local_to_local{};
  EXPECT_EQ((*gt)->copy(std::span(&local_to_local, 1)).error(), EINVAL);
}

TEST(LibxenAdaptersTest, OpenEventChannelOnXen) {
  if (!on_xen()) GTEST_SKIP() << "/dev/xen absent: not running on Xen";
  auto ec = LibxenEventChannel::open();
  ASSERT_TRUE(ec) << error_string(ec.error());
  EXPECT_GE((*ec)->fd(), 0);
  // Nothing bound yet: the non-blocking fd has nothing to read.
  EXPECT_EQ((*ec)->pending().error(), EAGAIN);
}

TEST(LibxenAdaptersTest, OpenFailsWithAnErrnoWithoutXen) {
  if (on_xen()) GTEST_SKIP() << "running on Xen";
  auto gt = LibxenGrantTable::open();
  ASSERT_FALSE(gt);
  EXPECT_NE(gt.error(), 0);
  auto ec = LibxenEventChannel::open();
  ASSERT_FALSE(ec);
  EXPECT_NE(ec.error(), 0);
}

}  // namespace
}  // namespace xenpath

namespace xenpath {
namespace {

TEST(LibxenPlatformTest, ChosenOnlyWhenXenIsThere) {
  auto p = open_libxen_platform();
  if (!xen_available()) {
    ASSERT_FALSE(p.has_value());
    EXPECT_EQ(p.error(), ENODEV);
    return;
  }
  ASSERT_TRUE(p.has_value()) << error_string(p.error());
  EXPECT_EQ((*p)->name(), "xen");
  EXPECT_TRUE((*p)->open_grant_table().has_value());
  EXPECT_TRUE((*p)->open_event_channel().has_value());
  EXPECT_TRUE((*p)->open_xenstore().has_value());
}

}  // namespace
}  // namespace xenpath
