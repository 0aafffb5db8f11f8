#include "blkback/image_uring.h"

#include <liburing.h>
#include <limits.h>
#include <linux/falloc.h>

#include <algorithm>

namespace xenpath {

UringImageChannel::~UringImageChannel() {
  if (polling_) reactor_.remove_poller(this);
  for (unsigned i = 0; i < nslots_; ++i) reactor_.unregister_file(slots_[i]);
}

Status UringImageChannel::attach() noexcept {
  if (reactor_.uring() == nullptr) return unexpected(ENXIO);
  reactor_.add_poller(this);
  polling_ = true;
  return ok();
}

UringImageChannel::FileRef UringImageChannel::add_file(int fd) noexcept {
  if (nslots_ < kMaxFiles) {
    if (auto slot = reactor_.register_file(fd)) {
      slots_[nslots_++] = *slot;
      stats_.fixed_file = true;
      return FileRef{static_cast<int>(*slot), true};
    }
  }
  return FileRef{fd, false};
}

void UringImageChannel::accept(ImageOp& op) noexcept {
  bind(op, this);
  ++stats_.submitted;
  ++stats_.in_flight;
}

void UringImageChannel::complete_later(ImageOp& op, int result) noexcept {
  set_error(op, result);
  ready_.push(op);
}

void UringImageChannel::complete(ImageOp& op, int result) noexcept {
  --stats_.in_flight;
  if (result < 0) ++stats_.failed;
  finish(op, result);
}

void UringImageChannel::start(ImageOp& op) noexcept {
  bind(op, this);
  // Keep FIFO order behind ops already waiting for an SQE.
  io_uring_sqe* sqe = waiting_.empty() ? reactor_.get_sqe() : nullptr;
  if (sqe == nullptr) {
    ++stats_.deferred;
    waiting_.push(op);
    return;
  }
  prep(op, sqe);
}

void UringImageChannel::prep(ImageOp& op, io_uring_sqe* sqe) noexcept {
  const FileRef f = file_of(op);
  // Beyond IOV_MAX the kernel refuses a vector; the rest follows as a
  // continuation, like a short transfer.
  const unsigned iovcnt = std::min<unsigned>(op.iovcnt(), IOV_MAX);
  switch (op.kind()) {
    case ImageOp::Kind::kRead:
      io_uring_prep_readv(sqe, f.fd, op.iov(), iovcnt, op.offset());
      break;
    case ImageOp::Kind::kWrite:
      io_uring_prep_writev(sqe, f.fd, op.iov(), iovcnt, op.offset());
      break;
    case ImageOp::Kind::kFlush:
      io_uring_prep_fsync(sqe, f.fd, IORING_FSYNC_DATASYNC);
      break;
    case ImageOp::Kind::kDiscard:
    case ImageOp::Kind::kSecureDiscard:
      io_uring_prep_fallocate(sqe, f.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(op.offset()),
                              static_cast<off_t>(op.remaining()));
      break;
  }
  if (f.fixed) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data(sqe, static_cast<UringCompletion*>(&op));
  ++stats_.sqes;
}

void UringImageChannel::on_cqe(ImageOp& op, int32_t res) noexcept {
  switch (op.account(res)) {
    case ImageOp::Step::kDone:
      transferred(op, 0);
      break;
    case ImageOp::Step::kResubmit:
      ++stats_.resubmits;
      start(op);
      break;
    case ImageOp::Step::kFailed:
      transferred(op, op.error());
      break;
  }
}

bool UringImageChannel::poll() noexcept {
  bool work = false;
  // Ops that found the SQ full: retry in order while SQEs are available.
  while (ImageOp* op = waiting_.head) {
    io_uring_sqe* sqe = reactor_.get_sqe();
    if (sqe == nullptr) break;
    waiting_.pop();
    prep(*op, sqe);
    work = true;
  }
  // Results decided without the kernel. Bounded by what was queued before
  // this poll (image_done may submit more).
  OpFifo ready = ready_;
  ready_ = {};
  while (ImageOp* op = ready.pop()) {
    complete(*op, op->error());
    work = true;
  }
  return work;
}

bool UringImageChannel::arm() noexcept { return !waiting_.empty() || !ready_.empty(); }

}  // namespace xenpath
