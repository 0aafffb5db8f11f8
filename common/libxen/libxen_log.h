// LibxenLog: where libxengnttab and libxenevtchn report their errors.
// Opened with a null logger, each handle prints to stderr by itself, outside
// xenpath's logging: libxengnttab writes "gnttab: error: mmap failed:
// Invalid argument" for every failed map, so a guest that streams bad
// grant references grows dom0's log without bound. Each libxen handle gets
// this logger instead: the library's messages go to spdlog with the
// library's context, warnings and errors through a DeviceLog rate limiter
// (whatever a guest can cause counts as guest-triggered), progress and
// detail at debug.
//
// Thread: the handle's owner (a reactor) calls it through the library; a
// mutex makes it safe for a handle shared by the control thread and a
// worker. It touches no guest memory. It must outlive the handle it is
// given to.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "common/log.h"
#include "common/result.h"

namespace xenpath {

class LibxenLog {
 public:
  // Severity as libxentoollog words it, folded to what xenpath does with it.
  enum class Level : uint8_t { kDebug, kInfo, kWarn, kError };

  explicit LibxenLog(std::string name);
  // The same without exceptions: ENOMEM.
  static Result<std::unique_ptr<LibxenLog>> make(std::string_view name) noexcept;
  ~LibxenLog();
  LibxenLog(const LibxenLog&) = delete;
  LibxenLog& operator=(const LibxenLog&) = delete;

  // The xentoollog_logger* to pass to xengnttab_open()/xenevtchn_open().
  [[nodiscard]] void* xtl() noexcept;

  // One message (what the library's vmessage callback hands over). Returns
  // whether it was logged. errnoval < 0: none.
  bool message(Level level, int errnoval, std::string_view context, std::string_view text) noexcept;

  [[nodiscard]] uint64_t suppressed() const noexcept;

  struct Xtl;  // the library's logger struct and a pointer back (libxen_log.cc)

 private:
  std::unique_ptr<Xtl> xtl_;
  mutable std::mutex mu_;
  DeviceLog log_;
};

}  // namespace xenpath
