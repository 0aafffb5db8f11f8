// What the kernel says this process's I/O fetched from storage:
// /proc/self/io's read_bytes (reads that reached a block device, O_DIRECT
// included; page-cache hits not). Benchmarks and tests count base-image
// reads with it. Any thread; not for the datapath (it reads a file).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace xenpath {

// 0 when /proc/self/io is unreadable (no task I/O accounting).
inline uint64_t proc_self_read_bytes() {
  std::ifstream f("/proc/self/io");
  std::string key;
  uint64_t v = 0;
  while (f >> key >> v) {
    if (key == "read_bytes:") return v;
  }
  return 0;
}

}  // namespace xenpath
