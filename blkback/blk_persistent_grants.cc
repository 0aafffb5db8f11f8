#include "blkback/blk_persistent_grants.h"

#include <algorithm>
#include <bit>

#include "common/log.h"

namespace xenpath {
namespace {

// Entries a table starts with (a ring's worth of 4 KiB requests).
constexpr uint32_t kInitialEntries = 32;

uint32_t hash_ref(GrantRef ref) noexcept {
  // Grant refs are small dense integers; a multiplicative hash spreads
  // consecutive ones over the table.
  return static_cast<uint32_t>((static_cast<uint64_t>(ref) * 0x9E3779B97F4A7C15ULL) >> 32);
}

}  // namespace

PersistentGrants::PersistentGrants(GrantTable& gt, DomId dom, const Options& opts) noexcept
    : gt_(gt), dom_(dom), max_pages_(std::max<uint32_t>(opts.max_pages, 1)), idle_timeout_(opts.idle_timeout) {
  // The table starts small and grows in acquire() up to max_pages_: a
  // thousand idle devices must not each hold a table for 1056 grants
  // (~110 KiB) they may never use (perf/connect_storm).
  const uint32_t initial = std::min<uint32_t>(max_pages_, kInitialEntries);
  try {
    entries_.resize(initial);
    free_entries_.reserve(initial);
    for (uint32_t i = initial; i-- > 0;) free_entries_.push_back(i);
    blocks_.resize(initial);
    free_blocks_.reserve(initial);
    for (uint32_t i = initial; i-- > 0;) free_blocks_.push_back(i);
    const uint32_t cap = std::bit_ceil(2 * initial);
    slots_.assign(cap, kNone);
    mask_ = cap - 1;
  } catch (...) {
    // Out of memory at connect: a table that keeps nothing (every grant
    // overflows to transient mappings) is still correct.
    entries_.clear();
    free_entries_.clear();
    blocks_.clear();
    free_blocks_.clear();
    slots_.clear();
    max_pages_ = 0;
  }
}

PersistentGrants::~PersistentGrants() {
  uint32_t busy = 0;
  for (const Entry& e : entries_) busy += e.live && e.users != 0 ? 1 : 0;
  if (busy != 0) spdlog::error("persistent grants: destroyed with {} entries in use", busy);
  // Blocks unmap themselves (GrantMapping); nothing else holds a mapping.
}

uint32_t PersistentGrants::find(GrantRef ref) const noexcept {
  if (slots_.empty()) return kNone;
  for (uint32_t i = hash_ref(ref) & mask_;; i = (i + 1) & mask_) {
    const uint32_t e = slots_[i];
    if (e == kNone) return kNone;
    if (entries_[e].gref == ref) return e;
  }
}

void PersistentGrants::hash_insert(GrantRef ref, uint32_t entry) noexcept {
  // Never full: at most max_pages entries in a table of >= 2 * max_pages.
  uint32_t i = hash_ref(ref) & mask_;
  while (slots_[i] != kNone) i = (i + 1) & mask_;
  slots_[i] = entry;
}

void PersistentGrants::hash_erase(GrantRef ref) noexcept {
  uint32_t i = hash_ref(ref) & mask_;
  while (slots_[i] != kNone && entries_[slots_[i]].gref != ref) i = (i + 1) & mask_;
  if (slots_[i] == kNone) return;
  // Backward shift: move later members of the probe run into the hole when
  // their home slot does not lie (cyclically) between the hole and them.
  uint32_t hole = i;
  for (uint32_t j = (i + 1) & mask_; slots_[j] != kNone; j = (j + 1) & mask_) {
    const uint32_t home = hash_ref(entries_[slots_[j]].gref) & mask_;
    const bool home_in_range = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (!home_in_range) {
      slots_[hole] = slots_[j];
      hole = j;
    }
  }
  slots_[hole] = kNone;
}

void PersistentGrants::lru_unlink(uint32_t e) noexcept {
  Entry& en = entries_[e];
  if (en.prev != kNone) {
    entries_[en.prev].next = en.next;
  } else if (lru_head_ == e) {
    lru_head_ = en.next;
  }
  if (en.next != kNone) {
    entries_[en.next].prev = en.prev;
  } else if (lru_tail_ == e) {
    lru_tail_ = en.prev;
  }
  en.prev = en.next = kNone;
}

void PersistentGrants::lru_push_back(uint32_t e) noexcept {
  Entry& en = entries_[e];
  en.prev = lru_tail_;
  en.next = kNone;
  if (lru_tail_ != kNone) {
    entries_[lru_tail_].next = e;
  } else {
    lru_head_ = e;
  }
  lru_tail_ = e;
}

void PersistentGrants::evict(uint32_t e) noexcept {
  Entry& en = entries_[e];
  lru_unlink(e);
  hash_erase(en.gref);
  Block& b = blocks_[en.block];
  if (--b.entries == 0) {
    live_pages_ -= b.mapping.pages();
    b.mapping.reset();
    free_blocks_.push_back(en.block);
  }
  en = Entry{};
  free_entries_.push_back(e);
  --live_entries_;
  stats_.evictions.add();
}

bool PersistentGrants::make_room(uint32_t pages) noexcept {
  if (pages > max_pages_) return false;
  // Evicting an entry frees its pages only with the last entry of its block;
  // keep going, oldest first, until it fits or nothing idle is left.
  while (live_pages_ + pages > max_pages_ && lru_head_ != kNone) evict(lru_head_);
  return live_pages_ + pages <= max_pages_;
}

void PersistentGrants::update_gauges() noexcept {
  stats_.live_entries.set(live_entries_);
  stats_.live_pages.set(live_pages_);
}

Status PersistentGrants::acquire(std::span<const GrantRef> refs, std::span<std::byte*> pages, std::span<Handle> handles,
                                 GrantMapping* transient) noexcept {
  if (pages.size() < refs.size() || handles.size() < refs.size() || transient == nullptr) return unexpected(EINVAL);
  if (refs.empty()) return ok();

  // Pass 1: grants already mapped take a use first, so that making room
  // below cannot evict what this very call needs.
  constexpr Handle kPending = UINT32_MAX - 1;
  uint32_t unknown = 0;  // duplicates of a new grant counted each time: an upper bound
  for (size_t i = 0; i < refs.size(); ++i) {
    const uint32_t e = find(refs[i]);
    if (e == kNone) {
      handles[i] = kPending;
      ++unknown;
      continue;
    }
    if (entries_[e].users++ == 0) lru_unlink(e);
    handles[i] = e;
  }
  if (unknown != 0 && entries_.size() < max_pages_ && (free_entries_.size() < unknown || free_blocks_.empty())) {
    // Grow the table (at least double, at most max_pages_) and rehash the
    // live entries. Everything is allocated before anything is published,
    // so a failure leaves the table as it was and the new grants go
    // transient, as when it is full.
    const size_t old = entries_.size();
    const size_t want = std::min<size_t>(max_pages_, std::max<size_t>(2 * old, old + unknown));
    try {
      std::vector<uint32_t> slots(std::bit_ceil(2 * want), kNone);
      free_entries_.reserve(want);
      free_blocks_.reserve(want);
      blocks_.resize(want);
      entries_.resize(want);
      for (size_t i = want; i-- > old;) {
        free_entries_.push_back(static_cast<uint32_t>(i));
        free_blocks_.push_back(static_cast<uint32_t>(i));
      }
      slots_.swap(slots);
      mask_ = static_cast<uint32_t>(slots_.size() - 1);
      for (uint32_t e = 0; e < old; ++e) {
        if (entries_[e].live) hash_insert(entries_[e].gref, e);
      }
    } catch (...) {
    }
  }
  const bool keep = unknown == 0 || (make_room(unknown) && unknown <= free_entries_.size() && !free_blocks_.empty());

  scratch_.clear();
  scratch_idx_.clear();
  try {
    scratch_.reserve(unknown);
    scratch_idx_.reserve(unknown);
  } catch (...) {
    for (size_t i = 0; i < refs.size(); ++i) {
      if (handles[i] != kPending && --entries_[handles[i]].users == 0) lru_push_back(handles[i]);
    }
    return unexpected(ENOMEM);
  }

  // Pass 2: new grants get an entry (keep) or a slot in the transient
  // batch. A new grant seen twice shares its entry.
  for (size_t i = 0; i < refs.size(); ++i) {
    if (handles[i] != kPending) continue;
    if (!keep) {
      handles[i] = kTransient;
      pages[i] = reinterpret_cast<std::byte*>(static_cast<uintptr_t>(scratch_.size()));  // batch index for now
      scratch_.push_back(refs[i]);
      continue;
    }
    uint32_t e = find(refs[i]);
    if (e != kNone) {  // created a moment ago for an earlier duplicate
      ++entries_[e].users;
      handles[i] = e;
      continue;
    }
    e = free_entries_.back();
    free_entries_.pop_back();
    Entry& en = entries_[e];
    en = Entry{};
    en.gref = refs[i];
    en.users = 1;
    en.live = true;
    en.page = static_cast<uint32_t>(scratch_.size());
    hash_insert(refs[i], e);
    scratch_idx_.push_back(e);
    scratch_.push_back(refs[i]);
    handles[i] = e;
  }

  GrantMapping mapping;
  if (!scratch_.empty()) {
    stats_.map_calls.add();
    auto m = gt_.map(dom_, scratch_, /*writable=*/true);
    if (!m) {
      // Undo pass 1: new entries go, hits give their use back.
      for (uint32_t e : scratch_idx_) {
        hash_erase(entries_[e].gref);
        entries_[e] = Entry{};
        free_entries_.push_back(e);
      }
      for (size_t i = 0; i < refs.size(); ++i) {
        const Handle h = handles[i];
        if (h == kTransient || !entries_[h].live || entries_[h].block == kNone) continue;  // new, freed above
        Entry& en = entries_[h];
        if (--en.users == 0) lru_push_back(h);
      }
      return unexpected(m.error());
    }
    mapping = std::move(*m);
  }

  if (keep && !scratch_.empty()) {
    const uint32_t b = free_blocks_.back();
    free_blocks_.pop_back();
    blocks_[b].mapping = std::move(mapping);
    blocks_[b].entries = static_cast<uint32_t>(scratch_idx_.size());
    live_pages_ += blocks_[b].mapping.pages();
    for (uint32_t e : scratch_idx_) entries_[e].block = b;
    live_entries_ += static_cast<uint32_t>(scratch_idx_.size());
    stats_.misses.add(scratch_idx_.size());
  }
  for (size_t i = 0; i < refs.size(); ++i) {
    const Handle h = handles[i];
    if (h == kTransient) {
      pages[i] = mapping.page(static_cast<uint32_t>(reinterpret_cast<uintptr_t>(pages[i])));
      continue;
    }
    const Entry& en = entries_[h];
    pages[i] = blocks_[en.block].mapping.page(en.page);
  }
  const uint64_t new_refs = scratch_.size();
  stats_.hits.add(refs.size() - new_refs);
  if (!keep) {
    stats_.overflows.add(new_refs);
    *transient = std::move(mapping);
  }
  update_gauges();
  return ok();
}

void PersistentGrants::release(std::span<const Handle> handles, Clock::time_point now) noexcept {
  for (Handle h : handles) {
    if (h == kTransient || h >= entries_.size()) continue;
    Entry& en = entries_[h];
    if (!en.live || en.users == 0) continue;  // a caller bug; never underflow
    if (--en.users == 0) {
      en.last_used = now;
      lru_push_back(h);
    }
  }
}

unsigned PersistentGrants::purge(Clock::time_point now) noexcept {
  unsigned n = 0;
  while (lru_head_ != kNone && entries_[lru_head_].last_used + idle_timeout_ <= now) {
    evict(lru_head_);
    ++n;
  }
  update_gauges();
  return n;
}

std::optional<PersistentGrants::Clock::time_point> PersistentGrants::next_purge() const noexcept {
  if (lru_head_ == kNone) return std::nullopt;
  return entries_[lru_head_].last_used + idle_timeout_;
}

unsigned PersistentGrants::clear() noexcept {
  while (lru_head_ != kNone) evict(lru_head_);
  update_gauges();
  return live_entries_;
}

}  // namespace xenpath
