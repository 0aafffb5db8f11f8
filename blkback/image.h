// Image: the seam between a VBD queue and a disk format.
//
// An Image says what the disk is (size, block sizes, read-only, discard) and
// opens one ImageChannel per reactor that does I/O on it. A channel turns
// ImageOps (read/write into caller-provided iovecs, flush, discard) into
// io_uring operations on its reactor's ring, finishes what the kernel did
// partially (short transfers, -EAGAIN) and reports one final result per op.
// Formats other than raw (qcow2, vhd) implement the same two classes.
//
// Threads: an Image is immutable after open and shared by the channels of
// every queue of its VBD (any thread). A channel and the ops submitted to it
// belong to one reactor thread. The iovecs of an op point at guest pages a
// queue mapped (zero copy): the channel writes into / reads from them but
// never looks at their contents.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/reactor.h"
#include "common/result.h"

namespace xenpath {

struct CacheStatStripe;

struct ImageInfo {
  uint64_t size_bytes = 0;
  // Smallest addressable unit, and with O_DIRECT the granularity of offsets
  // and lengths (BLKSSZGET for a device, the filesystem's direct-I/O offset
  // alignment for a file).
  uint32_t logical_block_size = 512;
  uint32_t physical_block_size = 512;  // BLKPBSZGET / the filesystem block
  uint32_t memory_align = 512;         // O_DIRECT buffer alignment
  bool read_only = false;
  bool block_device = false;
  bool direct = false;               // opened O_DIRECT: no dom0 page cache
  bool discard = false;              // ImageOp::kDiscard works
  bool secure_discard = false;       // ImageOp::kSecureDiscard works
  uint32_t discard_granularity = 0;  // bytes (0 when !discard)
  uint32_t discard_alignment = 0;    // bytes
  // Queues a VBD may offer on this image (multi-queue-max-queues); 0: no
  // limit of the image's own. A writable VHD says 1: its leaf's metadata
  // (BAT, bitmaps, end of file) has one owner thread, as in tapdisk.
  uint32_t max_queues = 0;
};

class ImageChannel;

// One I/O against an image. Embedded in its owner (a queue's request slot),
// which must keep it and its iovecs alive until image_done() ran. The iovec
// array is consumed in place as short transfers are resumed.
class ImageOp : public UringCompletion {
 public:
  enum class Kind : uint8_t { kRead, kWrite, kFlush, kDiscard, kSecureDiscard };

  void prep_read(iovec* iov, unsigned iovcnt, uint64_t offset) noexcept { prep(Kind::kRead, iov, iovcnt, offset, 0); }
  void prep_write(iovec* iov, unsigned iovcnt, uint64_t offset) noexcept { prep(Kind::kWrite, iov, iovcnt, offset, 0); }
  void prep_flush() noexcept { prep(Kind::kFlush, nullptr, 0, 0, 0); }
  void prep_discard(uint64_t offset, uint64_t length, bool secure) noexcept {
    prep(secure ? Kind::kSecureDiscard : Kind::kDiscard, nullptr, 0, offset, length);
  }

  [[nodiscard]] Kind kind() const noexcept { return kind_; }
  [[nodiscard]] uint64_t offset() const noexcept { return offset_; }
  [[nodiscard]] uint64_t remaining() const noexcept { return remaining_; }
  [[nodiscard]] const iovec* iov() const noexcept { return iov_; }
  [[nodiscard]] unsigned iovcnt() const noexcept { return iovcnt_; }

  // What happens next after a transfer completed `res` (bytes or -errno).
  enum class Step : uint8_t { kDone, kResubmit, kFailed };
  // Advances offset/iovecs by a partial transfer; decides whether to go on.
  // Pure bookkeeping (tested on its own): at most kMaxRetries consecutive
  // -EAGAIN/-EINTR, a zero-byte transfer is an error (EOF inside the image
  // means it shrank under us), a negative result fails the op.
  Step account(int32_t res) noexcept;
  // The error to report after kFailed (negative errno).
  [[nodiscard]] int error() const noexcept { return error_; }

  static constexpr unsigned kMaxRetries = 16;

 protected:
  ImageOp() noexcept = default;
  ~ImageOp() override = default;
  // Called once per submit, on the channel's reactor thread, never from
  // inside ImageChannel::submit(): 0 or a negative errno.
  virtual void image_done(int result) noexcept = 0;

