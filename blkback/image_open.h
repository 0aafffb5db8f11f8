// Opening a VBD's image from its params: the format named by the prefix
// (raw:/aio:/file:/phy: raw, vhd: VHD) or, for a bare path, detected from
// the file: a VHD ends in its footer (cookie "conectix" in the last 512
// bytes; a dynamic or differencing one also starts with a copy of it).
//
// Threads: any (blocking reads of the file, at device creation).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "blkback/blk_device.h"
#include "blkback/image.h"

namespace xenpath {

// "vhd" or "raw" for the file at `path`. A file whose last 512 bytes are
// not a footer but whose first 512 are (a VHD with its end damaged, e.g.
// truncated) is refused with EINVAL rather than served as a raw disk (its
// guest would see VHD metadata); `why` says so. Use "raw:" to force raw.
Result<std::string> detect_image_format(const std::string& path, std::string* why = nullptr) noexcept;

// The probe's predicate (pure): whether `window`, the last 512 bytes of a
// file, makes a bare path open as VHD. It is the footer's cookie alone:
// whatever else the bytes hold, the file is then opened as VHD (and
// refused if the footer does not validate), never as raw.
[[nodiscard]] bool probes_as_vhd(std::span<const uint8_t, 512> window) noexcept;

// A writable raw image behind a bare path that was probed (QEMU's
// CVE-2008-2004 class): a guest owns every byte of its disk, so it could
// plant a VHD footer in the last 512 bytes of the file and have the next
// attach probe the file as a VHD, possibly a differencing one naming a
// dom0 file as its parent. The queue refuses a write reaching the disk's
// last writable block when the file would then probe as VHD (docs/blkback.md,
// "Format detection and trust").
//
// Threads: immutable after make_probe_guard() except `reported`; shared
// by the device's queues (any worker thread).
struct ProbeGuard {
  uint64_t block = 0;      // file offset of the last block a guest write can reach
  uint32_t block_len = 0;  // its length: the queue's I/O granularity (requests are whole blocks)
  uint64_t window = 0;     // file offset of the probe window: the file's size - 512
  // The window as the file holds it: the part past the writable end never
  // changes while served (no guest write reaches it).
  std::array<uint8_t, 512> file_window{};
  mutable std::atomic<bool> reported{false};  // the first refusal is logged, later ones only counted

  // Whether writing `data` (block_len bytes) as the block makes the file
  // probe as VHD (pure: `data` is a private copy the caller then writes).
  [[nodiscard]] bool refuses(std::span<const uint8_t> data) const noexcept;
};

// The guard for a file of `file_size` bytes whose guest-writable bytes
// are [0, writable_end) in whole blocks of `block_len` (a power of two, at
// least 512), the file's last 512 bytes being `file_window`; nullptr when
// no guest write can reach the probe window (pure).
std::unique_ptr<ProbeGuard> make_probe_guard(uint64_t file_size, uint64_t writable_end, uint32_t block_len,
                                             std::span<const uint8_t, 512> file_window) noexcept;

class BlockCache;

struct ImageOpenOptions {
  bool read_only = false;
  bool direct = true;  // O_DIRECT
  // The daemon's read cache for the image's immutable levels (VHD parents,
  // a read-only leaf); nullptr: none (the cache off, or off for this VBD).
  BlockCache* cache = nullptr;
};

// Opens the image `params` names. A refusal's reason (the file and the
// field, for VHD) goes to `why` when given; `probed_raw` says whether a
// bare path was probed and opened as raw.
Result<std::unique_ptr<Image>> open_vbd_image(const VbdParams& params, const ImageOpenOptions& opts,
                                              std::string* why = nullptr, bool* probed_raw = nullptr) noexcept;

// The ProbeGuard of the file at `path` (its size and last 512 bytes read
// now) for guest writes in whole blocks of `block_len` below `writable_end`;
// nullptr when none is needed.
Result<std::unique_ptr<ProbeGuard>> probe_guard_for(const std::string& path, uint64_t writable_end,
                                                    uint32_t block_len) noexcept;

}  // namespace xenpath
