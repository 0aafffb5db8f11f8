// The simulated Xen host: a first-class component (the demo and benchmarks
// run on it), not a test fake.
//
// - Domains own guest memory in a memfd. A frontend grants pages of it; a
//   backend's SimGrantTable maps them with a real mmap of the same memfd
//   pages (PROT_READ for a read-only grant, so a write faults as on Xen) and
//   grant copy enforces the same rules. Bad refs, revoked refs and wrong
//   domids fail with the GNTST_* code Xen gives.
// - Event channels are eventfds with the Linux evtchn device's
//   mask-until-unmask semantics.
// - xenstored is SimXenstored: it speaks the xenstore wire protocol on a
//   unix socket, so the daemons use the real libxenstore adapter against it
//   (XENSTORED_PATH) and xenstore-ls/-read/-write/-watch work too. Simulated
//   guests and toolstacks use in-process connections acting as a domain.
// - Counters of everything the tests assert on (batching, suppression, cost).
//
// Thread-safety: SimHost and SimDomain methods may be called from any thread
// (the grant table and port table take short internal locks: this is the
// hypervisor's side, not our datapath).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"
#include "common/xen/event_channel.h"
#include "common/xen/grant_table.h"
#include "common/xen/platform.h"
#include "common/xen/types.h"
#include "common/xen/xenstore.h"

namespace xenpath::sim {

class SimXenstored;

struct SimCounters {
  std::atomic<uint64_t> map_calls{0};     // GrantTable::map calls (batches)
  std::atomic<uint64_t> map_pages{0};     // pages mapped
  std::atomic<uint64_t> map_failures{0};  // failed map calls
  std::atomic<uint64_t> unmap_calls{0};
  std::atomic<uint64_t> unmap_pages{0};
  std::atomic<uint64_t> copy_calls{0};         // GrantTable::copy calls (batches)
  std::atomic<uint64_t> copy_segs{0};          // segments copied
  std::atomic<uint64_t> copy_failures{0};      // segments with status != GNTST_okay
  std::atomic<uint64_t> notify_calls{0};       // EventChannel::notify, all domains
  std::atomic<uint64_t> mapped_pages_live{0};  // currently mapped grant pages (leak check)
};

// One simulated guest: its memory and its grant table (the grants it offers).
class SimDomain {
 public:
  virtual ~SimDomain() = default;
  [[nodiscard]] virtual DomId id() const noexcept = 0;
  [[nodiscard]] virtual uint32_t total_pages() const noexcept = 0;
  // The guest's own read-write view of page `pfn` (what a frontend writes).
  [[nodiscard]] virtual std::byte* page(uint32_t pfn) const noexcept = 0;
  // Contiguous guest pages, zeroed.
  virtual Result<uint32_t> alloc_pages(uint32_t count) noexcept = 0;
  virtual void free_pages(uint32_t pfn, uint32_t count) noexcept = 0;

  // Grants `to` access to `pfn`. ENOSPC when the grant table is full.
  virtual Result<GrantRef> grant_access(DomId to, uint32_t pfn, bool readonly) noexcept = 0;
  // Revokes. EBUSY while the grantee still has it mapped (Xen refuses too).
  virtual Status end_access(GrantRef ref) noexcept = 0;
  // How many live mappings of `ref` exist (0 when unknown or unmapped).
  [[nodiscard]] virtual uint32_t active_maps(GrantRef ref) const noexcept = 0;
  [[nodiscard]] virtual uint32_t grants_in_use() const noexcept = 0;
};

class SimHost {
 public:
  struct Options {
    // Unix socket of the simulated xenstored; empty = a fresh private path.
    std::string xenstored_socket;
    uint32_t grant_entries_per_domain = 65536;
  };

  static Result<std::unique_ptr<SimHost>> create(const Options& opts) noexcept;
  virtual ~SimHost() = default;

  // Creates a guest with `mem_pages` of memory and its /local/domain/<id>
  // (name, domid), introduced to xenstored. EEXIST if taken; dom0 exists
  // from the start (its memory is 0 pages unless created again).
  virtual Result<SimDomain*> create_domain(DomId id, uint32_t mem_pages, const std::string& name) noexcept = 0;
  // What the hypervisor and toolstack do when a guest dies: its grants stop
  // being grantable (mappings already made stay valid until unmapped, as on
  // Xen), its unbound/bound ports close, @releaseDomain fires and
  // /local/domain/<id> is removed.
  virtual Status destroy_domain(DomId id) noexcept = 0;
  [[nodiscard]] virtual SimDomain* domain(DomId id) noexcept = 0;

  // Handles acting as domain `self`.
  virtual Result<std::unique_ptr<GrantTable>> open_grant_table(DomId self) noexcept = 0;
  virtual Result<std::unique_ptr<EventChannel>> open_event_channel(DomId self) noexcept = 0;
  // An in-process xenstore connection acting as `self` (dom0 is privileged).
  virtual Result<std::unique_ptr<XenStore>> open_xenstore(DomId self) noexcept = 0;

  [[nodiscard]] virtual const std::string& xenstored_path() const noexcept = 0;
  [[nodiscard]] virtual SimXenstored& xenstored() noexcept = 0;
  [[nodiscard]] virtual SimCounters& counters() noexcept = 0;
};

// A XenPlatform for daemons running on the simulated host as `self`: grant
// tables and event channels from the host, and xenstore through the real
// libxenstore adapter on the simulated xenstored's socket, so the daemon's
// control plane is the production code.
std::unique_ptr<XenPlatform> make_sim_platform(SimHost& host, DomId self = kDom0) noexcept;

}  // namespace xenpath::sim
