// RawImage on real files (and a loop block device when the machine lets us
// make one): geometry, O_DIRECT reads and writes through io_uring fixed
// files, flush, hole punching, read-only refusal, SQ exhaustion, vectors
// beyond IOV_MAX, and the end of the image.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "blkback/image_raw.h"
#include "tests/fixtures/blk_files.h"
#include "tests/fixtures/image_rig.h"

namespace xenpath {
namespace {

using test::TempFile;

using Buffer = test::AlignedBuffer;
using test::WaitOp;

// A raw image's channel on a running reactor.
struct Rig {
  explicit Rig(const std::string& path, RawImage::Options opts = {}, unsigned uring_entries = 64) {
    auto img = RawImage::open(path, opts);
    if (!img) {
      open_error = img.error();
      return;
    }
    image = std::move(*img);
    rig = std::make_unique<test::ImageRig>(*image, uring_entries);
    reactor = rig->reactor.get();
    channel = rig->channel.get();
  }
  int run(WaitOp& op) { return rig->run(op); }
  ImageChannelStats stats() { return rig->stats(); }
  int open_error = 0;
  std::unique_ptr<RawImage> image;
  std::unique_ptr<test::ImageRig> rig;
  Reactor* reactor = nullptr;
  ImageChannel* channel = nullptr;
};

constexpr uint64_t kMiB = 1 << 20;

TEST(BlkRawImage, GeometryOfASparseFile) {
  TempFile f(4 * kMiB + 100);  // a tail shorter than a block is not exported
  Rig rig(f.path);
  ASSERT_EQ(rig.open_error, 0);
  const ImageInfo& i = rig.image->info();
  EXPECT_EQ(i.size_bytes % i.logical_block_size, 0u);
  EXPECT_EQ(i.size_bytes, 4 * kMiB + 100 - (4 * kMiB + 100) % i.logical_block_size);
  EXPECT_GE(i.logical_block_size, 512u);
  EXPECT_EQ(i.physical_block_size % i.logical_block_size, 0u);
  EXPECT_TRUE(i.direct);
  EXPECT_FALSE(i.block_device);
  EXPECT_FALSE(i.read_only);
  EXPECT_FALSE(i.secure_discard);
  if (i.discard) {
    EXPECT_GT(i.discard_granularity, 0u);
  }
  EXPECT_TRUE(rig.stats().fixed_file);
}

TEST(BlkRawImage, OpenRefusals) {
  EXPECT_EQ(RawImage::open("/nonexistent/xenpath-image", {}).error(), ENOENT);
  RawImage::Options ro;
  ro.read_only = true;
  ro.direct = false;
  EXPECT_EQ(RawImage::open("/dev/null", ro).error(), EINVAL);  // neither a file nor a block device
  EXPECT_EQ(RawImage::open("/tmp", ro).error(), EINVAL);
}

TEST(BlkRawImage, WritesAndReadsBackThroughScatteredVectors) {
  TempFile f(8 * kMiB, /*preallocate=*/true);
  Rig rig(f.path);
  ASSERT_EQ(rig.open_error, 0);
  const uint32_t lbs = rig.image->info().logical_block_size;
  Buffer out(16 * lbs);
  out.pattern(1);
  iovec w[3] = {{out.p, 3 * lbs}, {out.p + 3 * lbs, lbs}, {out.p + 4 * lbs, 12 * lbs}};
  WaitOp op;
  op.prep_write(w, 3, kMiB + 8 * lbs);
  ASSERT_EQ(rig.run(op), 0);
  // Another split on the way back.
  Buffer in(16 * lbs);
  iovec r[2] = {{in.p, 10 * lbs}, {in.p + 10 * lbs, 6 * lbs}};
  op.prep_read(r, 2, kMiB + 8 * lbs);
  ASSERT_EQ(rig.run(op), 0);
  EXPECT_EQ(std::memcmp(in.p, out.p, out.size), 0);
  // And it is in the file, where a buffered reader finds it.
  const int fd = ::open(f.path.c_str(), O_RDONLY);
  std::vector<char> check(out.size);
  ASSERT_EQ(::pread(fd, check.data(), check.size(), static_cast<off_t>(kMiB + 8 * lbs)),
            static_cast<ssize_t>(check.size()));
  ::close(fd);
  EXPECT_EQ(std::memcmp(check.data(), out.p, out.size), 0);
  op.prep_flush();
  EXPECT_EQ(rig.run(op), 0);
  EXPECT_EQ(op.calls(), 3);
}

TEST(BlkRawImage, DiscardPunchesAHole) {
  TempFile f(8 * kMiB);
  Rig rig(f.path);
  ASSERT_EQ(rig.open_error, 0);
  const ImageInfo& i = rig.image->info();
  if (!i.discard) GTEST_SKIP() << "filesystem cannot punch holes";
  Buffer out(kMiB);
  out.pattern(2);
  iovec w{out.p, out.size};
  WaitOp op;
  op.prep_write(&w, 1, 2 * kMiB);
  ASSERT_EQ(rig.run(op), 0);
  struct stat before {};
  ASSERT_EQ(::stat(f.path.c_str(), &before), 0);
  op.prep_discard(2 * kMiB, kMiB, false);
  ASSERT_EQ(rig.run(op), 0);
  struct stat after {};
  ASSERT_EQ(::stat(f.path.c_str(), &after), 0);
  EXPECT_LT(after.st_blocks, before.st_blocks);
  EXPECT_EQ(after.st_size, before.st_size);  // KEEP_SIZE
  Buffer in(kMiB);
  in.pattern(3);
  iovec r{in.p, in.size};
  op.prep_read(&r, 1, 2 * kMiB);
  ASSERT_EQ(rig.run(op), 0);
  for (size_t k = 0; k < in.size; ++k) ASSERT_EQ(in.p[k], 0) << k;
  // Secure discard is not something a file offers; an empty range is done.
  op.prep_discard(0, kMiB, true);
  EXPECT_EQ(rig.run(op), -EOPNOTSUPP);
  op.prep_discard(0, 0, false);
  EXPECT_EQ(rig.run(op), 0);
}

TEST(BlkRawImage, ReadOnlyImagesRefuseWrites) {
  TempFile f(kMiB);
  RawImage::Options ro;
  ro.read_only = true;
  Rig rig(f.path, ro);
  ASSERT_EQ(rig.open_error, 0);
  EXPECT_TRUE(rig.image->info().read_only);
  EXPECT_FALSE(rig.image->info().discard);
  Buffer b(rig.image->info().logical_block_size);
  iovec v{b.p, b.size};
  WaitOp op;
  op.prep_write(&v, 1, 0);
  EXPECT_EQ(rig.run(op), -EROFS);
  op.prep_discard(0, 4096, false);
  EXPECT_EQ(rig.run(op), -EROFS);
  op.prep_read(&v, 1, 0);
  EXPECT_EQ(rig.run(op), 0);
  EXPECT_EQ(rig.stats().failed, 2u);
  EXPECT_EQ(rig.stats().in_flight, 0u);
}

TEST(BlkRawImage, TheEndOfTheImageIsAnError) {
  TempFile f(64 * 1024);
  Rig rig(f.path);
  ASSERT_EQ(rig.open_error, 0);
  const uint32_t lbs = rig.image->info().logical_block_size;
  Buffer b(2 * lbs);
  iovec v{b.p, b.size};
  WaitOp op;
  // Half of it exists: a short read, then nothing more.
  op.prep_read(&v, 1, 64 * 1024 - lbs);
  EXPECT_EQ(rig.run(op), -EIO);
  EXPECT_GE(rig.stats().resubmits, 1u);
}

TEST(BlkRawImage, MoreOpsThanSubmissionSlots) {
  TempFile f(8 * kMiB, true);
  Rig rig(f.path, {}, /*uring_entries=*/4);
  ASSERT_EQ(rig.open_error, 0);
  constexpr unsigned kOps = 48;
  const size_t chunk = 16 * 1024;
  Buffer out(kOps * chunk);
  out.pattern(4);
  std::vector<iovec> vecs(kOps);
  std::vector<WaitOp> ops(kOps);
  rig.reactor->call([&] {
    for (unsigned k = 0; k < kOps; ++k) {
      vecs[k] = {out.p + k * chunk, chunk};
      ops[k].prep_write(&vecs[k], 1, k * chunk);
      rig.channel->submit(ops[k]);
    }
  });
  for (auto& op : ops) ASSERT_EQ(op.wait(), 0);
  // The reactor submitted mid-burst to make room: every op got its SQE.
  EXPECT_EQ(rig.stats().sqes, kOps);
  Buffer in(kOps * chunk);
  iovec r{in.p, in.size};
  WaitOp rd;
  rd.prep_read(&r, 1, 0);
  ASSERT_EQ(rig.run(rd), 0);
  EXPECT_EQ(std::memcmp(in.p, out.p, out.size), 0);
  EXPECT_EQ(rig.stats().in_flight, 0u);
}

TEST(BlkRawImage, VectorsBeyondIovMaxContinue) {
  TempFile f(4 * kMiB, true);
  Rig rig(f.path);
  ASSERT_EQ(rig.open_error, 0);
  const uint32_t lbs = rig.image->info().logical_block_size;
  constexpr unsigned kVecs = 1500;  // > IOV_MAX (1024)
  Buffer out(static_cast<size_t>(kVecs) * lbs * 2);
  out.pattern(5);
  // Every other block of the buffer, so nothing could be merged.
  std::vector<iovec> w(kVecs);
  for (unsigned k = 0; k < kVecs; ++k) w[k] = {out.p + 2ull * k * lbs, lbs};
  WaitOp op;
  op.prep_write(w.data(), kVecs, 0);
  ASSERT_EQ(rig.run(op), 0);
  EXPECT_GE(rig.stats().resubmits, 1u);
  Buffer in(static_cast<size_t>(kVecs) * lbs);
  iovec r{in.p, in.size};
  op.prep_read(&r, 1, 0);
  ASSERT_EQ(rig.run(op), 0);
  for (unsigned k = 0; k < kVecs; ++k) {
    ASSERT_EQ(std::memcmp(in.p + static_cast<size_t>(k) * lbs, out.p + 2ull * k * lbs, lbs), 0) << k;
  }
}

// A loop device over a temp file: the block-device paths (ioctls for the
// geometry, BLKDISCARD on the offload pool). Skipped where loop devices
// cannot be set up (no privilege, no free device node).
struct LoopDevice {
  explicit LoopDevice(const std::string& backing) {
    const int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) return;
    const int n = ::ioctl(ctl, LOOP_CTL_GET_FREE);
    ::close(ctl);
    if (n < 0) return;
    const std::string dev = "/dev/loop" + std::to_string(n);
    const int bfd = ::open(backing.c_str(), O_RDWR | O_CLOEXEC);
    fd = ::open(dev.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0 || bfd < 0) {
      if (bfd >= 0) ::close(bfd);
      return;
    }
    loop_config cfg{};
    cfg.fd = static_cast<uint32_t>(bfd);
    cfg.block_size = 4096;  // a 4K-sector device, the interesting case
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
    const int r = ::ioctl(fd, LOOP_CONFIGURE, &cfg);
    ::close(bfd);
    if (r != 0) {
      ::close(fd);
      fd = -1;
      return;
    }
    path = dev;
  }
  ~LoopDevice() {
    if (fd >= 0) {
      (void)::ioctl(fd, LOOP_CLR_FD, 0);
      ::close(fd);
    }
  }
  int fd = -1;
  std::string path;
};

TEST(BlkRawImage, LoopBlockDevice) {
  TempFile f(16 * kMiB);
  LoopDevice loop(f.path);
  if (loop.path.empty()) GTEST_SKIP() << "no loop device available";
  Rig rig(loop.path);
  ASSERT_EQ(rig.open_error, 0);
  const ImageInfo& i = rig.image->info();
  EXPECT_TRUE(i.block_device);
  EXPECT_EQ(i.size_bytes, 16 * kMiB);
  EXPECT_EQ(i.logical_block_size, 4096u);
  EXPECT_EQ(i.physical_block_size, 4096u);
  Buffer out(64 * 1024);
  out.pattern(6);
  iovec w{out.p, out.size};
  WaitOp op;
  op.prep_write(&w, 1, kMiB);
  ASSERT_EQ(rig.run(op), 0);
  op.prep_flush();
  ASSERT_EQ(rig.run(op), 0);
  Buffer in(64 * 1024);
  iovec r{in.p, in.size};
  op.prep_read(&r, 1, kMiB);
  ASSERT_EQ(rig.run(op), 0);
  EXPECT_EQ(std::memcmp(in.p, out.p, out.size), 0);
  if (i.discard) {
    op.prep_discard(kMiB, 64 * 1024, false);
    ASSERT_EQ(rig.run(op), 0);
    EXPECT_EQ(rig.stats().offloaded, 1u);
    op.prep_read(&r, 1, kMiB);
    ASSERT_EQ(rig.run(op), 0);
    // A loop device over a file punches the hole: zeroes come back.
    for (size_t k = 0; k < in.size; ++k) ASSERT_EQ(in.p[k], 0) << k;
  }
  // 512-byte I/O on a 4K-sector device is the kernel's EINVAL.
  iovec small{in.p, 512};
  op.prep_read(&small, 1, 0);
  EXPECT_EQ(rig.run(op), -EINVAL);
}

}  // namespace
}  // namespace xenpath

