// NullImage: a disk of a given size whose I/O completes at once without
// touching data (reads leave the guest's pages as they were, writes go
// nowhere, flush and discard succeed). It measures what the backend itself
// costs per request: everything of a real request (ring, validation, grant
// maps, iovecs, answers, notifications) except the storage. QEMU's
// null-co driver plays the same role. Never for guests' real disks.
//
// Threads: see image.h. A NullImage is immutable; each channel belongs to
// its reactor thread and completes ops from its poll(), never inside
// submit() (the ImageChannel contract).
#pragma once

#include <memory>
#include <string>

#include "blkback/image.h"

namespace xenpath {

class NullImage final : public Image {
 public:
  // EINVAL unless size_bytes is a positive multiple of block_size (a power
  // of two, 512 to 4096).
  static Result<std::unique_ptr<NullImage>> create(const std::string& name, uint64_t size_bytes,
                                                   uint32_t block_size = 512, bool read_only = false) noexcept;

  [[nodiscard]] const ImageInfo& info() const noexcept override { return info_; }
  [[nodiscard]] const std::string& path() const noexcept override { return name_; }
  Result<std::unique_ptr<ImageChannel>> open_channel(Reactor& reactor) noexcept override;

 private:
  NullImage(std::string name, const ImageInfo& info) noexcept : name_(std::move(name)), info_(info) {}
  std::string name_;
  ImageInfo info_;
};

}  // namespace xenpath
