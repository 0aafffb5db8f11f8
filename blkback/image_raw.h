// RawImage: a raw disk image — a regular file (preallocated or sparse) or a
// block device — opened O_DIRECT (no second cache in dom0, and a completed
// write reached the device as it does with kernel blkback) and used through
// io_uring as a fixed file of each reactor that serves it.
//
//   read/write  IORING_OP_READV / WRITEV straight into the guest pages
//   flush       IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (fdatasync: the
//               device cache is flushed, metadata only as far as needed to
//               read the data back)
//   discard     files: IORING_OP_FALLOCATE(PUNCH_HOLE | KEEP_SIZE);
//               devices: BLKDISCARD / BLKSECDISCARD on the offload pool
//
// Threads: see image.h. The fd is shared (read-only state); each channel
// registers it in its own reactor's fixed-file table.
#pragma once

#include <memory>
#include <string>

#include "blkback/blk_offload.h"
#include "blkback/image.h"

namespace xenpath {

class RawImage final : public Image {
 public:
  struct Options {
    bool read_only = false;
    // O_DIRECT (default). Off only for filesystems without direct I/O; the
    // page cache then sits between guest and disk, and flush matters more.
    bool direct = true;
    // Offer secure discard on a block device (BLKSECDISCARD); Linux has no
    // cheap probe for it, so the operator says so.
    bool secure_discard = false;
    BlockingOffload* offload = nullptr;  // nullptr: BlockingOffload::shared()
  };

  static Result<std::unique_ptr<RawImage>> open(const std::string& path, const Options& opts) noexcept;
  ~RawImage() override;

  [[nodiscard]] const ImageInfo& info() const noexcept override { return info_; }
  [[nodiscard]] const std::string& path() const noexcept override { return path_; }
  Result<std::unique_ptr<ImageChannel>> open_channel(Reactor& reactor) noexcept override;

  [[nodiscard]] int fd() const noexcept { return fd_; }

 private:
  RawImage(std::string path, int fd, const ImageInfo& info, BlockingOffload* offload) noexcept
      : path_(std::move(path)), fd_(fd), info_(info), offload_(offload) {}

  std::string path_;
  int fd_ = -1;
  ImageInfo info_;
  BlockingOffload* offload_;
};

}  // namespace xenpath
