#include "blkback/image.h"

#include <cerrno>

namespace xenpath {

void ImageOp::prep(Kind k, iovec* iov, unsigned iovcnt, uint64_t offset, uint64_t length) noexcept {
  kind_ = k;
  iov_ = iov;
  iovcnt_ = iov == nullptr ? 0 : iovcnt;
  offset_ = offset;
  retries_ = 0;
  error_ = 0;
  if (k == Kind::kRead || k == Kind::kWrite) {
    uint64_t total = 0;
    for (unsigned i = 0; i < iovcnt_; ++i) total += iov_[i].iov_len;
    remaining_ = total;
  } else {
    remaining_ = length;
  }
}

ImageOp::Step ImageOp::account(int32_t res) noexcept {
  if (res == -EAGAIN || res == -EINTR) {
    // The kernel could not take it now (a device queue full with NOWAIT
    // semantics, a signal): try the same remainder again, a bounded number
    // of times in a row.
    if (++retries_ > kMaxRetries) {
      error_ = res;
      return Step::kFailed;
    }
    return Step::kResubmit;
  }
  if (res < 0) {
    error_ = res;
    return Step::kFailed;
  }
  if (kind_ != Kind::kRead && kind_ != Kind::kWrite) {
    // fsync / fallocate: all or nothing.
    return Step::kDone;
  }
  const auto done = static_cast<uint64_t>(res);
  if (done > remaining_) {
    error_ = -EIO;
    return Step::kFailed;
  }
  if (done == remaining_) {
    remaining_ = 0;
    return Step::kDone;
  }
  if (done == 0) {
    // Validation keeps requests inside the image: a transfer that makes no
    // progress means the image shrank (or the device went away).
    error_ = -EIO;
    return Step::kFailed;
  }
  retries_ = 0;
  offset_ += done;
  remaining_ -= done;
  uint64_t skip = done;
  while (skip != 0 && iovcnt_ != 0) {
    if (skip >= iov_->iov_len) {
      skip -= iov_->iov_len;
      ++iov_;
      --iovcnt_;
    } else {
      iov_->iov_base = static_cast<char*>(iov_->iov_base) + skip;
      iov_->iov_len -= skip;
      skip = 0;
    }
  }
  return Step::kResubmit;
}

void ImageOp::on_complete(int32_t res, uint32_t /*cqe_flags*/) noexcept {
  if (channel_ != nullptr) channel_->on_cqe(*this, res);
}

}  // namespace xenpath
