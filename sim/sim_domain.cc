#include "sim/sim_domain.h"

// Brings <xen/grant_table.h> (GNTST_*) with the interface version the rest
// of the project compiles against.
#include "common/xen/ring_protocol.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>

#include <spdlog/spdlog.h>

namespace xenpath::sim {

namespace {

constexpr uint64_t kAllOnes = ~uint64_t{0};

bool bit(const std::vector<uint64_t>& v, uint32_t i) noexcept { return (v[i / 64] >> (i % 64)) & 1u; }
void set_bit(std::vector<uint64_t>& v, uint32_t i) noexcept { v[i / 64] |= uint64_t{1} << (i % 64); }
void clear_bit(std::vector<uint64_t>& v, uint32_t i) noexcept { v[i / 64] &= ~(uint64_t{1} << (i % 64)); }

}  // namespace

GuestDomain::GuestDomain(DomId id, std::string name, uint32_t max_grant_entries) noexcept
    : id_(id), name_(std::move(name)), max_grant_entries_(max_grant_entries) {}

Result<std::unique_ptr<GuestDomain>> GuestDomain::create(DomId id, uint32_t mem_pages, const std::string& name,
                                                         uint32_t max_grant_entries) noexcept {
  try {
    std::unique_ptr<GuestDomain> d(new GuestDomain(id, name, max_grant_entries));
    d->used_.assign((static_cast<size_t>(mem_pages) + 63) / 64, 0);
    if (mem_pages > 0) {
      const std::string fd_name = "xenpath-d" + std::to_string(id);
      d->memfd_ = memfd_create(fd_name.c_str(), MFD_CLOEXEC);
      if (d->memfd_ < 0) return unexpected_errno();
      const auto bytes = static_cast<off_t>(mem_pages) * static_cast<off_t>(kPageSize);
      // Sparse: tmpfs allocates a page only when somebody touches it, so a
      // guest of 65536 pages costs what its frontend actually uses.
      if (ftruncate(d->memfd_, bytes) != 0) return unexpected_errno();
      void* base =
          mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, d->memfd_, 0);
      if (base == MAP_FAILED) return unexpected_errno();
      d->base_.store(static_cast<std::byte*>(base), std::memory_order_release);
      d->total_pages_.store(mem_pages, std::memory_order_release);
    }
    std::lock_guard lk(d->mu_);
    if (auto st = d->grow_grant_table_locked(); !st && st.error() != ENOSPC) return unexpected(st.error());
    return d;
  } catch (const std::bad_alloc&) {
    return unexpected(ENOMEM);
  }
}

GuestDomain::~GuestDomain() {
  if (auto* b = base_.load(std::memory_order_acquire); b != nullptr) {
    munmap(b, static_cast<size_t>(total_pages_.load()) * kPageSize);
  }
  if (memfd_ >= 0) close(memfd_);
}

uint32_t GuestDomain::total_pages() const noexcept { return total_pages_.load(std::memory_order_acquire); }

bool GuestDomain::alive() const noexcept { return alive_.load(std::memory_order_acquire); }

std::byte* GuestDomain::page(uint32_t pfn) const noexcept {
  if (pfn >= total_pages_.load(std::memory_order_acquire)) return nullptr;
  std::byte* b = base_.load(std::memory_order_acquire);
  return b == nullptr ? nullptr : b + static_cast<size_t>(pfn) * kPageSize;
}

void GuestDomain::zero_pages_locked(uint32_t pfn, uint32_t count) noexcept {
  const auto off = static_cast<off_t>(pfn) * static_cast<off_t>(kPageSize);
  const auto len = static_cast<off_t>(count) * static_cast<off_t>(kPageSize);
  // Punching a hole zeroes without touching the pages and gives their memory
  // back to the host; memset only where tmpfs refuses.
  if (fallocate(memfd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) != 0) {
    std::memset(base_.load(std::memory_order_relaxed) + off, 0, static_cast<size_t>(len));
  }
}

