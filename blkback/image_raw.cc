#include "blkback/image_raw.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <fstream>
#include <string>

#include "blkback/image_uring.h"
#include "common/log.h"

namespace xenpath {

namespace {

// A queue attribute of block device `dev` from sysfs (a partition's queue
// lives in its parent's directory). 0 when absent.
uint64_t sysfs_queue_value(dev_t dev, const char* attr) noexcept {
  try {
    const std::string base = "/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
    for (const char* rel : {"/queue/", "/../queue/"}) {
      std::ifstream f(base + rel + attr);
      uint64_t v = 0;
      if (f >> v) return v;
    }
  } catch (...) {
  }
  return 0;
}

uint64_t sysfs_dev_value(dev_t dev, const char* attr) noexcept {
  try {
    std::ifstream f("/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev)) + "/" + attr);
    uint64_t v = 0;
    if (f >> v) return v;
  } catch (...) {
  }
  return 0;
}

bool power_of_two_block(uint64_t v) noexcept { return v >= 512 && v <= 65536 && std::has_single_bit(v); }

Status probe_block_device(int fd, const struct stat& st, const RawImage::Options& opts, ImageInfo& info) noexcept {
  uint64_t bytes = 0;
  if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) return unexpected_errno();
  int lbs = 0;
  if (::ioctl(fd, BLKSSZGET, &lbs) != 0) return unexpected_errno();
  unsigned int pbs = 0;
  if (::ioctl(fd, BLKPBSZGET, &pbs) != 0) pbs = static_cast<unsigned>(lbs);
  if (!power_of_two_block(static_cast<uint64_t>(lbs))) return unexpected(EINVAL);
  info.block_device = true;
  info.logical_block_size = static_cast<uint32_t>(lbs);
  info.physical_block_size = std::max<uint32_t>(pbs, info.logical_block_size);
  // Conservative: the device's DMA alignment can be finer, never coarser.
  info.memory_align = info.logical_block_size;
  info.size_bytes = bytes - bytes % info.logical_block_size;
  if (!info.read_only) {
    const uint64_t max_discard = sysfs_queue_value(st.st_rdev, "discard_max_bytes");
    if (max_discard != 0) {
      info.discard = true;
      const uint64_t gran = sysfs_queue_value(st.st_rdev, "discard_granularity");
      info.discard_granularity = static_cast<uint32_t>(gran != 0 ? gran : info.logical_block_size);
      info.discard_alignment = static_cast<uint32_t>(sysfs_dev_value(st.st_rdev, "discard_alignment"));
      info.secure_discard = opts.secure_discard;
    }
  }
  return ok();
}

Status probe_regular_file(int fd, const struct stat& st, ImageInfo& info) noexcept {
  uint32_t offset_align = 512;
  uint32_t mem_align = 512;
  if (info.direct) {
    struct statx stx {};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN) != 0) {
      // The filesystem says what O_DIRECT needs; 0 means it cannot do it.
      if (stx.stx_dio_offset_align == 0) return unexpected(EINVAL);
      offset_align = std::max<uint32_t>(stx.stx_dio_offset_align, 512);
      mem_align = std::max<uint32_t>(stx.stx_dio_mem_align, 1);
    } else {
      // Older kernels: the logical block size of the filesystem's device.
      const uint64_t lbs = sysfs_queue_value(st.st_dev, "logical_block_size");
      if (power_of_two_block(lbs)) offset_align = static_cast<uint32_t>(lbs);
      mem_align = offset_align;
    }
  }
  if (!power_of_two_block(offset_align)) return unexpected(EINVAL);
  info.logical_block_size = offset_align;
  info.memory_align = mem_align;
  const uint64_t blksize = st.st_blksize > 0 ? static_cast<uint64_t>(st.st_blksize) : offset_align;
  info.physical_block_size =
      power_of_two_block(blksize) && blksize >= offset_align ? static_cast<uint32_t>(blksize) : offset_align;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  info.size_bytes = size - size % info.logical_block_size;
  if (!info.read_only) {
    // Punching a hole past EOF with KEEP_SIZE changes nothing and tells
    // whether the filesystem can punch at all.
    const off_t probe = static_cast<off_t>((size + blksize - 1) / blksize * blksize);
    if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, probe, static_cast<off_t>(blksize)) == 0) {
      info.discard = true;
      info.discard_granularity = static_cast<uint32_t>(blksize);
      info.discard_alignment = 0;
    }
  }
  return ok();
}

