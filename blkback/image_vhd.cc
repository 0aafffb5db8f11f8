#include "blkback/image_vhd.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <span>

#include "blkback/image_uring.h"
#include "common/log.h"

namespace xenpath {

namespace {

constexpr uint32_t kSector = vhd::kSectorSize;
constexpr unsigned kSubIov = 16;             // iovecs per readv/writev of a run
constexpr unsigned kMaxDataSubOps = 1024;    // guest data transfers in flight per channel
constexpr unsigned kMaxRoundBlocks = 64;     // blocks allocated by one round
constexpr unsigned kMaxPendingAllocs = 256;  // blocks waiting for (or in) a round
constexpr unsigned kReserveBlocks = 1024;    // how far past the data the footer moves (sparse, 2 GiB)
// Metadata the allocation writes goes in whole 4 KiB pieces where it can:
// ext4 serialises a direct write smaller than its block against every
// other direct write of the file.
constexpr uint64_t kFsBlock = 4096;

struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};
using AlignedBytes = std::unique_ptr<uint8_t[], FreeDeleter>;

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

AlignedBytes aligned_bytes(size_t n) noexcept {
  const size_t len = (n + 4095) / 4096 * 4096;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, len));
  if (p != nullptr) std::memset(p, 0, len);
  return AlignedBytes(p);
}

}  // namespace

// ---------------------------------------------------------------------------
// The channel.

class VhdChannel final : public UringImageChannel {
 public:
  VhdChannel(VhdImage& image, Reactor& reactor) noexcept;
  ~VhdChannel() override;
  Status init() noexcept;

  void submit(ImageOp& op) noexcept override;
  bool poll() noexcept override;
  bool arm() noexcept override;

  VhdChannelStats vstats;

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
    iovec iov[kSubIov];
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
    void on_cache_fill(CacheBlock block, int error) noexcept override { ch.piece_ready(sub, std::move(block), error); }
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
    AlignedBytes bits;
    AlignedBytes store_buf;  // writable leaf: the snapshot a store writes
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
    uint64_t end = 0;      // the end of its blocks
    uint64_t footer = 0;   // where it moves the footer (0: it does not)
    AlignedBytes bitmaps;  // kMaxRoundBlocks bitmaps, each padded to whole 4 KiB
    AlignedBytes bat;      // kMaxRoundBlocks BAT pieces of up to 4 KiB
  };

  const VhdLevel& level(size_t i) const noexcept { return image_.chain_.levels[i]; }
  VhdLevel& leaf() noexcept { return image_.chain_.levels[0]; }
  [[nodiscard]] uint32_t spb() const noexcept { return block_size_ / kSector; }

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
  AlignedBytes footer_buf_;
  uint32_t meta_span_ = 0;  // a new block's bitmap padded in front to whole 4 KiB

  // Discard (a barrier in the channel).
  ImageOp* discard_ = nullptr;
  OpFifo held_;  // submitted behind a discard
  unsigned discard_pending_ = 0;
  int discard_error_ = 0;
  std::vector<uint32_t> punched_;
};

VhdChannel::VhdChannel(VhdImage& image, Reactor& reactor) noexcept
    : UringImageChannel(reactor), image_(image), writable_(!image.info().read_only), block_size_(image.block_size()) {}

VhdChannel::~VhdChannel() {
  if (writable_) image_.writer_.store(false, std::memory_order_release);
}

Status VhdChannel::init() noexcept {
  XP_TRY(attach());
  try {
    for (const VhdLevel& l : image_.chain_.levels) {
      files_.push_back(add_file(l.fd));
      if (l.sparse()) bitmap_bytes_ = std::max(bitmap_bytes_, l.layout.bitmap_bytes);
    }
    const unsigned n = std::max(16u, image_.cache_entries_);
    slots_.resize(n);
    index_.assign(std::bit_ceil(size_t{n} * 2), -1);
    index_shift_ = 64 - static_cast<unsigned>(std::countr_zero(index_.size()));
    for (Slot& s : slots_) {
      if (bitmap_bytes_ != 0) {
        s.bits = aligned_bytes(bitmap_bytes_);
        if (!s.bits) return unexpected(ENOMEM);
      }
      s.lru_next = free_slots_;
      free_slots_ = &s;
    }
    sync_data_ = image_.chain_.levels.size() > 1;
    if (image_.cache_ != nullptr) wake_ = CacheWakeQueue::on_reactor(reactor_);
    if (writable_ && leaf().sparse()) {
      footer_buf_ = aligned_bytes(vhd::kFooterSize);
      meta_span_ = static_cast<uint32_t>((bitmap_bytes_ + kFsBlock - 1) / kFsBlock * kFsBlock);
      if (!footer_buf_) return unexpected(ENOMEM);
      for (Round& rd : rounds_) {
        rd.bitmaps = aligned_bytes(size_t{kMaxRoundBlocks} * meta_span_);
        rd.bat = aligned_bytes(size_t{kMaxRoundBlocks} * kFsBlock);
        if (!rd.bitmaps || !rd.bat) return unexpected(ENOMEM);
      }
      alloc_pos_ = leaf().end_of_data;
      vhd::encode_footer(leaf().footer, std::span<uint8_t, vhd::kFooterSize>(footer_buf_.get(), vhd::kFooterSize));
    }
    punched_.reserve(64);
  } catch (...) {
    return unexpected(ENOMEM);
  }
  return ok();
}

UringImageChannel::FileRef VhdChannel::file_of(const ImageOp& op) const noexcept {
  return files_[static_cast<const SubOp&>(op).level];
}

// ---------------------------------------------------------------------------
// Pools.

VhdChannel::Req* VhdChannel::new_req() noexcept {
  Req* r = pool_take(reqs_, free_reqs_);
  if (r == nullptr) return nullptr;
  *r = Req{};
  ++live_reqs_;
  return r;
}

VhdChannel::SubOp* VhdChannel::new_sub(SubOp::Role role, uint8_t lvl) noexcept {
  const bool data = SubOp::data(role);
  if (data && data_subs_ >= kMaxDataSubOps) return nullptr;
  SubOp* s = pool_take(subs_, free_subs_);
  if (s == nullptr) return nullptr;
  s->role = role;
  s->level = lvl;
  s->nio = 0;
  s->first = s->count = 0;
  s->req = nullptr;
  s->slot = nullptr;
  s->round = nullptr;
  s->next = nullptr;
  if (data) ++data_subs_;
  return s;
}

void VhdChannel::free_sub(SubOp& s) noexcept {
  if (SubOp::data(s.role)) {
    --data_subs_;
    resources_freed_ = true;
  }
  s.next = free_subs_;
  free_subs_ = &s;
}

