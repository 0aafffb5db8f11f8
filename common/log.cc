#include "common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <cstring>

#include "common/coarse_clock.h"
#include "common/log_format.h"

namespace xenpath {
namespace {

// %* : the syslog priority of the line's level.
class SyslogPriorityFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    char p = '6';  // LOG_INFO
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug:
        p = '7';
        break;  // LOG_DEBUG
      case spdlog::level::warn:
        p = '4';
        break;  // LOG_WARNING
      case spdlog::level::err:
        p = '3';
        break;  // LOG_ERR
      case spdlog::level::critical:
        p = '2';
        break;  // LOG_CRIT
      default:
        break;
    }
    dest.push_back(p);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<SyslogPriorityFlag>(); }
};

}  // namespace

bool log_to_journal(const char* journal_stream, int fd) noexcept {
  if (journal_stream == nullptr) return false;
  const char* end = journal_stream + std::strlen(journal_stream);
  unsigned long long dev = 0, ino = 0;
  auto [p, ec] = std::from_chars(journal_stream, end, dev);
  if (ec != std::errc() || p == end || *p != ':') return false;
  auto [q, ec2] = std::from_chars(p + 1, end, ino);
  if (ec2 != std::errc() || q != end || q == p + 1) return false;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev && static_cast<unsigned long long>(st.st_ino) == ino;
}

std::unique_ptr<spdlog::formatter> make_log_formatter(bool journal) {
  auto f = std::make_unique<spdlog::pattern_formatter>();
  if (journal) {
    f->add_flag<SyslogPriorityFlag>('*').set_pattern("<%*>%v");
  } else {
    f->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ [%t] %v");
  }
  return f;
}

void log_init(const std::string& level) noexcept {
  try {
    auto logger = spdlog::stderr_color_mt("xenpath");
    logger->set_formatter(make_log_formatter(log_to_journal(std::getenv("JOURNAL_STREAM"), STDERR_FILENO)));
    spdlog::set_default_logger(logger);
  } catch (...) {
    // Already initialised: keep the existing logger.
  }
  spdlog::set_level(spdlog::level::from_str(level));
}

bool DeviceLog::admit() noexcept {
  // Guest-triggered lines come in floods: a clock read each must not be a
  // system call (common/coarse_clock.h); a window of seconds needs no more.
  const auto now = CoarseClock::now();
  if (now - window_start_ >= kGuestWindow) {
    if (suppressed_in_window_ > 0) {
      emit(spdlog::level::warn, "{} guest-triggered messages suppressed", suppressed_in_window_);
    }
    window_start_ = now;
    in_window_ = 0;
    suppressed_in_window_ = 0;
  }
  if (in_window_ < kGuestBurst) {
    ++in_window_;
    return true;
  }
  ++suppressed_in_window_;
  ++suppressed_total_;
  return false;
}

}  // namespace xenpath
