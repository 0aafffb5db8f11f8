// VhdChannel: the VHD datapath's per-queue half, private to blkback's
// image_vhd*.cc (the public interface is image_vhd.h: VhdImage). Its
// definitions are split by what they do:
//   image_vhd.cc        VhdImage (open, cache registration, channel
//                       creation), the channel's init, pools and request
//                       plumbing (submit, planning, completion dispatch)
//   image_vhd_read.cc   read runs (direct and through the shared read
//                       cache) and the bitmap cache (lookup, LRU, loads)
//   image_vhd_write.cc  write runs, bitmap stores, allocation rounds,
//                       discard
// The design (split per block and level, allocation order, discard) is in
// image_vhd.h's comment and docs/vhd.md.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "blkback/image_uring.h"
#include "blkback/image_vhd.h"
#include "common/aligned_bytes.h"

namespace xenpath {

// Constants and helpers the channel's files share.
namespace vhd_io {

inline constexpr uint32_t kSector = vhd::kSectorSize;
inline constexpr unsigned kSubIov = 16;             // iovecs per readv/writev of a run
inline constexpr unsigned kMaxDataSubOps = 1024;    // guest data transfers in flight per channel
inline constexpr unsigned kMaxRoundBlocks = 64;     // blocks allocated by one round
inline constexpr unsigned kMaxPendingAllocs = 256;  // blocks waiting for (or in) a round
inline constexpr unsigned kReserveBlocks = 1024;    // how far past the data the footer moves (sparse, 2 GiB)
// Metadata the allocation writes goes in whole 4 KiB pieces where it can:
// ext4 serialises a direct write smaller than its block against every
// other direct write of the file.
inline constexpr uint64_t kFsBlock = 4096;

using xenpath::aligned_bytes;
using xenpath::AlignedBytes;

// Objects recycled through a free list chained by their `next`; the pool
// grows while warming up and never shrinks. nullptr when out of memory.
template <class T>
T* pool_take(std::vector<std::unique_ptr<T>>& all, T*& free_list) noexcept {
  T* t = free_list;
  if (t != nullptr) {
    free_list = t->next;
    return t;
  }
  try {
    all.push_back(std::make_unique<T>());
  } catch (...) {
    return nullptr;
  }
  return all.back().get();
}

}  // namespace vhd_io

// One channel of a VhdImage: every I/O of one queue, on its reactor's
// io_uring. Threads: owned by that reactor's thread (every member, vstats
// included, has it as its single writer). What it touches: the image's
// chain (a writable image has exactly one channel, so the leaf's BAT, end
// of data and footer offset are this thread's), the image's fully-allocated
// bits (atomics shared with the other channels of a read-only chain), the
// shared BlockCache (thread-safe; fill wake-ups come back on this reactor
// through wake_), the level files through the ring, and the guest's mapped
// pages of the ops it is given.
class VhdChannel final : public UringImageChannel {
 public:
  VhdChannel(VhdImage& image, Reactor& reactor) noexcept;
  ~VhdChannel() override;
  Status init() noexcept;

  void submit(ImageOp& op) noexcept override;
  bool poll() noexcept override;
  bool arm() noexcept override;

  VhdChannelStats vstats;
  // This channel's part of the cache's counters (cache_use()).
  CacheStatStripe cache_counts;
  [[nodiscard]] const CacheStatStripe* cache_use() const noexcept override { return &cache_counts; }

 protected:
  FileRef file_of(const ImageOp& op) const noexcept override;
  void transferred(ImageOp& op, int result) noexcept override;

 private:
  struct Req;
  struct Slot;
  struct Alloc;
  struct Round;

  // One io_uring operation of the channel: a run of guest data, or
  // metadata (a bitmap, the footer, BAT sectors, fdatasync, a punch).
  struct PieceWaiter;
  struct SubOp final : ImageOp {
    enum class Role : uint8_t {
      kData,
      kMarked,
      kAllocData,
      kCacheFill,  // a read piece whose cache block this channel reads from the file
      kCacheWait,  // a read piece waiting for another fill of its cache block
      kLoad,
      kStoreSync,
      kStore,
      kRound,
      kFlush,
      kPunch
    };
    [[nodiscard]] static bool data(Role r) noexcept { return r <= Role::kCacheWait; }
    Role role = Role::kData;
    uint8_t level = 0;
    unsigned nio = 0;
    uint32_t first = 0;  // kMarked / kAllocData: sectors of the block it writes
    uint32_t count = 0;
    Req* req = nullptr;
    Slot* slot = nullptr;
    Round* round = nullptr;  // kAllocData / kRound
    SubOp* next = nullptr;
    iovec iov[vhd_io::kSubIov];
    // kCacheFill / kCacheWait: the piece is `bytes` at `file_off` of the
    // level's file, `in_block` into its cache block; iov are the guest's.
    CacheBlock cblock;  // kCacheFill: reserved for the fill
    iovec fill_iov{};   // kCacheFill: the cache block memory being read
    uint32_t fill_len = 0;
    uint32_t in_block = 0;
    uint32_t bytes = 0;
    uint64_t file_off = 0;
    std::unique_ptr<PieceWaiter> waiter;  // made on first use, registered on kCacheWait

