// Guest-triggered log lines are rate limited per device.
#include <gtest/gtest.h>

#include "common/log.h"

namespace xenpath {
namespace {

TEST(DeviceLog, GuestMessagesAreRateLimited) {
  log_init("off");  // the limiter decides before the level does
  DeviceLog log("vbd 5/51712: ");
  EXPECT_EQ(log.prefix(), "vbd 5/51712: ");
  uint32_t logged = 0;
  for (int i = 0; i < 1000; ++i) logged += log.guest("bad request {}", i) ? 1 : 0;
  EXPECT_EQ(logged, DeviceLog::kGuestBurst);
  EXPECT_EQ(log.suppressed_total(), 1000u - DeviceLog::kGuestBurst);
  // Another device has its own budget.
  DeviceLog other("vif 6/0: ");
  EXPECT_TRUE(other.guest("first"));
}

}  // namespace
}  // namespace xenpath
