// The netif control ring's messages (feature-ctrl-ring) and the multicast
// filter, as Linux xen-netback implements them (hash.c, netback.c
// process_ctrl_request, xenvif_mcast_*).
//
// Hashing: the frontend picks an algorithm (NONE or Toeplitz), the hash
// types (IPv4, IPv4+TCP, IPv6, IPv6+TCP), a key of up to 40 octets and a
// mapping table of up to 128 entries (hash -> queue), which the backend uses
// to steer packets to the guest's receive queues and to tell the guest the
// hash in a HASH extra. Key and table are read from pages the frontend
// grants (offset 0), by grant copy. Statuses follow Linux (which answers
// INVALID_PARAMETER where netif.h suggests BUFFER_OVERFLOW). A mapping table
// update is validated as a whole before it takes effect: a bad entry leaves
// the previous table in force (Linux's double buffer).
//
// Owned by the vif's control thread; touches guest memory only through the
// GrantTable copies it issues.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>

#include "common/xen/grant_table.h"
#include "common/xen/ring_protocol.h"
#include "common/xen/types.h"

#include <xen/io/netif.h>

namespace xenpath {

inline constexpr size_t kHashKeyMax = 40;         // XEN_NETBK_MAX_HASH_KEY_SIZE
inline constexpr uint32_t kHashMappingMax = 128;  // XEN_NETBK_MAX_HASH_MAPPING_SIZE
inline constexpr uint32_t kHashTypesSupported = XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP |
                                                XEN_NETIF_CTRL_HASH_TYPE_IPV6 | XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;

// Toeplitz over `data` with `key` (netif.h's definition: key bits beyond
// the key are zero).
uint32_t toeplitz_hash(std::span<const uint8_t> key, std::span<const uint8_t> data) noexcept;

struct FrameHash {
  uint8_t type = 0;  // _XEN_NETIF_CTRL_HASH_TYPE_*
  uint32_t value = 0;
};

class NetifCtrl {
 public:
  // `frontend`: whose grants the key/table come from. `num_queues`: the
  // guest's queue count (mapping entries must be below it).
  NetifCtrl(DomId frontend, uint32_t num_queues) noexcept : frontend_(frontend), num_queues_(num_queues) {}

  // One control request -> its response (id and type echoed).
  xen_netif_ctrl_response handle(const xen_netif_ctrl_request& req, GrantTable& gt) noexcept;

  // The hash of a frame (Ethernet, optional 802.1Q/ad tags, IPv4 or IPv6
  // with extension headers, TCP unless fragmented) per the enabled types;
  // nullopt when hashing is off or no enabled type applies. Reads only
  // `frame` (a private copy of the headers).
  [[nodiscard]] std::optional<FrameHash> hash_frame(std::span<const uint8_t> frame) const noexcept;
  // The receive queue for a hash: the mapping table, or hash modulo the
  // queue count when no table is set.
  [[nodiscard]] uint32_t queue_for(uint32_t hash) const noexcept;

  [[nodiscard]] uint32_t algorithm() const noexcept { return alg_; }
  [[nodiscard]] uint32_t flags() const noexcept { return flags_; }
  [[nodiscard]] std::span<const uint8_t> key() const noexcept { return key_; }
  [[nodiscard]] std::span<const uint32_t> mapping() const noexcept { return {tables_[sel_].data(), size_}; }

 private:
  uint32_t set_key(GrantRef gref, uint32_t len, GrantTable& gt) noexcept;
  uint32_t set_mapping(GrantRef gref, uint32_t len, uint32_t off, GrantTable& gt) noexcept;
  bool copy_in(GrantRef gref, void* dst, uint32_t len, GrantTable& gt) noexcept;

  DomId frontend_;
  uint32_t num_queues_;
  uint32_t alg_ = XEN_NETIF_CTRL_HASH_ALGORITHM_NONE;
  uint32_t flags_ = 0;
  std::array<uint8_t, kHashKeyMax> key_{};
  std::array<std::array<uint32_t, kHashMappingMax>, 2> tables_{};
  unsigned sel_ = 0;
  uint32_t size_ = 0;
};

// The guest's multicast list (XEN_NETIF_EXTRA_TYPE_MCAST_ADD/DEL on the TX
// ring, when the frontend requested multicast control). Linux keeps up to
// 64 addresses and refuses more with an error; a refused address is still
// one the guest wants, so while any refused address has not been deleted
// the filter passes all multicast (promiscuous), instead of silently
// starving the guest of a group. Not thread-safe: a VIF shares one through
// VifMulticast.
class MulticastFilter {
 public:
  static constexpr size_t kMax = 64;  // XEN_NETBK_MCAST_MAX
  using Mac = std::array<uint8_t, 6>;

  // True (NETIF_RSP_OKAY) when stored; false (NETIF_RSP_ERROR) when full.
  bool add(const Mac& addr) noexcept;
  // Removes one occurrence (duplicates are kept, as Linux's list does).
  void del(const Mac& addr) noexcept;
  void clear() noexcept;

  // Whether a frame to `dst` is delivered to the guest: unicast and
  // broadcast always; multicast when listed, or while promiscuous.
  [[nodiscard]] bool accepts(const Mac& dst) const noexcept;
  [[nodiscard]] bool promiscuous() const noexcept { return refused_ > 0; }
  [[nodiscard]] size_t size() const noexcept { return count_; }

 private:
  std::array<Mac, kMax> addrs_{};
  size_t count_ = 0;
  size_t refused_ = 0;
};

// One VIF's multicast control: the guest's list (one per VIF, as Linux
// keeps it) and what its requests do to it. Any queue's TX path hands it
// the guest's MCAST_ADD/DEL requests; every queue's RX path filters against
// it. Thread-safe (the queues run on their reactors' threads): a lock taken
// per guest request and per received multicast frame while filtering is on
// (unicast frames never take it). Touches no guest memory.
class VifMulticast {
 public:
  using Mac = MulticastFilter::Mac;

  // A guest's XEN_NETIF_EXTRA_TYPE_MCAST_ADD/DEL: true (NETIF_RSP_OKAY)
  // when applied, false (NETIF_RSP_ERROR) when an add was refused (the
  // list is full) or the type is neither.
  bool apply(uint8_t type, const Mac& addr) noexcept;
  // Whether a frame to `dst` is delivered to the guest (MulticastFilter::accepts).
  [[nodiscard]] bool accepts(const Mac& dst) const noexcept;
  [[nodiscard]] MulticastFilter snapshot() const noexcept;

 private:
  mutable std::mutex lock_;
  MulticastFilter filter_;
};

}  // namespace xenpath
