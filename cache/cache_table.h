// The cache's small fixed-capacity containers (one set per shard): an
// open-addressing table and the ghost FIFO of S3-FIFO built on it.
//
// ProbeTable<V>: linear probing over a power-of-two array of values, with
// backward-shift deletion (no tombstones, so probe lengths do not grow with
// churn) and at most half the cells used, so every probe loop ends at an
// empty cell within the table. It never allocates after construction (the
// constructor may throw std::bad_alloc; BlockCache::create catches it).
// The caller gives each value's hash: the index stores slot numbers whose
// hash lives in the slot, the ghost stores hashes themselves.
//
// Thread: none of its own; a shard's mutex protects its tables.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace xenpath::cache_detail {

template <typename V>
class ProbeTable {
 public:
  // Room for `max_values` values at a load of at most 1/2.
  ProbeTable(size_t max_values, V empty)
      : cells_(std::bit_ceil(2 * (max_values == 0 ? 1 : max_values)), empty),
        mask_(cells_.size() - 1),
        empty_(empty),
        max_values_(max_values == 0 ? 1 : max_values) {}

  // The cell holding a value for which eq(value) holds, or nullptr.
  template <typename Eq>
  V* find(uint64_t hash, Eq&& eq) noexcept {
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      if (cells_[i] == empty_) return nullptr;
      if (eq(cells_[i])) return &cells_[i];
    }
  }
  // False (nothing stored) when full.
  bool insert(uint64_t hash, V v) noexcept {
    if (size_ == max_values_) return false;
    size_t i = hash & mask_;
    while (cells_[i] != empty_) i = (i + 1) & mask_;
    cells_[i] = v;
    ++size_;
    return true;
  }
  // Removes the value in `cell` (from find()); hash_of(value) gives the hash
  // each later value of the probe run was inserted with.
  template <typename HashOf>
  void erase(V* cell, HashOf&& hash_of) noexcept {
    size_t hole = static_cast<size_t>(cell - cells_.data());
    for (size_t j = (hole + 1) & mask_; cells_[j] != empty_; j = (j + 1) & mask_) {
      const size_t home = hash_of(cells_[j]) & mask_;
      // cells_[j] may fill the hole unless its home lies cyclically in (hole, j].
      const bool home_after_hole = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
      if (!home_after_hole) {
        cells_[hole] = cells_[j];
        hole = j;
      }
    }
    cells_[hole] = empty_;
    --size_;
  }
  void clear() noexcept {
    for (auto& c : cells_) c = empty_;
    size_ = 0;
  }
  [[nodiscard]] size_t size() const noexcept { return size_; }
  [[nodiscard]] size_t max_values() const noexcept { return max_values_; }

 private:
  std::vector<V> cells_;
  size_t mask_;
  V empty_;
  size_t max_values_;
  size_t size_ = 0;
};

// S3-FIFO's ghost queue: the hashes of the last `capacity` keys evicted from
// the small queue without a second access. A key found here on a miss goes
// straight to the main queue. Membership is by 64-bit hash: a collision only
// admits one block to main early. A hash already present is not added twice.
class GhostFifo {
 public:
  explicit GhostFifo(size_t capacity) : ring_(capacity == 0 ? 1 : capacity, 0), set_(ring_.size(), 0) {}

  [[nodiscard]] bool contains(uint64_t hash) noexcept { return find(hash) != nullptr; }
  void add(uint64_t hash) noexcept {
    if (contains(hash)) return;
    if (count_ == ring_.size()) {
      // Forget the oldest.
      if (uint64_t* cell = find(ring_[head_])) set_.erase(cell, [](uint64_t h) { return h; });
      head_ = (head_ + 1) % ring_.size();
      --count_;
    }
    ring_[(head_ + count_) % ring_.size()] = hash;
    ++count_;
    (void)set_.insert(hash, hash);
  }
  void clear() noexcept {
    set_.clear();
    head_ = count_ = 0;
  }
  [[nodiscard]] size_t size() const noexcept { return count_; }

 private:
  uint64_t* find(uint64_t hash) noexcept {
    return set_.find(hash, [hash](uint64_t h) { return h == hash; });
  }
  std::vector<uint64_t> ring_;
  ProbeTable<uint64_t> set_;
  size_t head_ = 0;
  size_t count_ = 0;
};

}  // namespace xenpath::cache_detail
