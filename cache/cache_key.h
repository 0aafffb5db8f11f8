// Keys of the shared read cache: which image (its identity) and which block
// of it.
//
// An image is known by what the kernel says about the file behind an open
// fd, never by its path: device + inode (so a rename or a second path to the
// same file is the same image), plus size and mtime (so a file rewritten in
// place is a different image), plus the VHD footer's UUID where there is one
// (so a file replaced by another VHD that happens to reuse the inode, size
// and mtime is still told apart). The cache caches bytes of that file at
// file offsets: block b is the bytes [b * block_size, (b + 1) * block_size)
// of the file, whatever format is in it.
//
// IdentityRegistry hands out small ids for identities: the same identity
// gets the same id (reference counted, one reference per open), and when a
// file (device + inode) shows up with other attributes than its live id
// records, that id is retired (the file changed underneath) and the caller
// drops its entries. Ids are never reused, so a key of a retired or released
// identity can never match a newer image.
//
// Thread: IdentityRegistry is thread-safe (one mutex; it is used when an
// image is opened or closed, never per I/O). The rest is plain values.
#pragma once

#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include "common/result.h"

namespace xenpath {

using CacheUuid = std::array<uint8_t, 16>;
using IdentityId = uint32_t;
inline constexpr IdentityId kNoIdentity = 0;

struct ImageIdentity {
  // For a regular file st_dev and st_ino; for a block device 0 and st_rdev
  // (two device nodes of one disk, /dev/dm-0 and /dev/mapper/x, are one image).
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t size = 0;  // bytes, as the image layer measured it (BLKGETSIZE64 for a device)
  int64_t mtime_ns = 0;
  bool has_uuid = false;
  CacheUuid uuid{};

  [[nodiscard]] bool same_file(const ImageIdentity& o) const noexcept { return dev == o.dev && ino == o.ino; }
  bool operator==(const ImageIdentity&) const = default;
};

// The identity of what `st` describes (fstat of the image's fd), with the
// size the image layer measured and the VHD UUID (nullptr: none).
[[nodiscard]] ImageIdentity identity_of_stat(const struct stat& st, uint64_t size_bytes,
                                             const CacheUuid* uuid) noexcept;
// fstat(fd) and the above.
Result<ImageIdentity> identity_of_fd(int fd, uint64_t size_bytes, const CacheUuid* uuid) noexcept;

struct BlockKey {
  IdentityId image = kNoIdentity;
  uint64_t block = 0;
  bool operator==(const BlockKey&) const = default;
};

// A well-mixed 64-bit hash of a key, never 0 (0 marks empty cells). The
// cache takes its shard from the high bits and its table position from the
// low bits.
[[nodiscard]] inline uint64_t block_key_hash(const BlockKey& k) noexcept {
  // splitmix64's finaliser over the two fields: every input bit moves about
  // half the output bits, so neighbouring blocks land in unrelated shards.
  uint64_t x = k.block * 0x9e3779b97f4a7c15ULL ^ (static_cast<uint64_t>(k.image) << 32 | k.image);
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x != 0 ? x : 1;
}

class IdentityRegistry {
 public:
  struct Acquired {
    IdentityId id = kNoIdentity;
    bool fresh = false;                 // a new id (first open of this identity)
    IdentityId replaced = kNoIdentity;  // the id this open retired: same file, other attributes
  };

  // One reference on the id of `ident`. ENOSPC once 2^32 - 1 ids were handed
  // out (never in practice; ids are not reused), ENOMEM.
  Result<Acquired> acquire(const ImageIdentity& ident) noexcept;
  // Drops one reference; true when it was the last (the id is forgotten and
  // its entries can go). False for an unknown id.
  bool release(IdentityId id) noexcept;
  // Retires `id` when `now` (a fresh fstat of its file) differs from what it
  // was acquired with; true when it did (or it was retired already).
  bool retire_if_changed(IdentityId id, const ImageIdentity& now) noexcept;
  [[nodiscard]] bool retired(IdentityId id) const noexcept;
  [[nodiscard]] std::optional<ImageIdentity> identity(IdentityId id) const noexcept;
  [[nodiscard]] size_t size() const noexcept;  // ids with references

 private:
  struct Record {
    ImageIdentity ident;
    uint32_t refs = 0;
    bool retired = false;
  };
  void retire_locked(IdentityId id, Record& r) noexcept;

  mutable std::mutex mu_;
  std::unordered_map<IdentityId, Record> by_id_;
  std::map<std::pair<uint64_t, uint64_t>, IdentityId> current_;  // (dev, ino) -> live id
  IdentityId next_ = 1;
};

}  // namespace xenpath