// ---------------------------------------------------------------------------
// Requests.

void VhdChannel::submit(ImageOp& op) noexcept {
  accept(op);
  if (discard_ != nullptr) {
    // Behind a discard: in order, after it.
    held_.push(op);
    return;
  }
  const ImageInfo& info = image_.info();
  const auto kind = op.kind();
  if (kind == ImageOp::Kind::kSecureDiscard) return complete_later(op, -EOPNOTSUPP);
  if (kind != ImageOp::Kind::kRead && info.read_only) {
    return complete_later(op, kind == ImageOp::Kind::kFlush ? 0 : -EROFS);
  }
  if (kind == ImageOp::Kind::kDiscard) {
    if (!info.discard) return complete_later(op, -EOPNOTSUPP);
    discard_ = &op;
    if (live_reqs_ == 0) run_discard();
    return;
  }
  Req* r = new_req();
  if (r == nullptr) return complete_later(op, -ENOMEM);
  r->op = &op;
  if (kind == ImageOp::Kind::kFlush) {
    SubOp* s = new_sub(SubOp::Role::kFlush, 0);
    if (s == nullptr) {
      r->error = -ENOMEM;
      return maybe_finish(*r, true);
    }
    s->req = r;
    ++r->pending;
    s->prep_flush();
    start(*s);
    return;
  }
  // Reads and writes: sector granular, inside the disk.
  uint64_t total = 0;
  bool aligned = op.offset() % kSector == 0;
  for (unsigned i = 0; i < op.iovcnt(); ++i) {
    total += op.iov()[i].iov_len;
    aligned = aligned && op.iov()[i].iov_len % kSector == 0;
  }
  if (!aligned || op.offset() > info.size_bytes || total > info.size_bytes - op.offset()) {
    r->error = -EINVAL;
    return maybe_finish(*r, true);
  }
  r->pos = op.offset();
  r->end = op.offset() + total;
  r->iov = op.iov();
  r->iovcnt = op.iovcnt();
  advance(*r);
  maybe_finish(*r, true);
}

void VhdChannel::advance(Req& r) noexcept {
  r.parked = false;
  const bool write = r.op->kind() == ImageOp::Kind::kWrite;
  ++r.pending;  // nothing completes the request while it is being planned
  while (r.pos < r.end && r.error == 0) {
    if (!(write ? step_write(r) : step_read(r))) break;
  }
  --r.pending;
}

void VhdChannel::park(Req& r, Req*& list) noexcept {
  ++vstats.waits;
  r.parked = true;
  r.next = list;
  list = &r;
}

void VhdChannel::wake(Req*& list) noexcept {
  Req* r = list;
  list = nullptr;
  // Re-planning may park them again (on this very list).
  while (r != nullptr) {
    Req* next = r->next;
    r->next = nullptr;
    advance(*r);
    maybe_finish(*r, false);
    r = next;
  }
}

void VhdChannel::maybe_finish(Req& r, bool deferred) noexcept {
  if (r.pending != 0 || r.parked || (r.pos < r.end && r.error == 0)) return;
  ImageOp& op = *r.op;
  const int err = r.error;
  r.next = free_reqs_;
  free_reqs_ = &r;
  --live_reqs_;
  if (deferred) {
    complete_later(op, err);
  } else {
    complete(op, err);
  }
  if (live_reqs_ == 0 && discard_ != nullptr && discard_pending_ == 0 && punched_.empty()) run_discard();
}

void VhdChannel::sub_done(Req& r, int result) noexcept {
  if (result < 0 && r.error == 0) r.error = result;
  --r.pending;
  maybe_finish(r, false);
}

size_t VhdChannel::take_iov(Req& r, SubOp& s, uint64_t bytes) noexcept {
  size_t got = 0;
  unsigned n = 0;
  while (got < bytes && n < kSubIov && r.iv < r.iovcnt) {
    const iovec& v = r.iov[r.iv];
    const size_t avail = v.iov_len - r.ivoff;
    const size_t take = static_cast<size_t>(std::min<uint64_t>(avail, bytes - got));
    s.iov[n++] = iovec{static_cast<char*>(v.iov_base) + r.ivoff, take};
    got += take;
    r.ivoff += take;
    if (r.ivoff == v.iov_len) {
      ++r.iv;
      r.ivoff = 0;
    }
  }
  s.nio = n;
  return got;
}

void VhdChannel::fill_guest(Req& r, const uint8_t* src, uint64_t bytes) noexcept {
  while (bytes != 0 && r.iv < r.iovcnt) {
    const iovec& v = r.iov[r.iv];
    const size_t take = static_cast<size_t>(std::min<uint64_t>(v.iov_len - r.ivoff, bytes));
    if (src != nullptr) {
      std::memcpy(static_cast<char*>(v.iov_base) + r.ivoff, src, take);
      src += take;
    } else {
      std::memset(static_cast<char*>(v.iov_base) + r.ivoff, 0, take);
    }
    bytes -= take;
    r.pos += take;
    r.ivoff += take;
    if (r.ivoff == v.iov_len) {
      ++r.iv;
      r.ivoff = 0;
    }
  }
}

// One run of a read: the sectors from r.pos that one level (or none) holds,
// inside one block. False when the request parked.
bool VhdChannel::step_read(Req& r) noexcept {
  const uint64_t sector = r.pos / kSector;
  const auto block = static_cast<uint32_t>(sector / spb());
  const auto first = static_cast<uint32_t>(sector % spb());
  uint32_t limit = static_cast<uint32_t>(std::min<uint64_t>(spb() - first, (r.end - r.pos) / kSector));
  const size_t depth = image_.chain_.levels.size();
  for (size_t i = 0; i < depth; ++i) {
    const VhdLevel& l = level(i);
    uint64_t file_off = 0;
    if (!l.sparse()) {
      // Fixed: the data at its virtual offset, as far as the file's disk goes.
      file_off = r.pos;
      const uint64_t avail = file_off < l.virtual_size() ? (l.virtual_size() - file_off) / kSector : 0;
      if (avail == 0) continue;
      limit = static_cast<uint32_t>(std::min<uint64_t>(limit, avail));
    } else {
      if (block >= l.bat.size() || l.bat[block] == vhd::kBatUnused) continue;
      const uint32_t entry = l.bat[block];
      file_off = l.layout.sector_offset(entry, first);
      if (full(i, block)) {
        ++vstats.full_hits;
      } else {
        Slot* slot = bitmap_for(r, static_cast<uint8_t>(i), block);
        if (slot == nullptr) return false;
        const std::span<const uint8_t> map(slot->bits.get(), l.layout.bitmap_bytes);
        const uint32_t run = vhd::bitmap_run(map, first, limit);
        if (!vhd::bitmap_test(map, first)) {
          limit = run;  // not here: what is below decides these sectors
          continue;
        }
        limit = run;
      }
    }
    const auto lvl = static_cast<uint8_t>(i);
    if (CacheImage* ci = image_.cache_image(i)) return read_cached(r, lvl, *ci, file_off, uint64_t{limit} * kSector);
    return read_direct(r, lvl, file_off, uint64_t{limit} * kSector);
  }
  ++vstats.zero_fills;
  fill_guest(r, nullptr, uint64_t{limit} * kSector);
  return true;
}