   protected:
    void image_done(int /*result*/) noexcept override {}  // the channel's transferred() handles it
  };

  // A read piece's registration on a fill in flight (woken on this reactor).
  struct PieceWaiter final : CacheWaiter {
    PieceWaiter(CacheWakeQueue* q, VhdChannel& c, SubOp& s) noexcept : CacheWaiter(q), ch(c), sub(s) {}
    VhdChannel& ch;
    SubOp& sub;

   protected:
    void on_cache_fill(CacheBlock block, int error) noexcept override {
      if (error == 0 && block) ch.cache_counts.bytes_from_memory.add(sub.bytes);  // as the cache counts a join
      ch.piece_ready(sub, std::move(block), error);
    }
  };

  // A caller's op in flight.
  struct Req {
    ImageOp* op = nullptr;
    uint64_t pos = 0;  // next byte to plan
    uint64_t end = 0;
    const iovec* iov = nullptr;
    unsigned iovcnt = 0;
    unsigned iv = 0;  // cursor in the iovecs, matching pos
    size_t ivoff = 0;
    uint32_t pending = 0;  // sub-ops (and the planning guard)
    int error = 0;
    bool parked = false;
    Req* next = nullptr;
  };

  // A cached bitmap of (level, block).
  struct Slot {
    uint64_t key = kNoKey;
    vhd_io::AlignedBytes bits;
    vhd_io::AlignedBytes store_buf;  // writable leaf: the snapshot a store writes
    bool loading = false;
    bool storing = false;
    uint32_t pins = 0;  // data writes whose bits are not stored yet
    Req* waiters = nullptr;
    SubOp* store_next = nullptr;  // written, bits set, waiting for the next store
    SubOp* store_cur = nullptr;   // covered by the store in flight
    Slot* prev = nullptr;         // LRU of idle slots (head = most recent)
    Slot* lru_next = nullptr;
    [[nodiscard]] bool busy() const noexcept { return loading || storing || pins != 0 || store_next != nullptr; }
  };
  static constexpr uint64_t kNoKey = UINT64_MAX;

  // A leaf block waiting for, or in, an allocation round.
  struct Alloc {
    uint32_t block = 0;
    uint32_t entry = vhd::kBatUnused;  // assigned when its round starts
    SubOp* subs = nullptr;             // its first write's data
    Req* waiters = nullptr;            // later requests on the block
    Alloc* next = nullptr;
  };

  enum class Phase : uint8_t { kIdle, kFooter, kFooterSync, kData, kSync, kWaitMeta, kMeta };

  // One allocation round.
  struct Round {
    Alloc* allocs = nullptr;
    Phase phase = Phase::kIdle;
    unsigned pending = 0;
    int error = 0;
    uint64_t end = 0;              // the end of its blocks
    uint64_t footer = 0;           // where it moves the footer (0: it does not)
    vhd_io::AlignedBytes bitmaps;  // kMaxRoundBlocks bitmaps, each padded to whole 4 KiB
    vhd_io::AlignedBytes bat;      // kMaxRoundBlocks BAT pieces of up to 4 KiB
  };

  const VhdLevel& level(size_t i) const noexcept { return image_.chain_.levels[i]; }
  VhdLevel& leaf() noexcept { return image_.chain_.levels[0]; }
  [[nodiscard]] uint32_t spb() const noexcept { return block_size_ / vhd_io::kSector; }

  // Requests.
  Req* new_req() noexcept;
  void advance(Req& r) noexcept;
  bool step_read(Req& r) noexcept;
  bool step_write(Req& r) noexcept;
  void park(Req& r, Req*& list) noexcept;
  void wake(Req*& list) noexcept;
  void sub_done(Req& r, int result) noexcept;
  void maybe_finish(Req& r, bool deferred) noexcept;
  size_t take_iov(Req& r, SubOp& s, uint64_t bytes) noexcept;
  // Writes `bytes` of the request's buffer from r.pos: a copy of `src`, or
  // zeros when src is null.
  void fill_guest(Req& r, const uint8_t* src, uint64_t bytes) noexcept;
  bool read_direct(Req& r, uint8_t lvl, uint64_t file_off, uint64_t bytes) noexcept;
  bool read_cached(Req& r, uint8_t lvl, CacheImage& ci, uint64_t file_off, uint64_t bytes) noexcept;
  void count_lookup(BlockCache::Outcome outcome, uint64_t bytes) noexcept;
  void piece_ready(SubOp& s, CacheBlock block, int error) noexcept;

