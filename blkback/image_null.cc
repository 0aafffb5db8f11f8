#include "blkback/image_null.h"

#include <bit>

namespace xenpath {

namespace {

// Reactor thread only. Ops wait in an intrusive FIFO until the next poll().
class NullImageChannel final : public ImageChannel {
 public:
  NullImageChannel(const ImageInfo& info, Reactor& reactor) noexcept : info_(info), reactor_(reactor) {}
  ~NullImageChannel() override { reactor_.remove_poller(this); }

  void start() noexcept { reactor_.add_poller(this); }

  void submit(ImageOp& op) noexcept override {
    bind(op, this);
    ++stats_.submitted;
    ++stats_.in_flight;
    int result = 0;
    const bool writes = op.kind() != ImageOp::Kind::kRead && op.kind() != ImageOp::Kind::kFlush;
    if (writes && info_.read_only) result = -EROFS;
    set_error(op, result);
    queued_.push(op);
  }

  const ImageChannelStats& stats() const noexcept override { return stats_; }

  bool poll() noexcept override {
    // Only what was queued before this poll: image_done() may submit more.
    OpFifo ready = queued_;
    queued_ = {};
    const bool work = !ready.empty();
    while (ImageOp* op = ready.pop()) {
      --stats_.in_flight;
      if (op->error() < 0) ++stats_.failed;
      finish(*op, op->error());
    }
    return work;
  }

  bool arm() noexcept override { return !queued_.empty(); }

 protected:
  void on_cqe(ImageOp& /*op*/, int32_t /*res*/) noexcept override {}  // never submits to the kernel

 private:
  const ImageInfo& info_;
  Reactor& reactor_;
  OpFifo queued_;
  ImageChannelStats stats_;
};

}  // namespace

Result<std::unique_ptr<NullImage>> NullImage::create(const std::string& name, uint64_t size_bytes, uint32_t block_size,
                                                     bool read_only) noexcept {
  if (block_size < 512 || block_size > 4096 || !std::has_single_bit(block_size) || size_bytes == 0 ||
      size_bytes % block_size != 0) {
    return unexpected(EINVAL);
  }
  ImageInfo info;
  info.size_bytes = size_bytes;
  info.logical_block_size = block_size;
  info.physical_block_size = block_size;
  info.memory_align = block_size;
  info.read_only = read_only;
  info.discard = !read_only;
  info.discard_granularity = read_only ? 0 : block_size;
  try {
    std::unique_ptr<NullImage> img(new NullImage(name, info));
    return img;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<std::unique_ptr<ImageChannel>> NullImage::open_channel(Reactor& reactor) noexcept {
  auto ch = std::unique_ptr<NullImageChannel>(new (std::nothrow) NullImageChannel(info_, reactor));
  if (!ch) return unexpected(ENOMEM);
  ch->start();
  return std::unique_ptr<ImageChannel>(std::move(ch));
}

}  // namespace xenpath