// Reads `bytes` of the level's file at `file_off` straight into the guest's
// pages (one readv). False when the request parked.
bool VhdChannel::read_direct(Req& r, uint8_t lvl, uint64_t file_off, uint64_t bytes) noexcept {
  SubOp* s = new_sub(SubOp::Role::kData, lvl);
  if (s == nullptr) {
    park(r, resource_waiters_);
    return false;
  }
  const size_t got = take_iov(r, *s, bytes);
  s->req = &r;
  ++r.pending;
  ++vstats.data_ops;
  s->prep_read(s->iov, s->nio, file_off);
  r.pos += got;
  start(*s);
  return true;
}

// The part of a run of an immutable level inside one cache block, through
// the shared cache (docs/cache.md, the image layer's contract). False when
// the request parked.
bool VhdChannel::read_cached(Req& r, uint8_t lvl, CacheImage& ci, uint64_t file_off, uint64_t bytes) noexcept {
  BlockCache& cache = *image_.cache_;
  const uint64_t cbs = cache.block_size();
  const uint64_t b = file_off / cbs;
  const auto in_block = static_cast<uint32_t>(file_off % cbs);
  bytes = std::min<uint64_t>(bytes, cbs - in_block);
  // The block's bytes in the file (the last one may be short): whole
  // sectors, or O_DIRECT could not read it.
  const uint64_t fill_off = b * cbs;
  const uint64_t file_size = level(lvl).file_size;
  const uint64_t fill_len = fill_off < file_size ? std::min<uint64_t>(cbs, file_size - fill_off) : 0;
  if (fill_len % kSector != 0 || in_block + bytes > fill_len) {
    ++vstats.cache_bypasses;
    return read_direct(r, lvl, file_off, bytes);
  }
  SubOp* s = new_sub(SubOp::Role::kCacheWait, lvl);
  if (s == nullptr) {
    park(r, resource_waiters_);
    return false;
  }
  if (!s->waiter) s->waiter.reset(new (std::nothrow) PieceWaiter(wake_.get(), *this, *s));
  auto res = cache.lookup(ci, b, static_cast<uint32_t>(bytes), s->waiter.get());
  switch (res.outcome) {
    case BlockCache::Outcome::kHit:
      free_sub(*s);
      if (res.block.length() < in_block + bytes) break;  // the file's tail shorter than when filled
      ++vstats.cache_hits;
      fill_guest(r, res.block.data() + in_block, bytes);
      return true;
    case BlockCache::Outcome::kFill:
    case BlockCache::Outcome::kWait: {
      const size_t got = take_iov(r, *s, bytes);
      s->req = &r;
      s->file_off = file_off;
      s->in_block = in_block;
      s->bytes = static_cast<uint32_t>(got);
      ++r.pending;
      r.pos += got;
      if (res.outcome == BlockCache::Outcome::kWait) {
        ++vstats.cache_waits;  // piece_ready() from this reactor once the fill is done
        return true;
      }
      ++vstats.cache_fills;
      s->role = SubOp::Role::kCacheFill;
      s->cblock = std::move(res.block);
      s->fill_len = static_cast<uint32_t>(fill_len);
      s->fill_iov = iovec{s->cblock.data(), fill_len};
      s->prep_read(&s->fill_iov, 1, fill_off);
      start(*s);
      return true;
    }
    case BlockCache::Outcome::kBypass:
      free_sub(*s);
      break;
  }
  ++vstats.cache_bypasses;
  return read_direct(r, lvl, file_off, bytes);
}

// A cached piece's block is there (error 0, pinned) or will not be (the
// fill failed, here or on another worker): copy it, or read the piece
// around the cache as the contract says (another worker's failure is not
// this request's).
void VhdChannel::piece_ready(SubOp& s, CacheBlock block, int error) noexcept {
  Req& r = *s.req;
  if (error == 0 && block && block.length() >= s.in_block + s.bytes) {
    const uint8_t* src = block.data() + s.in_block;
    for (unsigned i = 0; i < s.nio; ++i) {
      std::memcpy(s.iov[i].iov_base, src, s.iov[i].iov_len);
      src += s.iov[i].iov_len;
    }
    block.reset();
    free_sub(s);
    sub_done(r, 0);
    return;
  }
  block.reset();
  ++vstats.cache_fallbacks;
  ++vstats.data_ops;
  s.role = SubOp::Role::kData;
  s.prep_read(s.iov, s.nio, s.file_off);
  start(s);
}

// One run of a write: sectors from r.pos inside one block of the leaf.
bool VhdChannel::step_write(Req& r) noexcept {
  VhdLevel& l = leaf();
  const uint64_t sector = r.pos / kSector;
  const auto block = static_cast<uint32_t>(sector / spb());
  const auto first = static_cast<uint32_t>(sector % spb());
  const uint32_t limit = static_cast<uint32_t>(std::min<uint64_t>(spb() - first, (r.end - r.pos) / kSector));
  uint64_t file_off = r.pos;
  SubOp::Role role = SubOp::Role::kData;
  Slot* slot = nullptr;
  Alloc* alloc = nullptr;
  if (l.sparse()) {
    if (Alloc* a = find_alloc(block)) {
      // Being allocated: wait for its round, then write into the block.
      park(r, a->waiters);
      return false;
    }
    if (block >= l.bat.size()) {
      r.error = -EIO;
      return false;
    }
    const uint32_t entry = l.bat[block];
    if (entry == vhd::kBatUnused) {
      if (live_allocs_ >= kMaxPendingAllocs) {
        park(r, resource_waiters_);
        return false;
      }
      role = SubOp::Role::kAllocData;
    } else {
      file_off = l.layout.sector_offset(entry, first);
      if (!full(0, block)) {
        slot = bitmap_for(r, 0, block);
        if (slot == nullptr) return false;
        const std::span<const uint8_t> map(slot->bits.get(), l.layout.bitmap_bytes);
        // Bits already set: the data is all this write changes.
        const bool set = vhd::bitmap_test(map, first) && vhd::bitmap_run(map, first, limit) == limit;
        if (!set) role = SubOp::Role::kMarked;
      }
    }
  }
  SubOp* s = new_sub(role, 0);
  if (s == nullptr) {
    park(r, resource_waiters_);
    return false;
  }
  if (role == SubOp::Role::kAllocData) {
    alloc = pool_take(allocs_, free_allocs_);
    if (alloc == nullptr) {
      free_sub(*s);
      r.error = -ENOMEM;
      return false;
    }
    *alloc = Alloc{};
    alloc->block = block;
    ++live_allocs_;
  }
  const size_t got = take_iov(r, *s, uint64_t{limit} * kSector);
  s->req = &r;
  s->first = first;
  s->count = static_cast<uint32_t>(got / kSector);
  ++r.pending;
  ++vstats.data_ops;
  r.pos += got;
  switch (role) {
    case SubOp::Role::kAllocData:
      // Written by the round, at the block's place in the file.
      alloc->subs = s;
      if (queued_tail_ != nullptr) {
        queued_tail_->next = alloc;
      } else {
        queued_ = alloc;
      }
      queued_tail_ = alloc;
      start_round();
      return true;
    case SubOp::Role::kMarked:
      s->slot = slot;
      ++slot->pins;
      lru_remove(*slot);
      break;
    default:
      break;
  }
  s->prep_write(s->iov, s->nio, file_off);
  start(*s);
  return true;
}

