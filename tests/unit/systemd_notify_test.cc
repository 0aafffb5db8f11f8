// The sd_notify adapter against a socket of our own standing in for
// systemd's: the datagrams libsystemd sends, and the watchdog period it
// derives from the environment systemd sets.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "common/systemd_notify.h"

namespace xenpath {
namespace {

class NotifySocket : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd_, 0);
    path_ = "/tmp/xenpath-notify-" + std::to_string(::getpid());
    ::unlink(path_.c_str());
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path_.c_str(), sizeof(sa.sun_path) - 1);
    ASSERT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    timeval tv{.tv_sec = 2, .tv_usec = 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setenv("NOTIFY_SOCKET", path_.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
  std::string receive() {
    char buf[512];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    return n < 0 ? std::string("(nothing)") : std::string(buf, static_cast<size_t>(n));
  }
  int fd_ = -1;
  std::string path_;
};

TEST_F(NotifySocket, ReadyStatusWatchdogStopping) {
  EXPECT_TRUE(systemd_notify_enabled());
  systemd_notify_ready("2 device(s)\nsecond line");
  EXPECT_EQ(receive(), "READY=1\nSTATUS=2 device(s) second line");
  systemd_notify_status("3 device(s)", false);
  EXPECT_EQ(receive(), "STATUS=3 device(s)");
  systemd_notify_status("", true);
  EXPECT_EQ(receive(), "WATCHDOG=1\n");
  systemd_notify_stopping("bye");
  EXPECT_EQ(receive(), "STOPPING=1\nSTATUS=bye");
}

TEST_F(NotifySocket, WatchdogPeriodIsHalfOfOursOnly) {
  EXPECT_EQ(systemd_watchdog_period().count(), 0);  // no WatchdogSec=
  ::setenv("WATCHDOG_USEC", "3000000", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  EXPECT_EQ(systemd_watchdog_period().count(), 1500000);
  // Meant for another process (a parent that did not unset it).
  ::setenv("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str(), 1);
  EXPECT_EQ(systemd_watchdog_period().count(), 0);
}

TEST(SystemdNotify, WithoutASocketNothingHappens) {
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_FALSE(systemd_notify_enabled());
  systemd_notify_ready("x");  // must not fail or block
  systemd_notify_status("x", true);
}

}  // namespace
}  // namespace xenpath
