// Helpers shared by xenpath-img's two halves (private to blkback/vhd_tool*.cc;
// the interface is vhd_tool.h): vhd_tool.cc holds create, snapshot, info,
// check and map, vhd_tool_copy.cc the copy engine (ChainReader, convert,
// coalesce). Blocking I/O on the caller's thread, as vhd_tool.h says.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "blkback/vhd_file.h"

namespace xenpath::img::internal {

inline VhdError fail(const std::string& path, const std::string& what, int code = EINVAL) {
  return VhdError{code, path + ": " + what};
}

// An fd closed on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

VhdStatus sync_fd(int fd, const std::string& path);
// Writes the BAT sectors holding `blocks` from the in-memory BAT.
VhdStatus write_bat_entries(const VhdLevel& lv, std::vector<uint32_t> blocks);
VhdStatus write_footer_at(const VhdLevel& lv, uint64_t off);

// Calls fn(first_sector, count) for each run of set bits in the first `sectors` bits.
template <typename Fn>
VhdStatus for_each_set_run(std::span<const uint8_t> bm, uint32_t sectors, Fn&& fn) {
  uint32_t s = 0;
  while (s < sectors) {
    const uint32_t run = vhd::bitmap_run(bm, s, sectors - s);
    if (run == 0) break;
    if (vhd::bitmap_test(bm, s)) {
      if (VhdStatus st = fn(s, run); !vhd_ok(st)) return st;
    }
    s += run;
  }
  return {};
}

}  // namespace xenpath::img::internal
