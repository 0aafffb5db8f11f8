#include "sim/net/sim_netfront.h"

#include <algorithm>
#include <cstring>
#include <thread>

namespace xenpath::sim {

Result<std::unique_ptr<SimNetfront>> SimNetfront::create(SimDomain& dom, EventChannel& evtchn,
                                                         const Options& opts) noexcept {
  std::unique_ptr<SimNetfront> f(new (std::nothrow) SimNetfront(dom, evtchn, opts));
  if (!f) return unexpected(ENOMEM);
  XP_TRY(f->init());
  return f;
}

Status SimNetfront::init() noexcept {
  if (opts_.tx_pages == 0 || opts_.tx_pages > 0xfffe || opts_.rx_pages == 0) return unexpected(EINVAL);
  XP_ASSIGN_OR_RETURN(tx_ring_pfn_, dom_.alloc_pages(1));
  XP_ASSIGN_OR_RETURN(rx_ring_pfn_, dom_.alloc_pages(1));
  XP_TRY(tx_.init(dom_.page(tx_ring_pfn_), kPageSize));
  XP_TRY(rx_.init(dom_.page(rx_ring_pfn_), kPageSize));
  XP_ASSIGN_OR_RETURN(tx_ref_, dom_.grant_access(opts_.backend, tx_ring_pfn_, false));
  XP_ASSIGN_OR_RETURN(rx_ref_, dom_.grant_access(opts_.backend, rx_ring_pfn_, false));
  XP_ASSIGN_OR_RETURN(tx_port_, evtchn_.bind_unbound(opts_.backend));
  if (opts_.split_event_channels) {
    XP_ASSIGN_OR_RETURN(rx_port_, evtchn_.bind_unbound(opts_.backend));
  } else {
    rx_port_ = tx_port_;
  }
  try {
    XP_ASSIGN_OR_RETURN(const uint32_t txp, dom_.alloc_pages(opts_.tx_pages));
    tx_slots_.resize(opts_.tx_pages);
    for (uint32_t i = 0; i < opts_.tx_pages; ++i) {
      tx_slots_[i].pfn = txp + i;
      tx_free_.push_back(static_cast<uint16_t>(opts_.tx_pages - 1 - i));
    }
    XP_ASSIGN_OR_RETURN(const uint32_t rxp, dom_.alloc_pages(opts_.rx_pages));
    for (uint32_t i = 0; i < opts_.rx_pages; ++i) rx_pool_.push_back(rxp + opts_.rx_pages - 1 - i);
    rx_slots_.resize(rx_.size());
    rx_pending_.reserve(rx_.size());
  } catch (...) {
    return unexpected(ENOMEM);
  }
  return ok();
}

SimNetfront::~SimNetfront() {
  for (auto& s : tx_slots_) {
    if (s.busy) (void)dom_.end_access(s.ref);
  }
  for (auto& s : rx_slots_) {
    if (s.posted) (void)dom_.end_access(s.ref);
  }
  (void)dom_.end_access(tx_ref_);
  (void)dom_.end_access(rx_ref_);
  (void)evtchn_.unbind(tx_port_);
  if (rx_port_ != tx_port_) (void)evtchn_.unbind(rx_port_);
}

void SimNetfront::kick_tx(bool notify) noexcept {
  if (notify) (void)evtchn_.notify(tx_port_);
}

void SimNetfront::overrun_tx(RING_IDX ahead) noexcept {
  tx_.set_req_prod_raw(tx_.req_prod_pvt() + ahead);
  kick_tx(true);
}

Result<GrantRef> SimNetfront::grant_tx(std::span<const uint8_t> bytes, uint16_t offset, uint16_t& id) noexcept {
  if (tx_free_.empty()) return unexpected(EAGAIN);
  if (static_cast<size_t>(offset) + bytes.size() > kPageSize) return unexpected(EINVAL);
  id = tx_free_.back();
  TxSlot& s = tx_slots_[id];
  if (!bytes.empty()) std::memcpy(dom_.page(s.pfn) + offset, bytes.data(), bytes.size());
  auto ref = dom_.grant_access(opts_.backend, s.pfn, /*readonly=*/true);
  if (!ref) return unexpected(ref.error());
  tx_free_.pop_back();
  s.ref = *ref;
  s.busy = true;
  ++tx_in_flight_;
  return *ref;
}

Result<uint16_t> SimNetfront::send_raw_slot(std::span<const uint8_t> bytes, uint16_t grant_offset, uint16_t req_offset,
                                            uint16_t size) noexcept {
  uint16_t id = 0;
  XP_ASSIGN_OR_RETURN(const GrantRef ref, grant_tx(bytes, grant_offset, id));
  netif_tx_request r{};
  r.gref = ref;
  r.offset = req_offset;
  r.id = id;
  r.size = size;
  XP_TRY(send_raw({&r, 1}));
  return id;
}

Status SimNetfront::send(const TxFrame& f) noexcept {
  std::vector<uint16_t> sizes = f.slots;
  const size_t total = f.bytes.size();
  if (total == 0 || total > 0xffff) return unexpected(EINVAL);
  try {
    if (sizes.empty()) {
      size_t left = total;
      size_t room = kPageSize - f.first_offset;
      while (left > 0) {
        const size_t n = std::min(left, room);
        sizes.push_back(static_cast<uint16_t>(n));
        left -= n;
        room = kPageSize;
      }
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }
  size_t sum = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    sum += sizes[i];
    if ((i == 0 ? f.first_offset : 0u) + sizes[i] > kPageSize) return unexpected(EINVAL);
  }
  if (sum != total) return unexpected(EINVAL);
  const bool gso = f.gso_type != XEN_NETIF_GSO_TYPE_NONE;
  const unsigned extras = (gso ? 1u : 0u) + (f.has_hash ? 1u : 0u);
  if (tx_.free_slots() < sizes.size() + extras || tx_free_.size() < sizes.size()) return unexpected(EAGAIN);
  size_t off = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const uint16_t page_off = i == 0 ? f.first_offset : 0;
    uint16_t id = 0;
    XP_ASSIGN_OR_RETURN(const GrantRef ref, grant_tx({f.bytes.data() + off, sizes[i]}, page_off, id));
    netif_tx_request r{};
    r.gref = ref;
    r.offset = page_off;
    r.id = id;
    r.size = i == 0 ? static_cast<uint16_t>(total) : sizes[i];
    if (i + 1 < sizes.size()) r.flags |= NETTXF_more_data;
    if (i == 0) {
      if (f.csum_blank) r.flags |= NETTXF_csum_blank;
      if (f.data_validated) r.flags |= NETTXF_data_validated;
      if (extras > 0) r.flags |= NETTXF_extra_info;
    }
    (void)tx_.push(r);
    auto push_extra = [&](netif_extra_info e, bool more) {
      if (more) e.flags |= XEN_NETIF_EXTRA_FLAG_MORE;
      netif_tx_request raw{};
      std::memcpy(&raw, &e, sizeof(e));
      (void)tx_.push(raw);
    };
    if (i == 0 && gso) {
      netif_extra_info e{};
      e.type = XEN_NETIF_EXTRA_TYPE_GSO;
      e.u.gso.type = f.gso_type;
      e.u.gso.size = f.gso_size;
      push_extra(e, f.has_hash);
    }
    if (i == 0 && f.has_hash) {
      netif_extra_info e{};
      e.type = XEN_NETIF_EXTRA_TYPE_HASH;
      e.u.hash.type = f.hash_type;
      e.u.hash.algorithm = XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ;
      std::memcpy(e.u.hash.value, &f.hash_value, sizeof f.hash_value);  // LSB first (x86)
      push_extra(e, false);
    }
    off += sizes[i];
  }
  kick_tx(tx_.flush());
  return ok();
}

