// Helpers shared by the blkback integration tests (not a test file itself).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace xenpath::blktest {

// A temp file of `size` bytes (sparse, or allocated), removed at the end.
struct TempFile {
  explicit TempFile(uint64_t size, bool preallocate = false) {
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl = std::string(dir != nullptr ? dir : "/tmp") + "/xenpath-blk-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    const int fd = ::mkstemp(buf.data());
    EXPECT_GE(fd, 0);
    path = buf.data();
    if (preallocate) {
      EXPECT_EQ(::fallocate(fd, 0, 0, static_cast<off_t>(size)), 0);
    } else {
      EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
    }
    ::close(fd);
  }
  ~TempFile() { ::unlink(path.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  // Reads the file's bytes (buffered, through the page cache).
  std::vector<std::byte> read(uint64_t offset, size_t len) const {
    std::vector<std::byte> out(len);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, out.data(), len, static_cast<off_t>(offset)), static_cast<ssize_t>(len));
    ::close(fd);
    return out;
  }
  std::string path;
};

// Deterministic content: every byte depends on its absolute image offset
// and a seed, so misplaced sectors show.
inline void fill_pattern(std::byte* p, size_t len, uint64_t offset, uint32_t seed) {
  for (size_t i = 0; i < len; ++i) {
    const uint64_t o = offset + i;
    p[i] = static_cast<std::byte>((o * 2654435761u + (o >> 9) * 97 + seed * 131 + 1) & 0xff);
  }
}

}  // namespace xenpath::blktest
