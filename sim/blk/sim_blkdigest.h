// The whole disk read in order through one ring, hashed (SHA-256) as it
// comes: what `xenpath-sim blkback --image ... --read-only` prints, so that
// what the backend serves compares with `qemu-img convert -O raw | sha256sum`.
//
// Threads: the guest thread that owns the ring.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "common/result.h"
#include "sim/blk/sim_blkfront.h"

namespace xenpath::sim {

struct BlkDigest {
  std::string sha256;  // lowercase hex
  uint64_t ios = 0;
  uint64_t bytes = 0;
};

// Reads [0, disk_bytes) in `chunk`-byte requests (a multiple of 512), up to
// `queue_depth` in flight, and hashes them in disk order. EIO when the
// backend answers an error, ETIMEDOUT when it stops answering.
Result<BlkDigest> blk_read_digest(SimBlkfront& front, uint64_t disk_bytes, uint32_t chunk, unsigned queue_depth,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(30)) noexcept;

}  // namespace xenpath::sim