Status SimNetfront::send_multicast(uint8_t type, const uint8_t (&group)[6]) noexcept {
  uint16_t id = 0;
  XP_ASSIGN_OR_RETURN(GrantRef ref, grant_tx({}, 0, id));
  netif_tx_request req[2] = {};
  req[0].gref = ref;
  req[0].id = id;
  req[0].flags = NETTXF_extra_info;
  netif_extra_info e{};
  e.type = type;
  std::memcpy(e.u.mcast.addr, group, sizeof group);
  std::memcpy(&req[1], &e, sizeof(e));
  return send_raw(req);
}

Status SimNetfront::send_raw(std::span<const netif_tx_request> reqs) noexcept {
  if (tx_.free_slots() < reqs.size()) return unexpected(EAGAIN);
  for (const auto& r : reqs) (void)tx_.push(r);
  kick_tx(tx_.flush());
  return ok();
}

unsigned SimNetfront::post_rx(unsigned n) noexcept {
  unsigned done = 0;
  while (done < n && rx_.free_slots() > 0 && !rx_pool_.empty()) {
    const uint32_t pfn = rx_pool_.back();
    auto ref = dom_.grant_access(opts_.backend, pfn, /*readonly=*/false);
    if (!ref) break;
    rx_pool_.pop_back();
    const unsigned idx = rx_prod_ & (rx_.size() - 1);
    rx_slots_[idx] = {pfn, *ref, true};
    netif_rx_request r{};
    r.id = static_cast<uint16_t>(idx);
    r.gref = *ref;
    (void)rx_.push(r);
    ++rx_prod_;
    ++done;
  }
  rx_posted_ += done;
  if (done > 0 && rx_.flush()) (void)evtchn_.notify(rx_port_);
  return done;
}

