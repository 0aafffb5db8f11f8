// Opening a VBD's image from its params: the format named by the prefix
// (raw:/aio:/file:/phy: raw, vhd: VHD) or, for a bare path, detected from
// the file: a VHD ends in its footer (cookie "conectix" in the last 512
// bytes; a dynamic or differencing one also starts with a copy of it).
//
// Threads: any (blocking reads of the file, at device creation).
#pragma once

#include <memory>
#include <string>

#include "blkback/blk_device.h"
#include "blkback/image.h"

namespace xenpath {

// "vhd" or "raw" for the file at `path`. A file whose last 512 bytes are
// not a footer but whose first 512 are (a VHD with its end damaged, e.g.
// truncated) is refused with EINVAL rather than served as a raw disk (its
// guest would see VHD metadata); `why` says so. Use "raw:" to force raw.
Result<std::string> detect_image_format(const std::string& path, std::string* why = nullptr) noexcept;

class BlockCache;

struct ImageOpenOptions {
  bool read_only = false;
  bool direct = true;  // O_DIRECT
  // The daemon's read cache for the image's immutable levels (VHD parents,
  // a read-only leaf); nullptr: none (the cache off, or off for this VBD).
  BlockCache* cache = nullptr;
};

// Opens the image `params` names. A refusal's reason (the file and the
// field, for VHD) goes to `why` when given.
Result<std::unique_ptr<Image>> open_vbd_image(const VbdParams& params, const ImageOpenOptions& opts,
                                              std::string* why = nullptr) noexcept;

}  // namespace xenpath