// Channel of one RawImage on one reactor. Reactor thread only.
class RawImageChannel final : public UringImageChannel {
 public:
  RawImageChannel(const RawImage& image, Reactor& reactor, BlockingOffload& offload) noexcept
      : UringImageChannel(reactor), image_(image), offload_(offload) {}

  Status init() noexcept {
    XP_TRY(attach());
    file_ = add_file(image_.fd());
    return ok();
  }

  void submit(ImageOp& op) noexcept override {
    accept(op);
    const ImageInfo& info = image_.info();
    switch (op.kind()) {
      case ImageOp::Kind::kRead:
      case ImageOp::Kind::kFlush:
        break;
      case ImageOp::Kind::kWrite:
        if (info.read_only) return complete_later(op, -EROFS);
        break;
      case ImageOp::Kind::kDiscard:
      case ImageOp::Kind::kSecureDiscard: {
        const bool secure = op.kind() == ImageOp::Kind::kSecureDiscard;
        if (info.read_only) return complete_later(op, -EROFS);
        if (!info.discard || (secure && !info.secure_discard)) return complete_later(op, -EOPNOTSUPP);
        if (op.remaining() == 0) return complete_later(op, 0);  // nothing to discard: done
        if (info.block_device) return offload_discard(op, secure);
        break;
      }
    }
    start(op);
  }

 protected:
  FileRef file_of(const ImageOp& /*op*/) const noexcept override { return file_; }
  void transferred(ImageOp& op, int result) noexcept override { complete(op, result); }

 private:
  void offload_discard(ImageOp& op, bool secure) noexcept {
    const int fd = image_.fd();
    const uint64_t offset = op.offset();
    const uint64_t length = op.remaining();
    ImageOp* target = &op;
    const bool queued = offload_.run(
        reactor_,
        [fd, offset, length, secure] {
          uint64_t range[2] = {offset, length};
          return ::ioctl(fd, secure ? BLKSECDISCARD : BLKDISCARD, range) == 0 ? 0 : -errno;
        },
        [this, target](int res) { complete(*target, res); });
    if (!queued) return complete_later(op, -ENOMEM);
    ++stats_.offloaded;
  }

  const RawImage& image_;
  BlockingOffload& offload_;
  FileRef file_;
};

}  // namespace

Result<std::unique_ptr<RawImage>> RawImage::open(const std::string& path, const Options& opts) noexcept {
  int flags = (opts.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (opts.direct) flags |= O_DIRECT;
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return unexpected_errno();
  auto fail = [fd](int err) -> Result<std::unique_ptr<RawImage>> {
    ::close(fd);
    return unexpected(err);
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(errno);
  ImageInfo info;
  info.read_only = opts.read_only;
  info.direct = opts.direct;
  Status probed;
  if (S_ISBLK(st.st_mode)) {
    probed = probe_block_device(fd, st, opts, info);
  } else if (S_ISREG(st.st_mode)) {
    probed = probe_regular_file(fd, st, info);
  } else {
    return fail(EINVAL);
  }
  if (!probed) return fail(probed.error());
  std::unique_ptr<RawImage> img(
      new (std::nothrow) RawImage(path, fd, info, opts.offload != nullptr ? opts.offload : &BlockingOffload::shared()));
  if (!img) return fail(ENOMEM);
  return img;
}

RawImage::~RawImage() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<ImageChannel>> RawImage::open_channel(Reactor& reactor) noexcept {
  auto ch = std::unique_ptr<RawImageChannel>(new (std::nothrow) RawImageChannel(*this, reactor, *offload_));
  if (!ch) return unexpected(ENOMEM);
  XP_TRY(ch->init());
  return std::unique_ptr<ImageChannel>(std::move(ch));
}

}  // namespace xenpath