void SimNetfront::release_page(uint32_t pfn, GrantRef ref) noexcept {
  if (dom_.end_access(ref)) {
    rx_pool_.push_back(pfn);
  } else {
    ++revoke_failures_;  // still in use by the backend: never reuse it
  }
}

unsigned SimNetfront::reap_tx(std::vector<netif_tx_response>& out) noexcept {
  unsigned n = 0;
  netif_tx_response rs[64];
  for (unsigned k; (k = tx_.take_responses(rs)) > 0;) {
    for (unsigned i = 0; i < k; ++i) {
      if (rs[i].status == NETIF_RSP_NULL) continue;
      if (rs[i].id < tx_slots_.size() && tx_slots_[rs[i].id].busy) {
        TxSlot& s = tx_slots_[rs[i].id];
        s.busy = false;
        --tx_in_flight_;
        if (dom_.end_access(s.ref)) {
          tx_free_.push_back(rs[i].id);
        } else {
          ++revoke_failures_;  // answered while still mapped: a backend bug
        }
      }
      try {
        out.push_back(rs[i]);
      } catch (...) {
      }
      ++n;
    }
  }
  return n;
}

unsigned SimNetfront::reap_rx(std::vector<RxFrame>& out) noexcept {
  unsigned frames = 0;
  netif_rx_response rs[64];
  for (unsigned k; (k = rx_.take_responses(rs)) > 0;) {
    for (unsigned i = 0; i < k; ++i) rx_pending_.push_back(rs[i]);
  }
  // Walk whole packets: first data slot, its extras, further data slots.
  size_t start = 0;
  for (;;) {
    size_t j = start;
    RxFrame f;
    bool complete = false;
    bool more_data = false;
    bool extras = false;
    bool first = true;
    while (j < rx_pending_.size()) {
      const netif_rx_response& r = rx_pending_[j];
      ++j;
      if (extras) {
        netif_extra_info e;
        std::memcpy(&e, &r, sizeof(e));
        if (e.type == XEN_NETIF_EXTRA_TYPE_GSO) {
          f.gso_type = e.u.gso.type;
          f.gso_size = e.u.gso.size;
        } else if (e.type == XEN_NETIF_EXTRA_TYPE_HASH) {
          f.has_hash = true;
          f.hash_type = e.u.hash.type;
          std::memcpy(&f.hash_value, e.u.hash.value, sizeof(f.hash_value));
        }
        extras = (e.flags & XEN_NETIF_EXTRA_FLAG_MORE) != 0;
      } else {
        if (r.status < 0) {
          f.error = r.status;
        } else {
          const RxSlot& s = rx_slots_[(rx_cons_ + (j - 1 - start)) & (rx_.size() - 1)];
          const auto* page = reinterpret_cast<const uint8_t*>(dom_.page(s.pfn));
          f.bytes.insert(f.bytes.end(), page + r.offset, page + r.offset + r.status);
        }
        if (first) {
          f.flags = r.flags;
          extras = (r.flags & NETRXF_extra_info) != 0;
          first = false;
        }
        more_data = (r.flags & NETRXF_more_data) != 0;
      }
      if (!extras && !more_data) {
        complete = true;
        break;
      }
    }
    if (!complete) break;
    // Release the packet's slots (data and extra alike) by ring index.
    for (size_t s = start; s < j; ++s) {
      RxSlot& slot = rx_slots_[rx_cons_ & (rx_.size() - 1)];
      ++rx_cons_;
      if (slot.posted) {
        slot.posted = false;
        --rx_posted_;
        release_page(slot.pfn, slot.ref);
      }
    }
    start = j;
    try {
      out.push_back(std::move(f));
    } catch (...) {
    }
    ++frames;
  }
  rx_pending_.erase(rx_pending_.begin(), rx_pending_.begin() + static_cast<ptrdiff_t>(start));
  return frames;
}

bool SimNetfront::arm() noexcept {
  const bool tx = tx_.final_check_responses();
  const bool rx = rx_.final_check_responses();
  return tx || rx;
}

bool SimNetfront::wait(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

}  // namespace xenpath::sim
