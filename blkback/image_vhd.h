// VhdImage: a VHD (fixed, dynamic, or differencing with its parent chain)
// served through the same Image seam as raw files, all I/O on the channel's
// io_uring (no helper threads).
//
// Reads are split per block and per chain level: for each run of sectors
// the leaf's BAT and sector bitmap decide whether it is in the leaf, else
// the parent's, and so on; a run no level holds reads as zeros. Each run is
// one readv from the level's file straight into the guest's pages (no
// bounce buffer; only zero runs are written by the CPU); the request
// completes once, with the first error. A block whose bitmap is all ones
// gets a "fully allocated" bit (kept per level, shared by the channels:
// tapdisk's batmap, learned at run time) and skips its bitmap from then on.
// Bitmaps are read asynchronously into a bounded per-channel cache (LRU;
// entries in use by I/O are pinned).
//
// Writes go to the leaf only. Into an allocated block: the data, then
// (only when the write sets bits that were clear) the bitmap, then the
// answer. Into an unallocated block (first touch), in rounds that batch
// every block waiting for allocation (up to 64; two rounds in flight, one
// writing data while the other writes metadata, committing in order),
// placed one after the other from the end of the data, the data 4 KiB
// aligned behind a whole 4 KiB piece holding the bitmap (ext4 serialises
// smaller direct writes against all others):
//   1. when the new blocks do not fit before the footer, the footer moves
//      first, 1024 blocks past them (a sparse reserve, given back when the
//      image is closed, so most rounds skip this step), then fdatasync: the
//      file always ends in a valid footer, and its new length is durable
//      before a BAT entry points there;
//   2. the data;
//   3. a differencing leaf only: fdatasync, so a bitmap bit never reaches
//      the disk before the data it claims (a power cut would otherwise
//      replace the parent's sectors by zeros). A dynamic disk skips it: a
//      lost data sector reads as zeros, which is what it held before;
//   4. the bitmaps and the BAT sectors with the new entries, together: a
//      lost bitmap reads as all clear (the block as it was), a lost BAT
//      entry leaves the block unreferenced;
// and only then are the writes answered (later writes to those blocks wait
// for it). A crash (SIGKILL, power) at any point leaves an image that
// opens: before 4 completes the new blocks are unreferenced space (reused
// after a reopen). The bitmap writes of a differencing leaf likewise wait
// for an fdatasync of the data they cover. Writes are durable after the
// guest's flush (fdatasync of the leaf), as on raw.
// Parents are opened read-only and never written; every level below the
// leaf, and a read-only leaf, is immutable (level_immutable()). With the
// daemon's shared read cache (Options::cache, docs/cache.md) the reads of
// immutable levels go through it, one cache block at a time: a hit is
// copied into the guest's pages, a miss reads the whole cache block from
// the file (O_DIRECT where the chain is) into cache memory on this
// channel's ring and then copies, a block another worker is filling is
// waited for (woken on this reactor through the channel's CacheWakeQueue);
// when the cache cannot take a block (all pinned, the file changed) or a
// fill failed, the piece is read straight into the guest's pages as
// without a cache. Waiting pieces are in flight like any I/O: the request
// completes once, after its last piece, with the first error. The leaf of
// a writable image never goes through the cache.
//
// Discard (dynamic and differencing leaf, whole blocks only, granularity =
// block size): the block's bitmap and data are punched out of the file
// (FALLOC_FL_PUNCH_HOLE), so the block reads as it did before anything was
// written to it (the parent's data, or zeros) and keeps its place in the
// file for later writes. Parts of a request that do not cover whole blocks
// are ignored (discard is advisory). A discard waits until every earlier
// request finished and holds later ones back until it is done.
//
// Threads: the image (chain metadata, fully-allocated bits as atomics) is
// shared by its channels. A writable image has exactly one channel at a
// time (open_channel says EBUSY otherwise) and ImageInfo::max_queues = 1:
// the leaf's BAT, bitmaps and end of file belong to that channel's reactor
// thread, as tapdisk keeps them in one process. A read-only chain may have
// a channel on every queue's reactor.
//
// Files: this header and image_vhd.cc (VhdImage); the per-queue VhdChannel
// is declared in image_vhd_channel.h (private), its reads defined in
// image_vhd_read.cc, its writes in image_vhd_write.cc.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blkback/image.h"
#include "blkback/vhd_file.h"
#include "cache/block_cache.h"