Result<uint32_t> GuestDomain::alloc_pages(uint32_t count) noexcept {
  if (count == 0) return unexpected(EINVAL);
  std::lock_guard lk(mu_);
  if (!alive()) return unexpected(ESRCH);
  const uint32_t total = total_pages_.load(std::memory_order_relaxed);
  if (count > total) return unexpected(ENOMEM);
  // First fit from the lowest free page; whole used words are skipped, so a
  // mostly-full 1M-page guest is still a short scan.
  uint32_t run = 0;
  uint32_t start = 0;
  for (uint32_t p = alloc_hint_; p < total; ++p) {
    if (p % 64 == 0 && used_[p / 64] == kAllOnes) {
      run = 0;
      p += 63;
      continue;
    }
    if (bit(used_, p)) {
      run = 0;
      continue;
    }
    if (run == 0) start = p;
    if (++run == count) {
      for (uint32_t i = start; i < start + count; ++i) set_bit(used_, i);
      if (start == alloc_hint_) alloc_hint_ = start + count;
      zero_pages_locked(start, count);
      return start;
    }
  }
  return unexpected(ENOMEM);
}

void GuestDomain::free_pages(uint32_t pfn, uint32_t count) noexcept {
  std::lock_guard lk(mu_);
  const uint32_t total = total_pages_.load(std::memory_order_relaxed);
  if (!alive() || pfn >= total || count > total - pfn) return;
  for (uint32_t i = pfn; i < pfn + count; ++i) clear_bit(used_, i);
  alloc_hint_ = std::min(alloc_hint_, pfn);
}

Status GuestDomain::grow_grant_table_locked() noexcept {
  const auto cur = static_cast<uint32_t>(grants_.size());
  if (cur >= max_grant_entries_) return unexpected(ENOSPC);
  const uint32_t next = std::min(max_grant_entries_, cur + kGrantEntriesPerFrame);
  try {
    grants_.resize(next);
    free_refs_.reserve(free_refs_.size() + (next - cur));
    // Pushed highest first so the LIFO hands out the lowest ref next, as a
    // guest's free list does after boot.
    for (uint32_t r = next; r-- > std::max(cur, kFirstGuestRef);) free_refs_.push_back(r);
  } catch (const std::bad_alloc&) {
    grants_.resize(cur);
    return unexpected(ENOMEM);
  }
  return ok();
}

Result<GrantRef> GuestDomain::grant_access(DomId to, uint32_t pfn, bool readonly) noexcept {
  std::lock_guard lk(mu_);
  if (!alive()) return unexpected(ESRCH);
  if (pfn >= total_pages_.load(std::memory_order_relaxed)) return unexpected(EINVAL);
  while (free_refs_.empty()) {
    XP_TRY(grow_grant_table_locked());
  }
  const GrantRef ref = free_refs_.back();
  free_refs_.pop_back();
  GrantEntry& e = grants_[ref];
  e = GrantEntry{};
  e.in_use = true;
  e.readonly = readonly;
  e.to = to;
  e.pfn = pfn;
  ++grants_in_use_;
  return ref;
}

Status GuestDomain::end_access(GrantRef ref) noexcept {
  std::lock_guard lk(mu_);
  if (!alive()) return unexpected(ESRCH);
  if (ref < kFirstGuestRef || ref >= grants_.size() || !grants_[ref].in_use) return unexpected(EINVAL);
  GrantEntry& e = grants_[ref];
  // Xen will not let a guest revoke a grant that is pinned (GTF_reading or
  // GTF_writing set); Linux's gnttab_end_foreign_access_ref() fails then.
  if (e.read_pins + e.write_pins != 0) return unexpected(EBUSY);
  e = GrantEntry{};
  --grants_in_use_;
  try {
    free_refs_.push_back(ref);
  } catch (const std::bad_alloc&) {
    // Capacity for every ref was reserved when the table grew.
  }
  return ok();
}

uint32_t GuestDomain::active_maps(GrantRef ref) const noexcept {
  std::lock_guard lk(mu_);
  if (ref >= grants_.size()) return 0;
  return grants_[ref].read_pins + grants_[ref].write_pins;
}

uint32_t GuestDomain::grants_in_use() const noexcept {
  std::lock_guard lk(mu_);
  return grants_in_use_;
}

