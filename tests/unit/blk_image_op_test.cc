// ImageOp's bookkeeping of partial transfers: what a channel does after each
// completion (continue the remainder, retry, give up), and that the iovec
// array is advanced exactly past what the kernel transferred.
#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <vector>

#include "blkback/image.h"

namespace xenpath {
namespace {

struct Op final : ImageOp {
  void image_done(int r) noexcept override { result = r; }
  int result = 1;
};

// An op reading `n` bytes at offset 0 into one buffer.
struct OneBufferRead {
  explicit OneBufferRead(size_t n) : buf(n), iov{buf.data(), n} { op.prep_read(&iov, 1, 0); }
  std::vector<char> buf;
  iovec iov;
  Op op;
};

TEST(BlkImageOp, FullTransferIsDone) {
  std::array<char, 4096> buf{};
  iovec iov[2] = {{buf.data(), 1024}, {buf.data() + 1024, 3072}};
  Op op;
  op.prep_read(iov, 2, 8192);
  EXPECT_EQ(op.remaining(), 4096u);
  EXPECT_EQ(op.account(4096), ImageOp::Step::kDone);
  EXPECT_EQ(op.remaining(), 0u);
}

TEST(BlkImageOp, ShortTransfersAdvanceTheIovecs) {
  std::array<char, 8192> buf{};
  iovec iov[3] = {{buf.data(), 512}, {buf.data() + 1024, 1024}, {buf.data() + 4096, 4096}};
  Op op;
  op.prep_write(iov, 3, 1 << 20);
  ASSERT_EQ(op.remaining(), 5632u);
  // Past the first vector and into the second.
  ASSERT_EQ(op.account(1024), ImageOp::Step::kResubmit);
  EXPECT_EQ(op.offset(), (1u << 20) + 1024);
  EXPECT_EQ(op.remaining(), 4608u);
  ASSERT_EQ(op.iovcnt(), 2u);
  EXPECT_EQ(op.iov()[0].iov_base, buf.data() + 1024 + 512);
  EXPECT_EQ(op.iov()[0].iov_len, 512u);
  // Exactly the end of a vector.
  ASSERT_EQ(op.account(512), ImageOp::Step::kResubmit);
  ASSERT_EQ(op.iovcnt(), 1u);
  EXPECT_EQ(op.iov()[0].iov_base, buf.data() + 4096);
  EXPECT_EQ(op.iov()[0].iov_len, 4096u);
  EXPECT_EQ(op.account(4096), ImageOp::Step::kDone);
}

TEST(BlkImageOp, RetriesAreBounded) {
  OneBufferRead r(512);
  Op& op = r.op;
  for (unsigned i = 0; i < ImageOp::kMaxRetries; ++i) {
    ASSERT_EQ(op.account(i % 2 ? -EAGAIN : -EINTR), ImageOp::Step::kResubmit) << i;
  }
  EXPECT_EQ(op.account(-EAGAIN), ImageOp::Step::kFailed);
  EXPECT_EQ(op.error(), -EAGAIN);
  // Progress resets the count.
  std::array<char, 1024> b2{};
  iovec iov2{b2.data(), 1024};
  op.prep_read(&iov2, 1, 0);
  for (unsigned i = 0; i < ImageOp::kMaxRetries; ++i) ASSERT_EQ(op.account(-EAGAIN), ImageOp::Step::kResubmit);
  ASSERT_EQ(op.account(512), ImageOp::Step::kResubmit);
  for (unsigned i = 0; i < ImageOp::kMaxRetries; ++i) ASSERT_EQ(op.account(-EAGAIN), ImageOp::Step::kResubmit);
  EXPECT_EQ(op.account(512), ImageOp::Step::kDone);
}

TEST(BlkImageOp, ErrorsAndNoProgressFail) {
  OneBufferRead r(1024);
  Op& op = r.op;
  iovec& iov = r.iov;
  EXPECT_EQ(op.account(-EIO), ImageOp::Step::kFailed);
  EXPECT_EQ(op.error(), -EIO);
  op.prep_read(&iov, 1, 0);
  EXPECT_EQ(op.account(0), ImageOp::Step::kFailed);  // EOF inside the image
  EXPECT_EQ(op.error(), -EIO);
  op.prep_read(&iov, 1, 0);
  EXPECT_EQ(op.account(2048), ImageOp::Step::kFailed);  // more than asked: never trust it
  op.prep_flush();
  EXPECT_EQ(op.account(0), ImageOp::Step::kDone);
  op.prep_flush();
  EXPECT_EQ(op.account(-EOPNOTSUPP), ImageOp::Step::kFailed);
  EXPECT_EQ(op.error(), -EOPNOTSUPP);
  op.prep_discard(0, 1 << 20, false);
  EXPECT_EQ(op.kind(), ImageOp::Kind::kDiscard);
  EXPECT_EQ(op.remaining(), 1u << 20);
  EXPECT_EQ(op.account(0), ImageOp::Step::kDone);
  op.prep_discard(0, 4096, true);
  EXPECT_EQ(op.kind(), ImageOp::Kind::kSecureDiscard);
}

}  // namespace
}  // namespace xenpath