namespace xenpath {

// Counters of a VHD channel (single writer: its reactor thread).
struct VhdChannelStats {
  uint64_t data_ops = 0;        // readv/writev of guest data
  uint64_t zero_fills = 0;      // runs read as zeros
  uint64_t bitmap_loads = 0;    // bitmaps read
  uint64_t bitmap_stores = 0;   // bitmaps written for writes into allocated blocks
  uint64_t full_hits = 0;       // runs decided by a fully-allocated bit
  uint64_t allocations = 0;     // blocks allocated
  uint64_t alloc_rounds = 0;    // allocation rounds
  uint64_t alloc_failures = 0;  // rounds that failed
  uint64_t waits = 0;           // requests parked (bitmap load, allocation, resources)
  uint64_t punched_blocks = 0;  // discard
  // Shared read cache (immutable levels only), per piece of a read (the
  // part of a run inside one cache block):
  uint64_t cache_hits = 0;       // copied from a ready block
  uint64_t cache_fills = 0;      // this channel read the block into the cache
  uint64_t cache_waits = 0;      // joined another fill in flight
  uint64_t cache_bypasses = 0;   // the cache could not take it: read directly
  uint64_t cache_fallbacks = 0;  // a fill failed (here or elsewhere): read directly
};

class VhdImage final : public Image {
 public:
  struct Options {
    bool read_only = false;
    // O_DIRECT on every level whose filesystem takes 512-byte aligned
    // direct I/O (VHD blocks are sector aligned); buffered otherwise.
    bool direct = true;
    unsigned bitmap_cache_entries = 1024;  // per channel
    // The daemon's shared read cache for the immutable levels (nullptr:
    // none). Must outlive the image.
    BlockCache* cache = nullptr;
  };

  // Opens `path` and its parents. A refusal's message (file and field) goes
  // to `error` when given.
  static Result<std::unique_ptr<VhdImage>> open(const std::string& path, const Options& opts,
                                                std::string* error = nullptr) noexcept;
  ~VhdImage() override;

  [[nodiscard]] const ImageInfo& info() const noexcept override { return info_; }
  [[nodiscard]] const std::string& path() const noexcept override { return path_; }
  Result<std::unique_ptr<ImageChannel>> open_channel(Reactor& reactor) noexcept override;

  [[nodiscard]] const VhdChain& chain() const noexcept { return chain_; }
  [[nodiscard]] size_t depth() const noexcept { return chain_.levels.size(); }
  // Never written while served: every parent, and the leaf when read-only.
  [[nodiscard]] bool level_immutable(size_t level) const noexcept { return level != 0 || info_.read_only; }
  // The block size every sparse level of the chain uses.
  [[nodiscard]] uint32_t block_size() const noexcept { return block_size_; }
  // Blocks known to be fully allocated in `level` (learned so far).
  [[nodiscard]] bool fully_allocated(size_t level, uint32_t block) const noexcept;
  // The cache entry of an immutable level (nullptr: not cached).
  [[nodiscard]] CacheImage* cache_image(size_t level) const noexcept {
    return level < cache_levels_.size() ? cache_levels_[level].get() : nullptr;
  }
  bool set_cache_enabled(bool on) noexcept override;
  [[nodiscard]] bool cache_enabled() const noexcept override {
    return cache_on_.load(std::memory_order_relaxed) && has_cache_levels();
  }
  // The counters of a channel this image opened.
  static const VhdChannelStats& channel_stats(const ImageChannel& channel) noexcept;

 private:
  friend class VhdChannel;
  VhdImage(std::string path, VhdChain chain, const ImageInfo& info, uint32_t block_size,
           unsigned cache_entries) noexcept;
  void set_full(size_t level, uint32_t block, bool full) noexcept;
  void open_cache(BlockCache& cache);
  [[nodiscard]] bool has_cache_levels() const noexcept;

  std::string path_;
  VhdChain chain_;
  ImageInfo info_;
  uint32_t block_size_;
  unsigned cache_entries_;
  // Per level, one bit per BAT entry (monotonic for immutable levels).
  std::vector<std::unique_ptr<std::atomic<uint64_t>[]>> full_;
  std::atomic<bool> writer_{false};  // a writable image's one channel exists
  BlockCache* cache_ = nullptr;
  std::vector<std::shared_ptr<CacheImage>> cache_levels_;  // per level; null: not cached
  // The runtime switch (set_cache_enabled): a relaxed flag the channels
  // read per piece; nothing else moves between threads when it flips.
  std::atomic<bool> cache_on_{true};
};

}  // namespace xenpath