  // Sub-ops.
  SubOp* new_sub(SubOp::Role role, uint8_t lvl) noexcept;
  void free_sub(SubOp& s) noexcept;

  // Bitmaps.
  [[nodiscard]] size_t home(uint64_t key) const noexcept {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> index_shift_);  // Fibonacci hashing
  }
  Slot* find_slot(uint64_t key) noexcept;
  Slot* take_slot(uint64_t key) noexcept;
  void drop_slot(Slot& s) noexcept;
  void touch(Slot& s) noexcept;
  void idle(Slot& s) noexcept;
  void lru_remove(Slot& s) noexcept;
  // nullptr when the request parked (load started or cache full).
  Slot* bitmap_for(Req& r, uint8_t lvl, uint32_t block) noexcept;
  void load_done(SubOp& s, int result) noexcept;
  void start_store(Slot& slot) noexcept;
  void store_write(SubOp& st) noexcept;
  void store_done(SubOp& s, int result) noexcept;
  void marked_done(SubOp& s, int result) noexcept;

  // Allocation.
  Alloc* find_alloc(uint32_t block) noexcept;
  void start_round() noexcept;
  void round_io_done(Round& rd, int result) noexcept;
  void round_next(Round& rd) noexcept;
  void round_sync(Round& rd, Phase next) noexcept;
  void round_write(Round& rd, uint8_t* buf, size_t len, uint64_t offset) noexcept;
  void round_meta(Round& rd) noexcept;
  void round_end(Round& rd, int error) noexcept;

  // Discard.
  void run_discard() noexcept;
  void discard_done() noexcept;

  // Fully allocated bits.
  [[nodiscard]] bool full(size_t lvl, uint32_t block) const noexcept { return image_.fully_allocated(lvl, block); }

  VhdImage& image_;
  const bool writable_;
  const uint32_t block_size_;
  std::vector<FileRef> files_;
  std::shared_ptr<CacheWakeQueue> wake_;  // with a cache: pieces' waiters are woken here

  std::vector<std::unique_ptr<Req>> reqs_;
  Req* free_reqs_ = nullptr;
  uint64_t live_reqs_ = 0;
  std::vector<std::unique_ptr<SubOp>> subs_;
  SubOp* free_subs_ = nullptr;
  unsigned data_subs_ = 0;
  Req* resource_waiters_ = nullptr;  // no data sub-op / cache slot / alloc record
  bool resources_freed_ = false;     // wake them from the next poll()

  // Bitmap cache: slots, an open-addressing index (key -> slot), an LRU.
  uint32_t bitmap_bytes_ = 0;
  std::vector<Slot> slots_;
  std::vector<int32_t> index_;  // -1 free; linear probing
  unsigned index_shift_ = 63;
  Slot* free_slots_ = nullptr;  // chained through lru_next
  Slot* lru_head_ = nullptr;
  Slot* lru_tail_ = nullptr;

  // Allocation rounds (writable sparse leaf).
  std::vector<std::unique_ptr<Alloc>> allocs_;
  Alloc* free_allocs_ = nullptr;
  unsigned live_allocs_ = 0;
  Alloc* queued_ = nullptr;  // FIFO: waiting for a round
  Alloc* queued_tail_ = nullptr;
  // Two rounds may be in flight: one writing its data while the one before
  // writes its metadata (rounds commit in order: a round's BAT pieces
  // include the entries of every round committed before it).
  Round rounds_[2];
  unsigned next_round_ = 0;      // which of rounds_ the next round uses
  Round* committing_ = nullptr;  // the oldest round in flight (commits first)
  uint64_t alloc_pos_ = 0;       // where the next round places its blocks
  bool sync_data_ = false;       // a differencing leaf: data durable before its bits
  vhd_io::AlignedBytes footer_buf_;
  uint32_t meta_span_ = 0;  // a new block's bitmap padded in front to whole 4 KiB

  // Discard (a barrier in the channel).
  ImageOp* discard_ = nullptr;
  OpFifo held_;  // submitted behind a discard
  unsigned discard_pending_ = 0;
  int discard_error_ = 0;
  std::vector<uint32_t> punched_;
};

}  // namespace xenpath