void VhdChannel::transferred(ImageOp& op, int result) noexcept {
  auto& s = static_cast<SubOp&>(op);
  switch (s.role) {
    case SubOp::Role::kData:
    case SubOp::Role::kFlush: {
      Req& r = *s.req;
      free_sub(s);
      sub_done(r, result);
      return;
    }
    case SubOp::Role::kCacheFill:
      image_.cache_->complete(s.cblock, result == 0 ? static_cast<int>(s.fill_len) : result);
      // Published: the handle is pinned on it. Failed: emptied.
      return piece_ready(s, std::move(s.cblock), result == 0 ? 0 : -result);
    case SubOp::Role::kCacheWait:
      return;  // never started: woken through its waiter
    case SubOp::Role::kMarked:
      return marked_done(s, result);
    case SubOp::Role::kLoad:
      return load_done(s, result);
    case SubOp::Role::kStoreSync:
      if (result == 0) return store_write(s);
      return store_done(s, result);
    case SubOp::Role::kStore:
      return store_done(s, result);
    case SubOp::Role::kAllocData:
      return round_io_done(*s.round, result);
    case SubOp::Role::kRound: {
      Round& rd = *s.round;
      free_sub(s);
      return round_io_done(rd, result);
    }
    case SubOp::Role::kPunch:
      free_sub(s);
      if (result < 0 && discard_error_ == 0) discard_error_ = result;
      if (--discard_pending_ == 0) discard_done();
      return;
  }
}

// ---------------------------------------------------------------------------
// The bitmap cache.

VhdChannel::Slot* VhdChannel::find_slot(uint64_t key) noexcept {
  const size_t mask = index_.size() - 1;
  for (size_t i = home(key);; i = (i + 1) & mask) {
    const int32_t v = index_[i];
    if (v < 0) return nullptr;
    if (slots_[static_cast<size_t>(v)].key == key) return &slots_[static_cast<size_t>(v)];
  }
}

VhdChannel::Slot* VhdChannel::take_slot(uint64_t key) noexcept {
  Slot* s = free_slots_;
  if (s != nullptr) {
    free_slots_ = s->lru_next;
  } else {
    s = lru_tail_;  // the least recently used idle slot
    if (s == nullptr) return nullptr;
    drop_slot(*s);
    free_slots_ = s->lru_next;
  }
  s->key = key;
  s->prev = s->lru_next = nullptr;
  const size_t mask = index_.size() - 1;
  size_t i = home(key);
  while (index_[i] >= 0) i = (i + 1) & mask;
  index_[i] = static_cast<int32_t>(s - slots_.data());
  return s;
}

// Unindexes an idle slot and puts it on the free list.
void VhdChannel::drop_slot(Slot& s) noexcept {
  lru_remove(s);
  const size_t mask = index_.size() - 1;
  size_t i = home(s.key);
  const auto me = static_cast<int32_t>(&s - slots_.data());
  while (index_[i] != me) i = (i + 1) & mask;
  // Backward-shift deletion keeps every probe chain unbroken.
  index_[i] = -1;
  for (size_t j = (i + 1) & mask; index_[j] >= 0; j = (j + 1) & mask) {
    const int32_t v = index_[j];
    const size_t h = home(slots_[static_cast<size_t>(v)].key);
    // Move v back to i when i lies cyclically in [home, j).
    if (((j - h) & mask) >= ((j - i) & mask)) {
      index_[i] = v;
      index_[j] = -1;
      i = j;
    }
  }
  s.key = kNoKey;
  s.lru_next = free_slots_;
  free_slots_ = &s;
}

void VhdChannel::lru_remove(Slot& s) noexcept {
  if (s.prev == nullptr && lru_head_ != &s) return;  // not on the LRU
  if (s.prev != nullptr) s.prev->lru_next = s.lru_next;
  if (s.lru_next != nullptr) {
    s.lru_next->prev = s.prev;
  } else {
    lru_tail_ = s.prev;
  }
  if (lru_head_ == &s) lru_head_ = s.lru_next;
  s.prev = s.lru_next = nullptr;
}

void VhdChannel::touch(Slot& s) noexcept {
  if (lru_head_ == &s || s.busy()) return;
  lru_remove(s);
  idle(s);
}

// An unpinned slot goes to the head of the LRU (evictable).
void VhdChannel::idle(Slot& s) noexcept {
  s.prev = nullptr;
  s.lru_next = lru_head_;
  if (lru_head_ != nullptr) lru_head_->prev = &s;
  lru_head_ = &s;
  if (lru_tail_ == nullptr) lru_tail_ = &s;
  resources_freed_ = true;
}

VhdChannel::Slot* VhdChannel::bitmap_for(Req& r, uint8_t lvl, uint32_t block) noexcept {
  const uint64_t key = (uint64_t{lvl} << 32) | block;
  Slot* s = find_slot(key);
  if (s != nullptr && !s->loading) {
    touch(*s);
    return s;
  }
  if (s == nullptr) {
    s = take_slot(key);
    if (s == nullptr) {
      park(r, resource_waiters_);  // every slot in use by I/O: wait for one
      return nullptr;
    }
    SubOp* load = new_sub(SubOp::Role::kLoad, lvl);
    if (load == nullptr) {
      drop_slot(*s);
      r.error = -ENOMEM;
      return nullptr;
    }
    const VhdLevel& l = level(lvl);
    s->loading = true;
    load->slot = s;
    load->iov[0] = iovec{s->bits.get(), l.layout.bitmap_bytes};
    load->prep_read(load->iov, 1, vhd::BlockLayout::bitmap_offset(l.bat[block]));
    ++vstats.bitmap_loads;
    start(*load);
  }
  park(r, s->waiters);
  return nullptr;
}

