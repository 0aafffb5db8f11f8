// UringImageChannel: what every image channel that puts ImageOps on its
// reactor's io_uring shares (raw files and devices, VHD chains): files
// installed as fixed files of the ring, ops that found the submission queue
// full retried in FIFO order from poll(), short transfers and -EAGAIN
// resumed (ImageOp::account), results decided without the kernel delivered
// from poll() (never from inside submit()), and the channel's counters.
//
// A subclass says which file an op targets (file_of) and what a finished
// transfer means (transferred): a raw channel completes the caller's op, a
// VHD channel advances the request its sub-operation belongs to.
//
// Threads: the reactor thread that owns the channel (see image.h).
#pragma once

#include <cstdint>

#include "blkback/image.h"

namespace xenpath {

class UringImageChannel : public ImageChannel {
 public:
  ~UringImageChannel() override;
  [[nodiscard]] const ImageChannelStats& stats() const noexcept override { return stats_; }
  bool poll() noexcept override;
  bool arm() noexcept override;

 protected:
  // A file as SQEs name it: a fixed-file slot, or the plain fd.
  struct FileRef {
    int fd = -1;
    bool fixed = false;
  };

  explicit UringImageChannel(Reactor& reactor) noexcept : reactor_(reactor) {}
  // ENXIO without io_uring; then the channel polls on its reactor.
  Status attach() noexcept;
  // Installs `fd` as a fixed file when the table has room (else the plain
  // fd works, one file lookup per I/O more). Released at destruction.
  FileRef add_file(int fd) noexcept;

  // Counts `op` as accepted (submitted, in flight) and binds it here.
  void accept(ImageOp& op) noexcept;
  // Puts `op` (its kind, offset, iovecs) on the ring against file_of(op),
  // or in the FIFO of ops waiting for an SQE.
  void start(ImageOp& op) noexcept;
  // Completes an accepted op from the next poll() with `result`.
  void complete_later(ImageOp& op, int result) noexcept;
  // Completes an accepted op now (stats, then image_done).
  void complete(ImageOp& op, int result) noexcept;

  // The file `op` (started with start()) targets.
  [[nodiscard]] virtual FileRef file_of(const ImageOp& op) const noexcept = 0;
  // A started op is finished: 0 (every byte transferred) or a negative errno.
  virtual void transferred(ImageOp& op, int result) noexcept = 0;

  void on_cqe(ImageOp& op, int32_t res) noexcept final;

  Reactor& reactor_;
  ImageChannelStats stats_;

 private:
  void prep(ImageOp& op, io_uring_sqe* sqe) noexcept;

  static constexpr unsigned kMaxFiles = 32;
  unsigned slots_[kMaxFiles] = {};
  unsigned nslots_ = 0;
  bool polling_ = false;
  OpFifo waiting_;  // started, no SQE yet
  OpFifo ready_;    // decided without the kernel; result parked in the op's error
};

}  // namespace xenpath