namespace xenpath {
namespace {

// The fixed-file table blkback added to the reactor: slots are handed out,
// refused when full, and reused once freed (a double free hands nothing out
// twice).
TEST(BlkReactorFiles, SlotsAreBoundedAndReused) {
  Reactor::Options o;
  o.name = "blk-files";
  o.uring_entries = 8;
  o.fixed_files = 2;
  auto r = Reactor::create(o);
  ASSERT_TRUE(r.has_value());
  Reactor& reactor = **r;
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  auto a = reactor.register_file(fd);
  auto b = reactor.register_file(fd);
  ASSERT_TRUE(a.has_value());
  ASSERT_TRUE(b.has_value());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(reactor.register_file(fd).error(), ENOSPC);
  EXPECT_EQ(reactor.register_file(-1).error(), EBADF);
  reactor.unregister_file(*a);
  reactor.unregister_file(*a);
  auto c = reactor.register_file(fd);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(*c, *a);
  EXPECT_EQ(reactor.register_file(fd).error(), ENOSPC);
  ::close(fd);

  Reactor::Options none;
  none.uring_entries = 0;
  auto nr = Reactor::create(none);
  ASSERT_TRUE(nr.has_value());
  EXPECT_EQ((*nr)->register_file(0).error(), ENXIO);
}

}  // namespace
}  // namespace xenpath