void VhdChannel::load_done(SubOp& load, int result) noexcept {
  Slot& s = *load.slot;
  const auto lvl = static_cast<size_t>(s.key >> 32);
  const auto block = static_cast<uint32_t>(s.key);
  free_sub(load);
  s.loading = false;
  Req* waiters = s.waiters;
  s.waiters = nullptr;
  if (result < 0) {
    drop_slot(s);
    for (Req* r = waiters; r != nullptr; r = r->next) {
      if (r->error == 0) r->error = result;
    }
  } else {
    const VhdLevel& l = level(lvl);
    if (vhd::bitmap_all_set(std::span<const uint8_t>(s.bits.get(), l.layout.bitmap_bytes), spb())) {
      image_.set_full(lvl, block, true);
    }
    idle(s);
  }
  // They re-plan now, while the bitmap is certainly cached.
  wake(waiters);
}

void VhdChannel::marked_done(SubOp& s, int result) noexcept {
  Slot& slot = *s.slot;
  if (result < 0) {
    Req& r = *s.req;
    --slot.pins;
    if (!slot.busy()) idle(slot);
    free_sub(s);
    return sub_done(r, result);
  }
  // The data is on the file: the bits may say so now (in memory first, so
  // reads find it), then on the file.
  const VhdLevel& l = leaf();
  const std::span<uint8_t> map(slot.bits.get(), l.layout.bitmap_bytes);
  vhd::bitmap_set(map, s.first, s.count);
  if (vhd::bitmap_all_set(map, spb())) image_.set_full(0, static_cast<uint32_t>(slot.key), true);
  s.next = slot.store_next;
  slot.store_next = &s;
  if (!slot.storing) start_store(slot);
}

void VhdChannel::start_store(Slot& slot) noexcept {
  const VhdLevel& l = leaf();
  if (!slot.store_buf) slot.store_buf = aligned_bytes(l.layout.bitmap_bytes);
  SubOp* st = slot.store_buf ? new_sub(SubOp::Role::kStore, 0) : nullptr;
  if (st == nullptr) {
    // No memory for the store: the writes waiting for it fail.
    SubOp* s = slot.store_next;
    slot.store_next = nullptr;
    while (s != nullptr) {
      SubOp* next = s->next;
      Req& r = *s->req;
      --slot.pins;
      free_sub(*s);
      sub_done(r, -ENOMEM);
      s = next;
    }
    if (!slot.busy()) idle(slot);
    return;
  }
  std::memcpy(slot.store_buf.get(), slot.bits.get(), l.layout.bitmap_bytes);
  slot.storing = true;
  slot.store_cur = slot.store_next;
  slot.store_next = nullptr;
  st->slot = &slot;
  if (sync_data_) {
    // A differencing leaf: the data durable before the bits that claim it
    // (as in an allocation round).
    st->role = SubOp::Role::kStoreSync;
    st->prep_flush();
    start(*st);
    return;
  }
  store_write(*st);
}

void VhdChannel::store_write(SubOp& st) noexcept {
  const VhdLevel& l = leaf();
  Slot& slot = *st.slot;
  st.role = SubOp::Role::kStore;
  st.iov[0] = iovec{slot.store_buf.get(), l.layout.bitmap_bytes};
  st.prep_write(st.iov, 1, vhd::BlockLayout::bitmap_offset(l.bat[static_cast<uint32_t>(slot.key)]));
  ++vstats.bitmap_stores;
  start(st);
}

void VhdChannel::store_done(SubOp& st, int result) noexcept {
  Slot& slot = *st.slot;
  free_sub(st);
  slot.storing = false;
  SubOp* s = slot.store_cur;
  slot.store_cur = nullptr;
  // Writes that set bits meanwhile get the next store before anyone is
  // answered (their answers may start more writes on this slot).
  if (slot.store_next != nullptr) start_store(slot);
  while (s != nullptr) {
    SubOp* next = s->next;
    Req& r = *s->req;
    --slot.pins;
    free_sub(*s);
    sub_done(r, result);
    s = next;
  }
  if (!slot.busy()) idle(slot);
}

// ---------------------------------------------------------------------------
// Allocation rounds.

VhdChannel::Alloc* VhdChannel::find_alloc(uint32_t block) noexcept {
  if (live_allocs_ == 0) return nullptr;
  for (const Round& rd : rounds_) {
    for (Alloc* a = rd.allocs; a != nullptr; a = a->next) {
      if (a->block == block) return a;
    }
  }
  for (Alloc* a = queued_; a != nullptr; a = a->next) {
    if (a->block == block) return a;
  }
  return nullptr;
}

void VhdChannel::start_round() noexcept {
  if (queued_ == nullptr) return;
  Round& rd = rounds_[next_round_];
  Round& other = rounds_[next_round_ ^ 1];
  // A free slot, and the round before (if any) past its footer: this
  // round's data may extend the file only once that footer ends it.
  if (rd.phase != Phase::kIdle || (other.phase != Phase::kIdle && other.phase < Phase::kData)) return;
  next_round_ ^= 1;
  if (committing_ == nullptr) committing_ = &rd;
  VhdLevel& l = leaf();
  // Take up to kMaxRoundBlocks queued blocks and place them one after the
  // other past the data (space a crashed or failed round left unreferenced
  // is reused after a reopen).
  uint64_t pos = std::max(alloc_pos_, l.end_of_data);
  rd.allocs = nullptr;
  Alloc* tail = nullptr;
  unsigned n = 0;
  int error = 0;
  while (queued_ != nullptr && n < kMaxRoundBlocks) {
    Alloc* a = queued_;
    queued_ = a->next;
    a->next = nullptr;
    if (tail != nullptr) {
      tail->next = a;
    } else {
      rd.allocs = a;
    }
    tail = a;
    // The data on a 4 KiB boundary, with a whole 4 KiB piece in front of
    // it for the bitmap (zeros, then the bitmap) that nothing else uses.
    const uint64_t data = (pos + meta_span_ + kFsBlock - 1) / kFsBlock * kFsBlock;
    const uint64_t at = data - l.layout.bitmap_bytes;
    if (at / kSector >= vhd::kBatUnused) error = -ENOSPC;  // beyond what a BAT entry can say
    a->entry = static_cast<uint32_t>(at / kSector);
    pos = data + l.layout.block_size;
    ++n;
  }
  if (queued_ == nullptr) queued_tail_ = nullptr;
  alloc_pos_ = pos;
  rd.end = pos;
  rd.footer = 0;
  rd.error = error;
  ++vstats.alloc_rounds;
  rd.phase = Phase::kFooter;
  if (error != 0) return round_end(rd, error);
  if (rd.end <= l.footer_offset) return round_next(rd);  // inside the space the footer already leaves
  // 1. The footer moves first, kReserveBlocks blocks past the new ones (a
  // sparse reserve, so most rounds need not move it; given back at close),
  // so the file always ends in a valid footer.
  rd.footer = rd.end + uint64_t{kReserveBlocks} * l.layout.block_bytes();
  rd.pending = 1;
  round_write(rd, footer_buf_.get(), vhd::kFooterSize, rd.footer);
  round_io_done(rd, 0);
}

