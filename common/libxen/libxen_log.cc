#include "common/libxen/libxen_log.h"

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>

extern "C" {
#include <xentoollog.h>
}

namespace xenpath {

// The xentoollog_logger the library calls: its first member is the
// library's struct, so the callback finds its LibxenLog from the pointer.
struct LibxenLog::Xtl {
  xentoollog_logger vtable{};
  LibxenLog* owner = nullptr;
};

namespace {

LibxenLog::Level fold(xentoollog_level level) noexcept {
  if (level >= XTL_ERROR) return LibxenLog::Level::kError;
  if (level >= XTL_WARN) return LibxenLog::Level::kWarn;
  if (level >= XTL_INFO) return LibxenLog::Level::kInfo;
  return LibxenLog::Level::kDebug;
}

void vmessage(xentoollog_logger* logger, xentoollog_level level, int errnoval, const char* context, const char* format,
              va_list al) {
  auto* x = reinterpret_cast<LibxenLog::Xtl*>(logger);
  char text[512];
  const int n = std::vsnprintf(text, sizeof text, format, al);
  if (n < 0) return;
  x->owner->message(fold(level), errnoval, context != nullptr ? context : "", text);
}

void destroy(xentoollog_logger*) {}  // owned by LibxenLog, not by the library

}  // namespace

LibxenLog::LibxenLog(std::string name) : xtl_(std::make_unique<Xtl>()), log_(std::move(name)) {
  xtl_->vtable.vmessage = vmessage;
  xtl_->vtable.progress = nullptr;
  xtl_->vtable.destroy = destroy;
  xtl_->owner = this;
}

LibxenLog::~LibxenLog() = default;

Result<std::unique_ptr<LibxenLog>> LibxenLog::make(std::string_view name) noexcept {
  try {
    return std::make_unique<LibxenLog>(std::string(name));
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void* LibxenLog::xtl() noexcept { return &xtl_->vtable; }

bool LibxenLog::message(Level level, int errnoval, std::string_view context, std::string_view text) noexcept {
  std::lock_guard lock(mu_);
  const std::string_view sep = errnoval >= 0 ? ": " : "";
  const char* err = errnoval >= 0 ? std::strerror(errnoval) : "";  // under mu_
  switch (level) {
    case Level::kError:
    case Level::kWarn:
      return log_.guest("{}: {}{}{}", context, text, sep, err);
    case Level::kInfo:
      log_.info("{}: {}{}{}", context, text, sep, err);
      return true;
    case Level::kDebug:
      log_.debug("{}: {}{}{}", context, text, sep, err);
      return true;
  }
  return false;
}

uint64_t LibxenLog::suppressed() const noexcept {
  std::lock_guard lock(mu_);
  return log_.suppressed_total();
}

}  // namespace xenpath
