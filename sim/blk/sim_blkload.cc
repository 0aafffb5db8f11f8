#include "sim/blk/sim_blkload.h"

#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>

namespace xenpath::sim {

namespace {

constexpr uint64_t kMagic = 0x78706174ull << 32;  // "xpat"
constexpr size_t kSector = 512;
constexpr size_t kWords = kSector / 8;

uint64_t mix64(uint64_t x) noexcept {
  // splitmix64's finaliser: every input bit flips about half the output bits.
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void sector_pattern(uint64_t (&w)[kWords], uint32_t vbd, uint64_t lba, uint32_t generation) noexcept {
  if (generation == 0) {
    std::fill(std::begin(w), std::end(w), 0);
    return;
  }
  w[0] = kMagic | vbd;
  w[1] = lba;
  w[2] = generation;
  const uint64_t seed = mix64(mix64(mix64(vbd) ^ lba) ^ generation);
  for (size_t k = 3; k < kWords; ++k) w[k] = mix64(seed + k);
}

}  // namespace

void blk_pattern_fill(std::byte* p, size_t len, uint32_t vbd, uint64_t offset, uint32_t generation) noexcept {
  uint64_t w[kWords];
  for (size_t done = 0; done < len; done += kSector) {
    sector_pattern(w, vbd, (offset + done) / kSector, generation);
    std::memcpy(p + done, w, std::min(kSector, len - done));
  }
}

uint32_t blk_pattern_sector(const std::byte* p, uint32_t vbd, uint64_t lba) noexcept {
  uint64_t h[3];
  std::memcpy(h, p, sizeof(h));
  if (h[0] == 0 && h[1] == 0 && h[2] == 0) {
    for (size_t i = 0; i < kSector; ++i) {
      if (p[i] != std::byte{0}) return UINT32_MAX;
    }
    return 0;
  }
  if (h[0] != (kMagic | vbd) || h[1] != lba || h[2] == 0 || h[2] >= UINT32_MAX) return UINT32_MAX;
  const auto gen = static_cast<uint32_t>(h[2]);
  return blk_pattern_check(p, kSector, vbd, lba * kSector, gen) == kSector ? gen : UINT32_MAX;
}

size_t blk_pattern_check(const std::byte* p, size_t len, uint32_t vbd, uint64_t offset, uint32_t generation) noexcept {
  uint64_t w[kWords];
  for (size_t done = 0; done < len; done += kSector) {
    sector_pattern(w, vbd, (offset + done) / kSector, generation);
    const size_t n = std::min(kSector, len - done);
    if (std::memcmp(p + done, w, n) == 0) continue;
    const auto* want = reinterpret_cast<const std::byte*>(w);
    for (size_t i = 0; i < n; ++i) {
      if (p[done + i] != want[i]) return done + i;
    }
  }
  return len;
}

// ---------------------------------------------------------------------------

unsigned LatencyHistogram::bucket_of(uint64_t ns) noexcept {
  constexpr uint64_t kSub = 1u << kSubBits;
  if (ns < kSub) return static_cast<unsigned>(ns);  // exact below 8 ns
  const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(ns));
  const unsigned sub = static_cast<unsigned>((ns >> (msb - kSubBits)) & (kSub - 1));
  return ((msb - kSubBits + 1) << kSubBits) | sub;
}

uint64_t LatencyHistogram::bucket_low(unsigned b) noexcept {
  constexpr uint64_t kSub = 1u << kSubBits;
  if (b < kSub) return b;
  const unsigned msb = (b >> kSubBits) + kSubBits - 1;
  return (uint64_t{1} << msb) | (static_cast<uint64_t>(b & (kSub - 1)) << (msb - kSubBits));
}

void LatencyHistogram::record(uint64_t ns) noexcept {
  buckets_[bucket_of(ns)].add();
  if (ns > max_.get()) max_.set(ns);
}

void LatencyHistogram::add(const LatencyHistogram& other) noexcept {
  for (unsigned b = 0; b < kBuckets; ++b) {
    if (const uint64_t n = other.buckets_[b].get(); n != 0) buckets_[b].add(n);
  }
  if (other.max_ns() > max_ns()) max_.set(other.max_ns());
}

uint64_t LatencyHistogram::count() const noexcept {
  uint64_t n = 0;
  for (const Counter& c : buckets_) n += c.get();
  return n;
}

uint64_t LatencyHistogram::percentile_ns(double q) const noexcept {
  uint64_t counts[kBuckets];
  uint64_t total = 0;
  for (unsigned b = 0; b < kBuckets; ++b) total += counts[b] = buckets_[b].get();
  if (total == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // The rank of the quantile, 1-based: the smallest value with at least
  // q * total samples at or below it.
  const double rank = std::max(1.0, q * static_cast<double>(total));
  uint64_t below = 0;
  for (unsigned b = 0; b < kBuckets; ++b) {
    if (counts[b] == 0) continue;
    if (static_cast<double>(below + counts[b]) >= rank) {
      const uint64_t lo = bucket_low(b);
      const uint64_t hi = b + 1 < kBuckets ? bucket_low(b + 1) : lo;
      const double frac = (rank - static_cast<double>(below)) / static_cast<double>(counts[b]);
      const auto v = static_cast<uint64_t>(static_cast<double>(lo) + frac * static_cast<double>(hi - lo));
      return std::min(v, max_ns());
    }
    below += counts[b];
  }
  return max_ns();
}

// ---------------------------------------------------------------------------

BlkLoad::BlkLoad(SimBlkfront& front, const BlkLoadSpec& spec, uint32_t vbd_id) noexcept
    : front_(front), spec_(spec), vbd_id_(vbd_id) {}

BlkLoad::~BlkLoad() {
  // I/Os still in flight point into slots_ and buffers_: reap what the
  // backend answers within a bounded time; the SimBlkfront revokes the rest
  // when it goes.
  if (in_flight_ != 0) (void)drain(std::chrono::seconds(5));
  if (in_flight_ == 0) std::free(buffers_);
  // else: leaked on purpose, the ring may still name them.
}

Result<std::unique_ptr<BlkLoad>> BlkLoad::create(SimBlkfront& front, uint64_t disk_bytes, const BlkLoadSpec& spec,
                                                 uint32_t vbd_id) noexcept {
  std::unique_ptr<BlkLoad> l(new (std::nothrow) BlkLoad(front, spec, vbd_id));
  if (!l) return unexpected(ENOMEM);
  const uint32_t bs = spec.block_size;
  const uint32_t ss = front.options().sector_size;
  if (bs == 0 || bs % kSector != 0 || bs % ss != 0 || spec.read_percent > 100) return unexpected(EINVAL);
  const uint64_t pages = (bs + kPageSize - 1) / kPageSize;
  if (pages > kBlkDirectSegments && pages > front.options().max_indirect_segments) return unexpected(EINVAL);
  if (spec.offset_bytes % bs != 0 || spec.offset_bytes >= disk_bytes) return unexpected(EINVAL);
  const uint64_t span = spec.span_bytes != 0 ? spec.span_bytes : disk_bytes - spec.offset_bytes;
  if (span > disk_bytes - spec.offset_bytes || span < bs) return unexpected(EINVAL);
  if (spec.queue_depth == 0 || spec.queue_depth > front.ring_size()) return unexpected(EINVAL);
  l->blocks_ = span / bs;
  l->first_block_ = spec.offset_bytes / bs;
  l->sectors_ = bs / ss;
  l->rng_ = mix64(spec.seed ^ (uint64_t{vbd_id} << 32)) | 1;
  try {
    l->slots_.resize(spec.queue_depth);
    l->free_.reserve(spec.queue_depth);
    for (Slot& s : l->slots_) l->free_.push_back(&s);
    if (spec.verify) {
      l->generation_.assign(l->blocks_, spec.unknown_start ? kUnknown : 0);
      l->block_busy_.assign(l->blocks_, 0);
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }
  if (spec.verify) {
    const size_t bytes = (static_cast<size_t>(bs) * spec.queue_depth + kPageSize - 1) / kPageSize * kPageSize;
    l->buffers_ = static_cast<std::byte*>(std::aligned_alloc(kPageSize, bytes));
    if (l->buffers_ == nullptr) return unexpected(ENOMEM);
    for (size_t i = 0; i < l->slots_.size(); ++i) l->slots_[i].buf = l->buffers_ + i * bs;
  }
  return l;
}

uint64_t BlkLoad::next_random() noexcept {
  // xorshift64*: plenty for offsets, a few cycles.
  rng_ ^= rng_ >> 12;
  rng_ ^= rng_ << 25;
  rng_ ^= rng_ >> 27;
  return rng_ * 0x2545f4914f6cdd1dull;
}

bool BlkLoad::pick_block(uint64_t& block) noexcept {
  if (spec_.random) {
    // A few tries for a block no request is using (verify); past that the
    // queue is as deep as the region allows for now.
    for (unsigned tries = 0; tries < 8; ++tries) {
      const uint64_t b = next_random() % blocks_;
      if (!spec_.verify || block_busy_[b] == 0) {
        block = b;
        return true;
      }
    }
    return false;
  }
  if (spec_.verify && block_busy_[cursor_] != 0) return false;
  block = cursor_;
  cursor_ = cursor_ + 1 == blocks_ ? 0 : cursor_ + 1;
  return true;
}

bool BlkLoad::submit_one() noexcept {
  if (free_.empty() || front_.free_slots() == 0) return false;
  Slot& s = *free_.back();
  s.io = {};
  if (flush_due_) {
    s.io.op = BLKIF_OP_FLUSH_DISKCACHE;
    s.block = UINT64_MAX;
  } else {
    if (spec_.max_ops != 0 && submitted_ >= spec_.max_ops) return false;
    bool read = spec_.read_percent >= 100;
    if (!read && spec_.read_percent != 0) read = next_random() % 100 < spec_.read_percent;
    if (!pick_block(s.block)) return false;
    s.io.op = read ? BLKIF_OP_READ : BLKIF_OP_WRITE;
    const uint64_t byte_offset = (first_block_ + s.block) * spec_.block_size;
    s.io.sector = byte_offset / front_.options().sector_size;
    s.io.sectors = sectors_;
    if (spec_.verify) {
      s.io.data = s.buf;
      if (!read) {
        s.generation = next_generation_;
        next_generation_ = next_generation_ + 1 >= kUnknown ? 1 : next_generation_ + 1;
        blk_pattern_fill(s.buf, spec_.block_size, vbd_id_, byte_offset, s.generation);
      }
    }
  }
  s.start = std::chrono::steady_clock::now();
  if (Status st = front_.start(s.io); !st) {
    if (st.error() != ENOSPC) {
      // Cannot be expressed or no memory: this load cannot go on.
      stats_.errors.add();
      draining_ = true;
    }
    // ENOSPC (ring or grant table full): again after the next answers.
    if (s.io.op == BLKIF_OP_FLUSH_DISKCACHE) return false;
    if (!spec_.random && s.block != UINT64_MAX) cursor_ = s.block;  // take the same block next time
    return false;
  }
  free_.pop_back();
  ++in_flight_;
  stats_.in_flight.set(in_flight_);
  if (s.io.op == BLKIF_OP_FLUSH_DISKCACHE) {
    flush_due_ = false;
    s.covers = journal_base_ + acked_.size();
    return true;
  }
  if (spec_.verify) block_busy_[s.block] = 1;
  ++submitted_;
  if (s.io.op == BLKIF_OP_WRITE && spec_.flush_every != 0 && ++writes_since_flush_ >= spec_.flush_every) {
    writes_since_flush_ = 0;
    flush_due_ = true;
  }
  return true;
}

void BlkLoad::complete(Slot& s) noexcept {
  const auto now = std::chrono::steady_clock::now();
  stats_.latency.record(
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - s.start).count()));
  const bool good = s.io.status == BLKIF_RSP_OKAY && s.io.error == 0;
  const bool data_op = s.io.op != BLKIF_OP_FLUSH_DISKCACHE;
  if (!good) stats_.errors.add();
  switch (s.io.op) {
    case BLKIF_OP_READ:
      stats_.reads.add();
      if (good) stats_.read_bytes.add(spec_.block_size);
      if (good && spec_.verify) check_read(s);
      break;
    case BLKIF_OP_WRITE:
      stats_.writes.add();
      if (good) stats_.write_bytes.add(spec_.block_size);
      // A failed write may have reached the disk in part: anything goes
      // until the next acknowledged write.
      if (spec_.verify) generation_[s.block] = good ? s.generation : kUnknown;
      if (good && spec_.verify && spec_.journal_fd >= 0) {
        try {
          acked_.emplace_back(first_block_ + s.block, s.generation);
        } catch (...) {
          stats_.errors.add();
        }
      }
      break;
    default:
      stats_.flushes.add();
      if (good && spec_.journal_fd >= 0) journal_flushed(s.covers);
      break;
  }
  if (data_op && spec_.verify) block_busy_[s.block] = 0;
  stats_.ops.add();
  --in_flight_;
  stats_.in_flight.set(in_flight_);
  free_.push_back(&s);  // capacity: queue_depth
}

// Writes out the writes a completed flush covered (and any earlier flush's
// not yet written out), then its "F".
void BlkLoad::journal_flushed(uint64_t upto) noexcept {
  if (upto < journal_base_) return;  // a later flush already wrote these out
  std::string out;
  try {
    for (uint64_t i = journal_base_; i < upto; ++i) {
      const auto& [block, gen] = acked_[i - journal_base_];
      out += fmt::format("W {} {}\n", block, gen);
    }
    out += "F\n";
  } catch (...) {
    stats_.errors.add();
    return;
  }
  acked_.erase(acked_.begin(), acked_.begin() + static_cast<ptrdiff_t>(upto - journal_base_));
  journal_base_ = upto;
  for (size_t done = 0; done < out.size();) {
    const ssize_t n = ::write(spec_.journal_fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      stats_.errors.add();
      return;
    }
    done += static_cast<size_t>(n);
  }
}

void BlkLoad::check_read(const Slot& s) noexcept {
  const uint32_t want = generation_[s.block];
  if (want == kUnknown) return;
  const uint64_t offset = (first_block_ + s.block) * spec_.block_size;
  const size_t bad = blk_pattern_check(s.buf, spec_.block_size, vbd_id_, offset, want);
  if (bad == spec_.block_size) return;
  stats_.mismatches.add();
  if (logged_ >= kMaxLogged) return;
  ++logged_;
  // What the sector holding the first bad byte is: its header says which
  // write it came from.
  const std::byte* sector = s.buf + bad / kSector * kSector;
  uint64_t h[3];
  std::memcpy(h, sector, sizeof(h));
  std::string found;
  if ((h[0] & ~uint64_t{0xffffffff}) == kMagic) {
    found = fmt::format("data written for vbd {} LBA {} generation {}", h[0] & 0xffffffff, h[1], h[2]);
  } else if (h[0] == 0 && h[1] == 0 && h[2] == 0) {
    found = "a sector starting with zeros";
  } else {
    found = fmt::format("unrecognised data {:016x} {:016x}", h[0], h[1]);
  }
  spdlog::warn(
      "blkload vbd {}: mismatch at disk offset {:#x} (byte {} of the block at {:#x}, LBA {}): expected "
      "generation {}{}, found {}",
      vbd_id_, offset + bad, bad, offset, (offset + bad) / kSector, want, want == 0 ? " (zeros)" : "", found);
}

unsigned BlkLoad::poll() noexcept {
  unsigned completions = 0;
  for (;;) {
    SimBlkfront::Io* done[64];
    const unsigned n = front_.reap(done);
    for (unsigned i = 0; i < n; ++i) complete(*reinterpret_cast<Slot*>(done[i]));
    completions += n;
    if (n < std::size(done)) break;
  }
  if (const uint64_t stray = front_.stray_responses(); stray != stray_seen_) {
    stats_.errors.add(stray - stray_seen_);
    stray_seen_ = stray;
  }
  if (!draining_) {
    bool any = false;
    while (submit_one()) any = true;
    if (any && !front_.publish()) stats_.errors.add();
  }
  return completions;
}

Status BlkLoad::wait(std::chrono::milliseconds limit) noexcept {
  if (front_.rearm()) return ok();
  return front_.wait_event(limit);
}

Status BlkLoad::wait_any(std::span<BlkLoad* const> loads, std::chrono::milliseconds limit) noexcept {
  if (loads.empty()) return unexpected(EINVAL);
  bool work = false;
  // Every ring must re-arm its response event before sleeping, or its
  // answers would not wake us.
  for (BlkLoad* l : loads) work |= l->front_.rearm();
  if (work) return ok();
  return loads[0]->front_.wait_event(limit);
}

unsigned BlkLoad::poll_all(std::span<BlkLoad* const> loads, bool& all_done) noexcept {
  unsigned completions = 0;
  all_done = true;
  for (BlkLoad* l : loads) {
    completions += l->poll();
    all_done &= l->done();
  }
  return completions;
}

Status BlkLoad::drain(std::chrono::milliseconds timeout) noexcept {
  draining_ = true;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    (void)poll();
    if (in_flight_ == 0) return ok();
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return unexpected(ETIMEDOUT);
    XP_TRY(wait(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) + std::chrono::milliseconds(1)));
  }
}

