// The logger libxengnttab/libxenevtchn get instead of their own stderr one:
// a guest streaming bad grant references makes the library report every
// failed map, and those lines must be as bounded as xenpath's own.
#include <gtest/gtest.h>

#include <cstdarg>

extern "C" {
#include <xentoollog.h>
}

#include "common/libxen/libxen_log.h"

namespace xenpath {
namespace {

// What the library does: a printf-style message through the logger's vtable.
void library_says(xentoollog_logger* l, xentoollog_level level, int errnoval, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
void library_says(xentoollog_logger* l, xentoollog_level level, int errnoval, const char* fmt, ...) {
  va_list al;
  va_start(al, fmt);
  l->vmessage(l, level, errnoval, "gnttab", fmt, al);
  va_end(al);
}

TEST(LibxenLog, LibraryErrorsAreRateLimitedLikeGuestMessages) {
  log_init("off");  // the limiter decides before the level does
  LibxenLog log("gnttab: ");
  auto* xtl = static_cast<xentoollog_logger*>(log.xtl());
  ASSERT_NE(xtl, nullptr);
  ASSERT_NE(xtl->vmessage, nullptr);
  for (int i = 0; i < 10000; ++i) library_says(xtl, XTL_ERROR, 22, "mmap failed (%d)", i);
  EXPECT_EQ(log.suppressed(), 10000u - DeviceLog::kGuestBurst);
  // Warnings share the budget; debug detail is not limited (and off by default).
  EXPECT_FALSE(log.message(LibxenLog::Level::kWarn, -1, "gnttab", "more"));
  EXPECT_TRUE(log.message(LibxenLog::Level::kDebug, -1, "gnttab", "detail"));
  // The library may destroy a logger it was given; this one stays ours.
  xtl->destroy(xtl);
  EXPECT_EQ(log.suppressed(), 10001u - DeviceLog::kGuestBurst);
}

}  // namespace
}  // namespace xenpath
