// VhdImage (open and validate the chain, O_DIRECT and discard capability,
// the shared read cache's registration of the immutable levels, the
// fully-allocated bits, channel creation) and the VhdChannel's plumbing:
// init, the request and sub-op pools, submit and the planning loop, the
// dispatch of finished transfers, poll/arm. Reads are image_vhd_read.cc,
// writes image_vhd_write.cc; the design is in image_vhd.h.
#include "blkback/image_vhd.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <span>

#include "blkback/image_vhd_channel.h"
#include "common/log.h"

namespace xenpath {

using vhd_io::aligned_bytes;
using vhd_io::AlignedBytes;
using vhd_io::kFsBlock;
using vhd_io::kMaxDataSubOps;
using vhd_io::kMaxRoundBlocks;
using vhd_io::kSector;
using vhd_io::kSubIov;
using vhd_io::pool_take;

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
      if (s.cblock) {  // published (pinned now): counted as the cache counts a fill
        cache_counts.fills.add();
        cache_counts.bytes_from_disk.add(s.fill_len);
      } else if (result != 0) {  // the read failed; a fill whose block was dropped meanwhile is no error
        cache_counts.fill_errors.add();
      }
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

bool VhdImage::has_cache_levels() const noexcept {
  return std::any_of(cache_levels_.begin(), cache_levels_.end(), [](const auto& c) { return c != nullptr; });
}

bool VhdImage::set_cache_enabled(bool on) noexcept {
  cache_on_.store(on, std::memory_order_relaxed);
  return has_cache_levels();
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