void VhdChannel::round_io_done(Round& rd, int result) noexcept {
  if (result < 0 && rd.error == 0) rd.error = result;
  if (--rd.pending != 0) return;
  if (rd.error != 0 && rd.phase != Phase::kMeta) {
    // Nothing of it is referenced yet; it still commits (fails) in order.
    rd.phase = Phase::kWaitMeta;
    if (committing_ == &rd) round_end(rd, rd.error);
    return;
  }
  if (rd.error != 0) return round_end(rd, rd.error);
  round_next(rd);
}

void VhdChannel::round_sync(Round& rd, Phase next) noexcept {
  rd.phase = next;
  SubOp* f = new_sub(SubOp::Role::kRound, 0);
  if (f == nullptr) {
    rd.pending = 1;
    return round_io_done(rd, -ENOMEM);
  }
  f->round = &rd;
  f->prep_flush();
  rd.pending = 1;
  start(*f);
}

void VhdChannel::round_next(Round& rd) noexcept {
  VhdLevel& l = leaf();
  switch (rd.phase) {
    case Phase::kFooter:
      if (rd.footer > l.footer_offset) {
        // The footer moved: the file is longer. That is durable before any
        // BAT entry points into the new space (after a power cut a BAT
        // entry beyond the end of the file would make the image unusable).
        l.footer_offset = rd.footer;
        return round_sync(rd, Phase::kFooterSync);
      }
      [[fallthrough]];
    case Phase::kFooterSync: {
      // 2. The data.
      rd.phase = Phase::kData;
      rd.pending = 1;  // guard while starting
      for (Alloc* a = rd.allocs; a != nullptr; a = a->next) {
        for (SubOp* sub = a->subs; sub != nullptr; sub = sub->next) {
          sub->round = &rd;
          sub->prep_write(sub->iov, sub->nio, l.layout.sector_offset(a->entry, sub->first));
          ++rd.pending;
          start(*sub);
        }
      }
      round_io_done(rd, 0);
      // The next round may start its data now.
      return start_round();
    }
    case Phase::kData:
      // 3. A differencing leaf: the data is durable before a bitmap bit
      // can claim it (else a power cut could turn the parent's sectors
      // into zeros). A dynamic disk needs no wait: a lost data sector
      // reads as zeros, which is what it held before.
      if (sync_data_) return round_sync(rd, Phase::kSync);
      [[fallthrough]];
    case Phase::kSync:
      rd.phase = Phase::kWaitMeta;
      [[fallthrough]];
    case Phase::kWaitMeta:
      // 4. Its metadata once the rounds before it committed.
      if (committing_ == &rd) round_meta(rd);
      return;
    case Phase::kMeta:
      return round_end(rd, 0);
    case Phase::kIdle:
      return;
  }
}

// 4. The bitmaps and the BAT with the new entries, together: a lost bitmap
// reads as all clear (the block as it was), a lost BAT entry leaves the
// block unreferenced. The BAT: each touched 4 KiB piece of the table once,
// whole when it lies inside the table, else the touched 512-byte sector
// (the table's ends may share a piece with other metadata).
void VhdChannel::round_meta(Round& rd) noexcept {
  const VhdLevel& l = leaf();
  rd.phase = Phase::kMeta;
  rd.pending = 1;
  unsigned k = 0;
  for (Alloc* a = rd.allocs; a != nullptr; a = a->next, ++k) {
    uint8_t* span = rd.bitmaps.get() + size_t{k} * meta_span_;
    std::memset(span, 0, meta_span_);
    const std::span<uint8_t> bm(span + meta_span_ - l.layout.bitmap_bytes, l.layout.bitmap_bytes);
    for (SubOp* sub = a->subs; sub != nullptr; sub = sub->next) vhd::bitmap_set(bm, sub->first, sub->count);
    round_write(rd, span, meta_span_, l.layout.data_offset(a->entry) - meta_span_);
  }
  const uint64_t table = l.header.table_offset;
  const uint64_t table_end = table + vhd::bat_bytes_padded(static_cast<uint32_t>(l.bat.size()));
  uint64_t done[kMaxRoundBlocks];
  unsigned n = 0;
  for (Alloc* a = rd.allocs; a != nullptr; a = a->next) {
    const uint64_t at = vhd::bat_entry_offset(table, a->block);
    uint64_t lo = at / kFsBlock * kFsBlock;
    uint64_t hi = lo + kFsBlock;
    if (lo < table || hi > table_end) {
      lo = at / kSector * kSector;
      hi = lo + kSector;
    }
    if (std::find(done, done + n, lo) != done + n) continue;
    uint8_t* buf = rd.bat.get() + size_t{n} * kFsBlock;
    done[n++] = lo;
    for (uint64_t off = lo; off < hi; off += 4) {
      const uint64_t blk = (off - table) / 4;
      uint32_t v = blk < l.bat.size() ? l.bat[blk] : vhd::kBatUnused;
      for (Alloc* o = rd.allocs; o != nullptr; o = o->next) {
        if (o->block == blk) v = o->entry;
      }
      vhd::bat_entry_encode(v, buf + (off - lo));
    }
    round_write(rd, buf, hi - lo, lo);
  }
  round_io_done(rd, 0);
}

// One metadata write of a round.
void VhdChannel::round_write(Round& rd, uint8_t* buf, size_t len, uint64_t offset) noexcept {
  SubOp* w = new_sub(SubOp::Role::kRound, 0);
  if (w == nullptr) {
    if (rd.error == 0) rd.error = -ENOMEM;
    return;
  }
  w->round = &rd;
  w->iov[0] = iovec{buf, len};
  w->prep_write(w->iov, 1, offset);
  ++rd.pending;
  start(*w);
}