void GuestDomain::kill() noexcept {
  std::lock_guard lk(mu_);
  if (!alive()) return;
  alive_.store(false, std::memory_order_release);
  const uint32_t total = total_pages_.exchange(0, std::memory_order_acq_rel);
  if (std::byte* b = base_.exchange(nullptr, std::memory_order_acq_rel); b != nullptr) {
    munmap(b, static_cast<size_t>(total) * kPageSize);
  }
  if (memfd_ >= 0) {
    close(memfd_);
    memfd_ = -1;
  }
}

int16_t GuestDomain::check_grant_locked(GrantRef ref, DomId grantee, bool write) const noexcept {
  // Same order as Xen's map_grant_ref()/acquire_grant_for_copy(): bounds
  // against the current table size, then _set_status(): entry type and
  // grantee domid, then the read-only flag for a write pin.
  if (ref >= grants_.size()) return GNTST_bad_gntref;
  const GrantEntry& e = grants_[ref];
  if (!e.in_use || e.to != grantee) return GNTST_general_error;
  if (write && e.readonly) return GNTST_general_error;
  return GNTST_okay;
}

int GuestDomain::map_grants(DomId grantee, std::span<const GrantRef> refs, bool writable, std::byte* region,
                            std::span<int16_t> status) noexcept {
  std::lock_guard lk(mu_);
  if (!alive()) {
    std::fill(status.begin(), status.end(), static_cast<int16_t>(GNTST_bad_domain));
    return EINVAL;
  }
  // Every op is judged on its own as the hypercall does, pinning as it goes
  // (a ref twice in the batch is pinned twice); failures undo the pins.
  bool all_ok = true;
  for (size_t i = 0; i < refs.size(); ++i) {
    int16_t st = check_grant_locked(refs[i], grantee, writable);
    if (st == GNTST_okay) {
      uint32_t& pins = writable ? grants_[refs[i]].write_pins : grants_[refs[i]].read_pins;
      if (pins >= kPinLimitPerKind) {
        st = GNTST_general_error;
      } else {
        ++pins;
      }
    }
    status[i] = st;
    all_ok = all_ok && st == GNTST_okay;
  }
  auto undo = [&] {
    for (size_t i = 0; i < refs.size(); ++i) {
      if (status[i] != GNTST_okay) continue;
      uint32_t& pins = writable ? grants_[refs[i]].write_pins : grants_[refs[i]].read_pins;
      --pins;
    }
  };
  if (!all_ok) {
    undo();
    return EINVAL;
  }
  // PROT_READ alone for a read-only map: a write through it faults, exactly
  // like a write to a GNTMAP_readonly mapping on Xen. Guest-contiguous pages
  // go in one mmap.
  const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  for (size_t i = 0; i < refs.size();) {
    size_t j = i + 1;
    while (j < refs.size() && grants_[refs[j]].pfn == grants_[refs[j - 1]].pfn + 1) ++j;
    void* want = region + i * kPageSize;
    void* got = mmap(want, (j - i) * kPageSize, prot, MAP_SHARED | MAP_FIXED, memfd_,
                     static_cast<off_t>(grants_[refs[i]].pfn) * static_cast<off_t>(kPageSize));
    if (got == MAP_FAILED) {
      const int err = errno != 0 ? errno : ENOMEM;
      undo();
      return err;
    }
    i = j;
  }
  return 0;
}

void GuestDomain::unpin_grants(std::span<const GrantRef> refs, bool writable) noexcept {
  std::lock_guard lk(mu_);
  for (GrantRef ref : refs) {
    if (ref >= grants_.size()) continue;
    uint32_t& pins = writable ? grants_[ref].write_pins : grants_[ref].read_pins;
    if (pins == 0) {
      spdlog::error("sim d{}: unpin of unpinned grant ref {}", id_, ref);
      continue;
    }
    --pins;
  }
}

int16_t GuestDomain::frame_for_copy_locked(GrantRef ref, DomId grantee, bool write, std::byte** frame) const noexcept {
  if (!alive()) return GNTST_bad_domain;
  const int16_t st = check_grant_locked(ref, grantee, write);
  if (st != GNTST_okay) return st;
  *frame = base_.load(std::memory_order_relaxed) + static_cast<size_t>(grants_[ref].pfn) * kPageSize;
  return GNTST_okay;
}

}  // namespace xenpath::sim
