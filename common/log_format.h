// The log line format (common/log.cc's log_init picks it): one for a
// terminal or a file, one for the journal.
//
// Threads: pure functions.
#pragma once

#include <spdlog/formatter.h>

#include <memory>

namespace xenpath {

// Whether `fd` is the stream systemd connected to the journal: it names that
// stream in JOURNAL_STREAM as "<device>:<inode>" (systemd.exec(5)). Passed
// on to children or redirected (a shell's 2>file, a pipe), the numbers no
// longer match `fd` and the terminal format applies.
[[nodiscard]] bool log_to_journal(const char* journal_stream, int fd) noexcept;

// A terminal or a file: time, level, thread, message. The journal stamps
// time and process itself and takes the priority from a "<N>" prefix
// (sd-daemon(3), syslog's numbers): "<4>vbd 5/51712: ...".
std::unique_ptr<spdlog::formatter> make_log_formatter(bool journal);

}  // namespace xenpath