Status BlkLoad::next_phase(const BlkLoadSpec& spec) noexcept {
  if (in_flight_ != 0) return unexpected(EBUSY);
  const uint64_t span = blocks_ * spec_.block_size;
  const uint64_t new_span = spec.span_bytes != 0 ? spec.span_bytes / spec.block_size * spec.block_size : span;
  if (spec.block_size != spec_.block_size || spec.offset_bytes != spec_.offset_bytes || new_span != span ||
      spec.verify != spec_.verify || spec.read_percent > 100 || spec.queue_depth == 0 ||
      spec.queue_depth > front_.ring_size()) {
    return unexpected(EINVAL);
  }
  if (spec.queue_depth != slots_.size()) {
    std::byte* buffers = nullptr;
    if (spec.verify) {
      const size_t bytes =
          (static_cast<size_t>(spec.block_size) * spec.queue_depth + kPageSize - 1) / kPageSize * kPageSize;
      buffers = static_cast<std::byte*>(std::aligned_alloc(kPageSize, bytes));
      if (buffers == nullptr) return unexpected(ENOMEM);
    }
    try {
      std::vector<Slot> slots(spec.queue_depth);
      std::vector<Slot*> free;
      free.reserve(spec.queue_depth);
      for (size_t i = 0; i < slots.size(); ++i) {
        if (buffers != nullptr) slots[i].buf = buffers + i * spec.block_size;
      }
      slots_ = std::move(slots);
      for (Slot& s : slots_) free.push_back(&s);
      free_ = std::move(free);
    } catch (...) {
      std::free(buffers);
      return unexpected(ENOMEM);
    }
    std::free(buffers_);
    buffers_ = buffers;
  }
  spec_ = spec;
  spec_.span_bytes = span;
  submitted_ = 0;
  writes_since_flush_ = 0;
  flush_due_ = false;
  draining_ = false;
  cursor_ = 0;
  rng_ = mix64(spec.seed ^ (uint64_t{vbd_id_} << 32)) | 1;
  return ok();
}

bool BlkLoad::done() const noexcept {
  return spec_.max_ops != 0 && submitted_ >= spec_.max_ops && in_flight_ == 0 && !flush_due_;
}

}  // namespace xenpath::sim