void VhdChannel::round_end(Round& rd, int error) noexcept {
  VhdLevel& l = leaf();
  if (error == 0) {
    unsigned k = 0;
    for (Alloc* a = rd.allocs; a != nullptr; a = a->next, ++k) {
      l.bat[a->block] = a->entry;
      ++l.allocated_blocks;
      ++vstats.allocations;
      // The bitmap just written is the block's: cache it when a slot is free.
      const std::span<const uint8_t> bm(rd.bitmaps.get() + size_t{k} * meta_span_ + meta_span_ - l.layout.bitmap_bytes,
                                        l.layout.bitmap_bytes);
      if (vhd::bitmap_all_set(bm, spb())) {
        image_.set_full(0, a->block, true);
      } else if (Slot* s = take_slot(uint64_t{a->block})) {
        std::memcpy(s->bits.get(), bm.data(), bm.size());
        idle(*s);
      }
    }
    l.end_of_data = std::max(l.end_of_data, rd.end);
  } else {
    ++vstats.alloc_failures;
  }
  rd.phase = Phase::kIdle;
  Alloc* a = rd.allocs;
  rd.allocs = nullptr;
  // The other round (if any) commits next.
  Round& other = rounds_[&rd == &rounds_[0] ? 1 : 0];
  committing_ = other.phase != Phase::kIdle ? &other : nullptr;
  // Answer the writes, then let the requests that waited for the blocks go
  // (a failed round leaves them unallocated: they try again).
  while (a != nullptr) {
    Alloc* next = a->next;
    SubOp* s = a->subs;
    while (s != nullptr) {
      SubOp* sn = s->next;
      Req& r = *s->req;
      free_sub(*s);
      sub_done(r, error);
      s = sn;
    }
    Req* waiters = a->waiters;
    a->next = free_allocs_;
    free_allocs_ = a;
    --live_allocs_;
    resources_freed_ = true;
    wake(waiters);
    a = next;
  }
  if (committing_ != nullptr && committing_->phase == Phase::kWaitMeta) {
    if (committing_->error != 0) {
      round_end(*committing_, committing_->error);
    } else {
      round_meta(*committing_);
    }
  }
  start_round();
}

// ---------------------------------------------------------------------------
// Discard.

void VhdChannel::run_discard() noexcept {
  ImageOp& op = *discard_;
  const VhdLevel& l = leaf();
  const uint64_t bs = block_size_;
  const uint64_t first = (op.offset() + bs - 1) / bs;
  const uint64_t end = std::min<uint64_t>((op.offset() + op.remaining()) / bs, l.bat.size());
  discard_error_ = 0;
  discard_pending_ = 1;
  punched_.clear();
  for (uint64_t b = first; b < end; ++b) {
    const uint32_t entry = l.bat[b];
    if (entry == vhd::kBatUnused) continue;
    SubOp* s = new_sub(SubOp::Role::kPunch, 0);
    if (s == nullptr) {
      discard_error_ = -ENOMEM;
      break;
    }
    try {
      punched_.push_back(static_cast<uint32_t>(b));
    } catch (...) {
      free_sub(*s);
      discard_error_ = -ENOMEM;
      break;
    }
    s->prep_discard(vhd::BlockLayout::bitmap_offset(entry), l.layout.block_bytes(), false);
    ++discard_pending_;
    start(*s);
  }
  if (--discard_pending_ == 0) discard_done();
}

void VhdChannel::discard_done() noexcept {
  // Whatever was punched reads as never written: forget what we knew.
  for (uint32_t b : punched_) {
    image_.set_full(0, b, false);
    if (Slot* s = find_slot(uint64_t{b})) drop_slot(*s);
    ++vstats.punched_blocks;
  }
  punched_.clear();
  ImageOp& op = *discard_;
  discard_ = nullptr;
  complete_later(op, discard_error_);  // may run inside submit()
  // Release what was held behind it, in order (another discard stops it).
  OpFifo held = held_;
  held_ = {};
  while (ImageOp* h = held.pop()) {
    --stats_.submitted;  // counted again by submit()
    --stats_.in_flight;
    submit(*h);
    if (discard_ != nullptr) {
      while (ImageOp* rest = held.pop()) held_.push(*rest);
      break;
    }
  }
}

bool VhdChannel::poll() noexcept {
  bool work = UringImageChannel::poll();
  // Requests that waited for a sub-op, a cache slot or an allocation record
  // try again once something was released (from here, not from inside the
  // completion that released it).
  if (resources_freed_ && resource_waiters_ != nullptr) {
    resources_freed_ = false;
    wake(resource_waiters_);
    work = true;
  }
  resources_freed_ = resources_freed_ && resource_waiters_ != nullptr;
  return work;
}

bool VhdChannel::arm() noexcept {
  return UringImageChannel::arm() || (resources_freed_ && resource_waiters_ != nullptr);
}

// ---------------------------------------------------------------------------
// The image.

namespace {

// Whether the file takes O_DIRECT at 512-byte offsets, and its memory alignment.
bool direct_capable(int fd, uint32_t& mem_align) noexcept {
  struct statx stx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0 || (stx.stx_mask & STATX_DIOALIGN) == 0) return false;
  if (stx.stx_dio_offset_align == 0 || stx.stx_dio_offset_align > kSector) return false;
  mem_align = std::max<uint32_t>(mem_align, stx.stx_dio_mem_align);
  return mem_align <= kSector;
}

}  // namespace

VhdImage::VhdImage(std::string path, VhdChain chain, const ImageInfo& info, uint32_t block_size,
                   unsigned cache_entries) noexcept
    : path_(std::move(path)),
      chain_(std::move(chain)),
      info_(info),
      block_size_(block_size),
      cache_entries_(cache_entries) {}

VhdImage::~VhdImage() {
  // Served writable: give back the footer's reserve (the file ends right
  // after the data again). The footer goes to its new place first; until
  // the truncation the old one still ends the file.
  if (info_.read_only || chain_.levels.empty() || !chain_.leaf().sparse()) return;
  VhdLevel& l = chain_.leaf();
  const uint64_t end = (l.end_of_data + kSector - 1) / kSector * kSector;
  if (end >= l.footer_offset) return;
  AlignedBytes buf = aligned_bytes(vhd::kFooterSize);
  if (!buf) return;
  vhd::encode_footer(l.footer, std::span<uint8_t, vhd::kFooterSize>(buf.get(), vhd::kFooterSize));
  if (!vhd_pwrite_full(l.fd, buf.get(), vhd::kFooterSize, end) || ::fdatasync(l.fd) != 0 ||
      ::ftruncate(l.fd, static_cast<off_t>(end + vhd::kFooterSize)) != 0 || ::fdatasync(l.fd) != 0) {
    spdlog::warn("{}: footer not moved back to the end of the data: {}", l.path, error_string(errno));
    return;
  }
  l.footer_offset = end;
  l.file_size = end + vhd::kFooterSize;
}