 private:
  friend class ImageChannel;
  void prep(Kind k, iovec* iov, unsigned iovcnt, uint64_t offset, uint64_t length) noexcept;
  void on_complete(int32_t res, uint32_t cqe_flags) noexcept final;

  ImageChannel* channel_ = nullptr;
  ImageOp* next_ = nullptr;  // intrusive link for the channel's waiting lists
  iovec* iov_ = nullptr;
  unsigned iovcnt_ = 0;
  Kind kind_ = Kind::kRead;
  uint8_t retries_ = 0;
  uint64_t offset_ = 0;
  uint64_t remaining_ = 0;  // bytes (read/write/discard)
  int error_ = 0;
};

struct ImageChannelStats {
  uint64_t submitted = 0;  // ops accepted
  uint64_t sqes = 0;       // io_uring operations prepared (including resubmissions)
  uint64_t resubmits = 0;  // short transfers and -EAGAIN continued
  uint64_t deferred = 0;   // times an op waited for a free SQE
  uint64_t offloaded = 0;  // ops run on the blocking-offload thread
  uint64_t failed = 0;
  uint64_t in_flight = 0;
  bool fixed_file = false;  // the image is a registered fixed file of the ring
};

// Per (image, reactor). Owned by the reactor thread; a Poller on it that
// retries ops that found the submission queue full and delivers completions
// decided without the kernel, so image_done() always runs from the loop.
class ImageChannel : public Poller {
 public:
  ~ImageChannel() override = default;
  // Starts `op` (prepared with one of its prep_* calls). Never fails
  // synchronously: errors arrive through image_done().
  virtual void submit(ImageOp& op) noexcept = 0;
  [[nodiscard]] virtual const ImageChannelStats& stats() const noexcept = 0;
  // What this channel's reads did in the shared read cache, counted as the
  // cache counts them (the per-VBD share of its global counters); nullptr
  // for a channel that never uses it. Single writer: the channel's thread.
  [[nodiscard]] virtual const CacheStatStripe* cache_use() const noexcept { return nullptr; }
  // Ops submitted and not yet done: a queue must see 0 before it unmaps
  // the pages they target.
  [[nodiscard]] uint64_t in_flight() const noexcept { return stats().in_flight; }

 protected:
  // For implementations: hooks into the op's private state.
  static void bind(ImageOp& op, ImageChannel* ch) noexcept { op.channel_ = ch; }
  static void finish(ImageOp& op, int result) noexcept { op.image_done(result); }
  static void set_error(ImageOp& op, int err) noexcept { op.error_ = err; }
  static ImageOp*& link(ImageOp& op) noexcept { return op.next_; }
  // Intrusive FIFO of ops through their link.
  struct OpFifo {
    ImageOp* head = nullptr;
    ImageOp* tail = nullptr;
    void push(ImageOp& op) noexcept {
      link(op) = nullptr;
      if (tail != nullptr) {
        link(*tail) = &op;
      } else {
        head = &op;
      }
      tail = &op;
    }
    ImageOp* pop() noexcept {
      ImageOp* op = head;
      if (op != nullptr) {
        head = link(*op);
        if (head == nullptr) tail = nullptr;
        link(*op) = nullptr;
      }
      return op;
    }
    [[nodiscard]] bool empty() const noexcept { return head == nullptr; }
  };
  // Called by ImageOp::on_complete for a CQE of an op bound to this channel.
  virtual void on_cqe(ImageOp& op, int32_t res) noexcept = 0;
  friend class ImageOp;
};

class Image {
 public:
  virtual ~Image() = default;
  [[nodiscard]] virtual const ImageInfo& info() const noexcept = 0;
  [[nodiscard]] virtual const std::string& path() const noexcept = 0;
  // On the reactor's thread (or before it starts): a channel doing this
  // image's I/O on that reactor's io_uring.
  virtual Result<std::unique_ptr<ImageChannel>> open_channel(Reactor& reactor) noexcept = 0;
  // The shared read cache at runtime (`xenpath-ctl set DEV cache=on|off`):
  // any thread; the channels read the switch per piece, so reads already in
  // the cache finish there and the next ones go around it (or through it).
  // Returns whether the image has levels in the cache at all (opened with
  // it); when not, the switch changes nothing.
  virtual bool set_cache_enabled(bool /*on*/) noexcept { return false; }
  // Whether reads go through the cache now.
  [[nodiscard]] virtual bool cache_enabled() const noexcept { return false; }
};

}  // namespace xenpath
