#include "cache/cache_key.h"

#include <sys/stat.h>

#include <new>

namespace xenpath {

ImageIdentity identity_of_stat(const struct stat& st, uint64_t size_bytes, const CacheUuid* uuid) noexcept {
  ImageIdentity id;
  if (S_ISBLK(st.st_mode)) {
    id.dev = 0;
    id.ino = st.st_rdev;
  } else {
    id.dev = st.st_dev;
    id.ino = st.st_ino;
  }
  id.size = size_bytes;
  id.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  if (uuid != nullptr) {
    id.has_uuid = true;
    id.uuid = *uuid;
  }
  return id;
}

Result<ImageIdentity> identity_of_fd(int fd, uint64_t size_bytes, const CacheUuid* uuid) noexcept {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return unexpected_errno();
  return identity_of_stat(st, size_bytes, uuid);
}

void IdentityRegistry::retire_locked(IdentityId id, Record& r) noexcept {
  r.retired = true;
  auto it = current_.find({r.ident.dev, r.ident.ino});
  if (it != current_.end() && it->second == id) current_.erase(it);
}

Result<IdentityRegistry::Acquired> IdentityRegistry::acquire(const ImageIdentity& ident) noexcept {
  std::lock_guard lock(mu_);
  Acquired out;
  auto cur = current_.find({ident.dev, ident.ino});
  if (cur != current_.end()) {
    Record& r = by_id_.at(cur->second);
    if (r.ident == ident) {
      ++r.refs;
      out.id = cur->second;
      return out;
    }
    out.replaced = cur->second;
    retire_locked(cur->second, r);
  }
  if (next_ == kNoIdentity) return unexpected(ENOSPC);  // wrapped: 2^32 - 1 ids used
  try {
    const IdentityId id = next_;
    by_id_.emplace(id, Record{ident, 1, false});
    try {
      current_.emplace(std::pair{ident.dev, ident.ino}, id);
    } catch (...) {
      by_id_.erase(id);
      throw;
    }
    ++next_;
    out.id = id;
    out.fresh = true;
    return out;
  } catch (const std::bad_alloc&) {
    return unexpected(ENOMEM);
  }
}

bool IdentityRegistry::release(IdentityId id) noexcept {
  std::lock_guard lock(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return false;
  if (--it->second.refs != 0) return false;
  retire_locked(id, it->second);
  by_id_.erase(it);
  return true;
}

bool IdentityRegistry::retire_if_changed(IdentityId id, const ImageIdentity& now) noexcept {
  std::lock_guard lock(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return false;
  if (it->second.retired) return true;
  if (it->second.ident == now) return false;
  retire_locked(id, it->second);
  return true;
}

bool IdentityRegistry::retired(IdentityId id) const noexcept {
  std::lock_guard lock(mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() || it->second.retired;
}

std::optional<ImageIdentity> IdentityRegistry::identity(IdentityId id) const noexcept {
  std::lock_guard lock(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return std::nullopt;
  return it->second.ident;
}

size_t IdentityRegistry::size() const noexcept {
  std::lock_guard lock(mu_);
  return by_id_.size();
}

}  // namespace xenpath
