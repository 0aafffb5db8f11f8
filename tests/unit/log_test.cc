// Guest-triggered log lines are rate limited per device.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "common/log.h"
#include "common/log_format.h"

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

// The journal's stream is recognised by its device and inode only.
TEST(LogFormat, JournalStreamMatchesOnlyTheSameFile) {
  char path[] = "/tmp/xenpath-log-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::unlink(path);
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0);
  const std::string mine = fmt::format("{}:{}", st.st_dev, st.st_ino);
  EXPECT_TRUE(log_to_journal(mine.c_str(), fd));
  EXPECT_FALSE(log_to_journal(fmt::format("{}:{}", st.st_dev, st.st_ino + 1).c_str(), fd));
  EXPECT_FALSE(log_to_journal(fmt::format("{}:{}", st.st_dev + 1, st.st_ino).c_str(), fd));
  EXPECT_FALSE(log_to_journal(nullptr, fd));
  for (const char* bad : {"", ":", "12", "12:", ":34", "12:34x", "x12:34", "12 :34", "-1:5"}) {
    EXPECT_FALSE(log_to_journal(bad, fd)) << bad;
  }
  // Another open file of the same process: not the journal.
  const int other = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(other, 0);
  EXPECT_FALSE(log_to_journal(mine.c_str(), other));
  EXPECT_FALSE(log_to_journal(mine.c_str(), 999));  // not open
  ::close(other);
  ::close(fd);
}

std::string formatted(bool journal, spdlog::level::level_enum lvl, const char* text) {
  auto f = make_log_formatter(journal);
  spdlog::details::log_msg msg(spdlog::source_loc{}, "xenpath", lvl, text);
  spdlog::memory_buf_t buf;
  f->format(msg, buf);
  return fmt::to_string(buf);
}

TEST(LogFormat, JournalLinesArePriorityAndMessage) {
  EXPECT_EQ(formatted(true, spdlog::level::info, "vbd 5/51712: connected"), "<6>vbd 5/51712: connected\n");
  EXPECT_EQ(formatted(true, spdlog::level::warn, "w"), "<4>w\n");
  EXPECT_EQ(formatted(true, spdlog::level::err, "e"), "<3>e\n");
  EXPECT_EQ(formatted(true, spdlog::level::critical, "c"), "<2>c\n");
  EXPECT_EQ(formatted(true, spdlog::level::debug, "d"), "<7>d\n");
  EXPECT_EQ(formatted(true, spdlog::level::trace, "t"), "<7>t\n");
}

TEST(LogFormat, TerminalLinesCarryTimeLevelAndThread) {
  const std::string line = formatted(false, spdlog::level::warn, "vbd 5/51712: refused");
  // "2026-12-03 17:40:01.123 warning [1234] vbd 5/51712: refused\n"
  ASSERT_GT(line.size(), 24u);
  EXPECT_EQ(line[4], '-');
  EXPECT_EQ(line[10], ' ');
  EXPECT_EQ(line[19], '.');
  EXPECT_NE(line.find(" warning ["), std::string::npos) << line;
  EXPECT_NE(line.find("] vbd 5/51712: refused\n"), std::string::npos) << line;
  EXPECT_EQ(line.find('<'), std::string::npos) << line;
}

}  // namespace
}  // namespace xenpath
