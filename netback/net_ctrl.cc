#include "netback/net_ctrl.h"

#include <algorithm>
#include <cstring>

namespace xenpath {

uint32_t toeplitz_hash(std::span<const uint8_t> key, std::span<const uint8_t> data) noexcept {
  // `window` holds the key bits that line up with the current data bit; its
  // top 32 bits are what a set data bit XORs in.
  auto key_byte = [&](size_t i) -> uint64_t { return i < key.size() ? key[i] : 0; };
  uint64_t window = 0;
  size_t next = 0;
  for (; next < 8; ++next) window = (window << 8) | key_byte(next);
  uint32_t result = 0;
  for (const uint8_t byte : data) {
    for (int bit = 7; bit >= 0; --bit) {
      if (((byte >> bit) & 1) != 0) result ^= static_cast<uint32_t>(window >> 32);
      window <<= 1;
    }
    window |= key_byte(next++);  // the 8 bits just shifted in at the bottom
  }
  return result;
}

bool NetifCtrl::copy_in(GrantRef gref, void* dst, uint32_t len, GrantTable& gt) noexcept {
  GrantCopySegment seg{};
  seg.source.foreign.ref = gref;
  seg.source.foreign.offset = 0;  // "assumed to start at beginning of grant"
  seg.source.foreign.domid = frontend_;
  seg.dest.virt = dst;
  seg.len = static_cast<uint16_t>(len);
  seg.flags = kCopySourceGref;
  auto r = gt.copy({&seg, 1});
  return r && *r == 1 && seg.status == GNTST_okay;
}

uint32_t NetifCtrl::set_key(GrantRef gref, uint32_t len, GrantTable& gt) noexcept {
  if (len > kHashKeyMax) return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
  std::array<uint8_t, kHashKeyMax> k{};  // octets not given are zero
  if (len != 0 && !copy_in(gref, k.data(), len, gt)) return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
  key_ = k;
  return XEN_NETIF_CTRL_STATUS_SUCCESS;
}

uint32_t NetifCtrl::set_mapping(GrantRef gref, uint32_t len, uint32_t off, GrantTable& gt) noexcept {
  if (off + len < off || off + len > size_ || len > kPageSize / sizeof(uint32_t)) {
    return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
  }
  // Build the new table aside; it takes effect only once every new entry
  // is a valid queue.
  auto& shadow = tables_[sel_ ^ 1u];
  shadow = tables_[sel_];
  if (len != 0 && !copy_in(gref, &shadow[off], len * static_cast<uint32_t>(sizeof(uint32_t)), gt)) {
    return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
  }
  for (uint32_t i = off; i < off + len; ++i) {
    if (shadow[i] >= num_queues_) return XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
  }
  sel_ ^= 1u;
  return XEN_NETIF_CTRL_STATUS_SUCCESS;
}

xen_netif_ctrl_response NetifCtrl::handle(const xen_netif_ctrl_request& req, GrantTable& gt) noexcept {
  xen_netif_ctrl_response rsp{};
  rsp.id = req.id;
  rsp.type = req.type;
  rsp.status = XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED;
  rsp.data = 0;
  switch (req.type) {
    case XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM:
      if (req.data[0] == XEN_NETIF_CTRL_HASH_ALGORITHM_NONE || req.data[0] == XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ) {
        alg_ = req.data[0];
        rsp.status = XEN_NETIF_CTRL_STATUS_SUCCESS;
      } else {
        rsp.status = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
      }
      break;
    case XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS:
      if (alg_ != XEN_NETIF_CTRL_HASH_ALGORITHM_NONE) {
        rsp.status = XEN_NETIF_CTRL_STATUS_SUCCESS;
        rsp.data = kHashTypesSupported;
      }
      break;
    case XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS:
      if ((req.data[0] & ~kHashTypesSupported) != 0 || alg_ == XEN_NETIF_CTRL_HASH_ALGORITHM_NONE) {
        rsp.status = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
      } else {
        flags_ = req.data[0];
        rsp.status = XEN_NETIF_CTRL_STATUS_SUCCESS;
      }
      break;
    case XEN_NETIF_CTRL_TYPE_SET_HASH_KEY:
      rsp.status = set_key(req.data[0], req.data[1], gt);
      break;
    case XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE:
      rsp.status = XEN_NETIF_CTRL_STATUS_SUCCESS;
      rsp.data = kHashMappingMax;
      break;
    case XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE:
      if (req.data[0] > kHashMappingMax) {
        rsp.status = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
      } else {
        size_ = req.data[0];
        std::fill(tables_[sel_].begin(), tables_[sel_].begin() + size_, 0u);  // a new table is zero-filled
        rsp.status = XEN_NETIF_CTRL_STATUS_SUCCESS;
      }
      break;
    case XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING:
      rsp.status = set_mapping(req.data[0], req.data[1], req.data[2], gt);
      break;
    default:  // INVALID, the gref-mapping messages, anything newer
      break;
  }
  return rsp;
}

uint32_t NetifCtrl::queue_for(uint32_t hash) const noexcept {
  if (size_ != 0) return tables_[sel_][hash % size_];
  return num_queues_ == 0 ? 0 : hash % num_queues_;
}

namespace {

uint16_t be16(const uint8_t* p) noexcept { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

}  // namespace

std::optional<FrameHash> NetifCtrl::hash_frame(std::span<const uint8_t> f) const noexcept {
  if (alg_ != XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ || flags_ == 0) return std::nullopt;
  size_t off = 12;
  if (f.size() < off + 2) return std::nullopt;
  uint16_t type = be16(&f[off]);
  for (int tags = 0; tags < 2 && (type == 0x8100 || type == 0x88a8); ++tags) {
    off += 4;
    if (f.size() < off + 2) return std::nullopt;
    type = be16(&f[off]);
  }
  off += 2;
  std::array<uint8_t, 36> in{};
  if (type == 0x0800) {
    if ((flags_ & (XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP)) == 0) return std::nullopt;
    if (f.size() < off + 20) return std::nullopt;
    const uint8_t* ip = &f[off];
    const size_t ihl = (ip[0] & 0xfu) * 4u;
    if ((ip[0] >> 4) != 4 || ihl < 20 || f.size() < off + ihl) return std::nullopt;
    const bool fragment = (be16(ip + 6) & 0x3fff) != 0;  // MF or an offset
    std::memcpy(in.data(), ip + 12, 8);
    const bool tcp = ip[9] == 6 && !fragment && f.size() >= off + ihl + 4;
    if (tcp && (flags_ & XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP) != 0) {
      std::memcpy(in.data() + 8, ip + ihl, 4);
      return FrameHash{_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, toeplitz_hash(key_, {in.data(), 12})};
    }
    if ((flags_ & XEN_NETIF_CTRL_HASH_TYPE_IPV4) != 0) {
      return FrameHash{_XEN_NETIF_CTRL_HASH_TYPE_IPV4, toeplitz_hash(key_, {in.data(), 8})};
    }
    return std::nullopt;
  }
  if (type == 0x86dd) {
    if ((flags_ & (XEN_NETIF_CTRL_HASH_TYPE_IPV6 | XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP)) == 0) return std::nullopt;
    if (f.size() < off + 40) return std::nullopt;
    const uint8_t* ip = &f[off];
    if ((ip[0] >> 4) != 6) return std::nullopt;
    std::memcpy(in.data(), ip + 8, 32);
    uint8_t next = ip[6];
    size_t l4 = off + 40;
    bool fragment = false;
    // Extension headers before the transport header (bounded walk).
    for (int hops = 0; hops < 8; ++hops) {
      if (next == 0 || next == 43 || next == 60) {  // hop-by-hop, routing, destination options
        if (f.size() < l4 + 8) return std::nullopt;
        const size_t len = (static_cast<size_t>(f[l4 + 1]) + 1) * 8;
        next = f[l4];
        l4 += len;
      } else if (next == 44) {  // fragment
        if (f.size() < l4 + 8) return std::nullopt;
        fragment = true;
        next = f[l4];
        l4 += 8;
      } else {
        break;
      }
    }
    const bool tcp = next == 6 && !fragment && f.size() >= l4 + 4;
    if (tcp && (flags_ & XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP) != 0) {
      std::memcpy(in.data() + 32, &f[l4], 4);
      return FrameHash{_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP, toeplitz_hash(key_, {in.data(), 36})};
    }
    if ((flags_ & XEN_NETIF_CTRL_HASH_TYPE_IPV6) != 0) {
      return FrameHash{_XEN_NETIF_CTRL_HASH_TYPE_IPV6, toeplitz_hash(key_, {in.data(), 32})};
    }
    return std::nullopt;
  }
  return std::nullopt;
}

bool MulticastFilter::add(const Mac& addr) noexcept {
  if (count_ == kMax) {
    ++refused_;
    return false;
  }
  addrs_[count_++] = addr;
  return true;
}

void MulticastFilter::del(const Mac& addr) noexcept {
  for (size_t i = 0; i < count_; ++i) {
    if (addrs_[i] != addr) continue;
    std::copy(addrs_.begin() + static_cast<ptrdiff_t>(i) + 1, addrs_.begin() + static_cast<ptrdiff_t>(count_),
              addrs_.begin() + static_cast<ptrdiff_t>(i));
    --count_;
    return;
  }
  // Not listed: taken to be one of the refused ones the guest gives up.
  if (refused_ > 0) --refused_;
}

void MulticastFilter::clear() noexcept {
  count_ = 0;
  refused_ = 0;
}

bool MulticastFilter::accepts(const Mac& dst) const noexcept {
  if ((dst[0] & 1) == 0) return true;                                                         // unicast
  if (std::all_of(dst.begin(), dst.end(), [](uint8_t b) { return b == 0xff; })) return true;  // broadcast
  if (refused_ > 0) return true;
  return std::find(addrs_.begin(), addrs_.begin() + static_cast<ptrdiff_t>(count_), dst) !=
         addrs_.begin() + static_cast<ptrdiff_t>(count_);
}

bool VifMulticast::apply(uint8_t type, const Mac& addr) noexcept {
  std::lock_guard<std::mutex> hold(lock_);
  if (type == XEN_NETIF_EXTRA_TYPE_MCAST_ADD) return filter_.add(addr);
  if (type == XEN_NETIF_EXTRA_TYPE_MCAST_DEL) {
    filter_.del(addr);
    return true;
  }
  return false;
}

bool VifMulticast::accepts(const Mac& dst) const noexcept {
  if ((dst[0] & 1) == 0) return true;  // unicast: the list has no say
  std::lock_guard<std::mutex> hold(lock_);
  return filter_.accepts(dst);
}

MulticastFilter VifMulticast::snapshot() const noexcept {
  std::lock_guard<std::mutex> hold(lock_);
  return filter_;
}

}  // namespace xenpath