bool VhdImage::fully_allocated(size_t level, uint32_t block) const noexcept {
  if (level >= full_.size() || !full_[level] || block >= chain_.levels[level].bat.size()) return false;
  return ((full_[level][block / 64].load(std::memory_order_relaxed) >> (block % 64)) & 1) != 0;
}

void VhdImage::set_full(size_t level, uint32_t block, bool full) noexcept {
  if (level >= full_.size() || !full_[level] || block >= chain_.levels[level].bat.size()) return;
  const uint64_t bit = uint64_t{1} << (block % 64);
  if (full) {
    full_[level][block / 64].fetch_or(bit, std::memory_order_relaxed);
  } else {
    full_[level][block / 64].fetch_and(~bit, std::memory_order_relaxed);
  }
}

Result<std::unique_ptr<VhdImage>> VhdImage::open(const std::string& path, const Options& opts,
                                                 std::string* error) noexcept {
  auto refuse = [&](int code, const std::string& why) -> Result<std::unique_ptr<VhdImage>> {
    if (error != nullptr) {
      try {
        *error = why;
      } catch (...) {
      }
    }
    return unexpected(code);
  };
  try {
    VhdOpenOptions vo;
    vo.read_only = opts.read_only;
    vo.direct = false;  // switched below, per level, where the filesystem allows it
    auto chain = vhd_open_chain(path, vo);
    if (!chain) return refuse(chain.error().code != 0 ? chain.error().code : EINVAL, chain.error().message);
    for (const std::string& w : chain->warnings) spdlog::warn("{}: {}", path, w);
    VhdChain c = std::move(*chain);
    if (c.levels.empty()) return refuse(EINVAL, path + ": empty chain");
    // One block size for the chain (a fixed level takes the others').
    uint32_t bs = 0;
    for (const VhdLevel& l : c.levels) {
      if (!l.sparse()) continue;
      if (bs != 0 && l.layout.block_size != bs) {
        return refuse(EINVAL, l.path + ": header block size: " + std::to_string(l.layout.block_size) +
                                  ", the chain's child uses " + std::to_string(bs));
      }
      bs = l.layout.block_size;
    }
    if (bs == 0) bs = vhd::kDefaultBlockSize;
    if (bs % kSector != 0) return refuse(EINVAL, path + ": header block size not a multiple of 512");
    VhdLevel& leaf = c.leaf();
    ImageInfo info;
    info.size_bytes = leaf.virtual_size() / kSector * kSector;
    info.logical_block_size = kSector;
    info.physical_block_size = 4096;
    info.memory_align = kSector;
    info.read_only = opts.read_only;
    info.max_queues = opts.read_only ? 0 : 1;
    if (!opts.read_only && leaf.sparse() && leaf.header.table_offset % kSector != 0) {
      return refuse(EINVAL, leaf.path + ": header table offset not sector aligned (cannot update the BAT)");
    }
    // O_DIRECT where every level takes it (no second cache in dom0).
    bool direct = opts.direct;
    uint32_t mem_align = 1;
    for (const VhdLevel& l : c.levels) direct = direct && direct_capable(l.fd, mem_align);
    if (direct) {
      for (VhdLevel& l : c.levels) {
        const int fl = ::fcntl(l.fd, F_GETFL);
        if (fl < 0 || ::fcntl(l.fd, F_SETFL, fl | O_DIRECT) != 0) return refuse(errno, l.path + ": O_DIRECT");
        l.direct = true;
      }
      info.memory_align = std::max<uint32_t>(mem_align, kSector);
    }
    info.direct = direct;
    if (!opts.read_only && leaf.sparse()) {
      // Discard punches whole blocks: only where the filesystem punches.
      struct stat st {};
      if (::fstat(leaf.fd, &st) == 0 && S_ISREG(st.st_mode) &&
          ::fallocate(leaf.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      static_cast<off_t>((leaf.file_size + 4095) / 4096 * 4096 + 4096), 4096) == 0) {
        info.discard = true;
        info.discard_granularity = bs;
        info.discard_alignment = 0;
      }
    }
    std::unique_ptr<VhdImage> img(new VhdImage(path, std::move(c), info, bs, opts.bitmap_cache_entries));
    if (opts.cache != nullptr) img->open_cache(*opts.cache);
    for (const VhdLevel& l : img->chain_.levels) {
      const size_t words = (l.bat.size() + 63) / 64;
      std::unique_ptr<std::atomic<uint64_t>[]> bits;
      if (l.sparse()) {
        bits.reset(new std::atomic<uint64_t>[words]);
        for (size_t i = 0; i < words; ++i) bits[i].store(0, std::memory_order_relaxed);
      }
      img->full_.push_back(std::move(bits));
    }
    return img;
  } catch (...) {
    return refuse(ENOMEM, path + ": out of memory");
  }
}

// Registers every immutable level with the cache (a level that cannot be
// registered is read around it).
void VhdImage::open_cache(BlockCache& cache) {
  cache_ = &cache;
  cache_levels_.resize(chain_.levels.size());
  for (size_t i = 0; i < chain_.levels.size(); ++i) {
    if (!level_immutable(i)) continue;
    const VhdLevel& l = chain_.levels[i];
    const CacheUuid uuid = l.footer.uuid;
    auto ident = identity_of_fd(l.fd, l.file_size, &uuid);
    auto ci = ident ? cache.open(*ident) : Result<std::shared_ptr<CacheImage>>(unexpected(ident.error()));
    if (!ci) {
      spdlog::warn("{}: not cached: {}", l.path, error_string(ci.error()));
      continue;
    }
    cache_levels_[i] = std::move(*ci);
  }
}

Result<std::unique_ptr<ImageChannel>> VhdImage::open_channel(Reactor& reactor) noexcept {
  if (!info_.read_only && writer_.exchange(true, std::memory_order_acq_rel)) return unexpected(EBUSY);
  auto ch = std::unique_ptr<VhdChannel>(new (std::nothrow) VhdChannel(*this, reactor));
  if (!ch) {
    if (!info_.read_only) writer_.store(false, std::memory_order_release);
    return unexpected(ENOMEM);
  }
  XP_TRY(ch->init());
  return std::unique_ptr<ImageChannel>(std::move(ch));
}

const VhdChannelStats& VhdImage::channel_stats(const ImageChannel& channel) noexcept {
  return static_cast<const VhdChannel&>(channel).vstats;
}

}  // namespace xenpath
