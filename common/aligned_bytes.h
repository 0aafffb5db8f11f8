// AlignedBytes: a zeroed buffer aligned and padded to whole 4 KiB, as
// O_DIRECT I/O takes it, freed with free(). For buffers the datapath owns
// (VHD metadata, a probed raw disk's guarded last block), allocated at
// set-up or on first use, never per request.
//
// Threads: none of its own (owned like any unique_ptr). No guest memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace xenpath {

struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};
using AlignedBytes = std::unique_ptr<uint8_t[], FreeDeleter>;

// nullptr when out of memory.
inline AlignedBytes aligned_bytes(size_t n) noexcept {
  const size_t len = (n + 4095) / 4096 * 4096;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, len));
  if (p != nullptr) std::memset(p, 0, len);
  return AlignedBytes(p);
}

}  // namespace xenpath
