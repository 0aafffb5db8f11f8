// GuestDomain: the hypervisor's record of one simulated guest -- its memory
// and the grant table it offers -- behind the SimDomain interface.
//
// Internal to common/sim/: SimHypervisor creates and destroys these,
// SimGrantTable maps and copies through them. Everyone else sees SimDomain.
//
// Thread-safety: any thread. One short mutex per domain guards the grant
// table, the page allocator and the memory's teardown; grant map/copy hold it
// across their mmap/memcpy so that a concurrent destroy cannot pull the memfd
// from under them (Xen holds a page reference for the same reason).
//
// Guest-shared memory: the whole guest memory is a memfd. The guest's own
// read-write view is one MAP_SHARED mapping of it; backends map single pages
// of the same memfd, so both see every byte the other writes, as with a real
// grant mapping.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/xen/types.h"
#include "sim/sim_host.h"

namespace xenpath::sim {

class GuestDomain final : public SimDomain {
 public:
  // Grant table v1: 8-byte entries, 512 per 4 KiB frame. The table grows a
  // frame at a time as the guest needs refs, so a ref beyond the current
  // size is "bad gntref" and one inside it but never granted is "general
  // error" -- the same split Xen makes.
  static constexpr uint32_t kGrantEntriesPerFrame = 512;
  // GNTTAB_NR_RESERVED_ENTRIES: refs 0-7 belong to the toolstack (console,
  // xenstore ring), a guest never hands them out.
  static constexpr GrantRef kFirstGuestRef = 8;
  // Xen keeps 8-bit pin counters per access kind (read/write) and refuses a
  // further map once a counter's top bit is set (act->pin & 0x80808080): at
  // most 128 live mappings of one ref per kind.
  static constexpr uint32_t kPinLimitPerKind = 0x80;

  static Result<std::unique_ptr<GuestDomain>> create(DomId id, uint32_t mem_pages, const std::string& name,
                                                     uint32_t max_grant_entries) noexcept;
  ~GuestDomain() override;
  GuestDomain(const GuestDomain&) = delete;
  GuestDomain& operator=(const GuestDomain&) = delete;

  // SimDomain. After kill() every call fails with ESRCH / returns nullptr or
  // 0, but the object stays valid (SimHypervisor never frees a domain before
  // it is itself destroyed), so a stale SimDomain* cannot dangle.
  [[nodiscard]] DomId id() const noexcept override { return id_; }
  [[nodiscard]] uint32_t total_pages() const noexcept override;
  [[nodiscard]] std::byte* page(uint32_t pfn) const noexcept override;
  Result<uint32_t> alloc_pages(uint32_t count) noexcept override;
  void free_pages(uint32_t pfn, uint32_t count) noexcept override;
  Result<GrantRef> grant_access(DomId to, uint32_t pfn, bool readonly) noexcept override;
  Status end_access(GrantRef ref) noexcept override;
  [[nodiscard]] uint32_t active_maps(GrantRef ref) const noexcept override;
  [[nodiscard]] uint32_t grants_in_use() const noexcept override;

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] bool alive() const noexcept;

  // ---- Hypervisor side -------------------------------------------------

  // Domain death: new grant operations fail (GNTST_bad_domain), the guest's
  // view is unmapped and the memfd closed. Pages somebody still has mapped
  // stay alive through those mappings until they are unmapped.
  void kill() noexcept;

  // GNTTABOP_map_grant_ref for a batch, all or nothing: pins every ref for
  // `grantee` and mmaps each granted page over the PROT_NONE reservation
  // `region` (refs.size() pages). `status` (refs.size() long) receives the
  // per-ref GNTST code Xen would give. Returns 0, EINVAL when any ref failed
  // (nothing stays pinned or mapped), or mmap's errno.
  int map_grants(DomId grantee, std::span<const GrantRef> refs, bool writable, std::byte* region,
                 std::span<int16_t> status) noexcept;
  // Drops the pins map_grants() took (the caller munmaps).
  void unpin_grants(std::span<const GrantRef> refs, bool writable) noexcept;

  // For grant copy. The caller holds mutex() across this call and the
  // memcpy. GNTST code; on GNTST_okay *frame is the granted page in the
  // domain's memory.
  [[nodiscard]] std::mutex& mutex() const noexcept { return mu_; }
  int16_t frame_for_copy_locked(GrantRef ref, DomId grantee, bool write, std::byte** frame) const noexcept;

 private:
  struct GrantEntry {
    bool in_use = false;
    bool readonly = false;
    DomId to = 0;
    uint32_t pfn = 0;
    uint32_t read_pins = 0;   // live read-only mappings
    uint32_t write_pins = 0;  // live writable mappings
  };

  GuestDomain(DomId id, std::string name, uint32_t max_grant_entries) noexcept;
  Status grow_grant_table_locked() noexcept;
  // GNTST code for pinning `ref` for `grantee` (map and copy share the rules).
  int16_t check_grant_locked(GrantRef ref, DomId grantee, bool write) const noexcept;
  void zero_pages_locked(uint32_t pfn, uint32_t count) noexcept;

  const DomId id_;
  const std::string name_;
  const uint32_t max_grant_entries_;

  mutable std::mutex mu_;
  // Read without the lock by page()/total_pages() (a frontend's hot path);
  // written only by create() and kill().
  std::atomic<std::byte*> base_{nullptr};
  std::atomic<uint32_t> total_pages_{0};
  std::atomic<bool> alive_{true};
  int memfd_ = -1;                   // guarded by mu_
  std::vector<uint64_t> used_;       // page bitmap, guarded by mu_
  uint32_t alloc_hint_ = 0;          // no free page below this, guarded by mu_
  std::vector<GrantEntry> grants_;   // guarded by mu_
  std::vector<GrantRef> free_refs_;  // LIFO, guarded by mu_
  uint32_t grants_in_use_ = 0;       // guarded by mu_
};

}  // namespace xenpath::sim
