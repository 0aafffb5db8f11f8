#include "netback/net_queue.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace xenpath {

// ---------------------------------------------------------------------------
// VifQueue

namespace {

constexpr uint32_t kNoBurst = UINT32_MAX;
constexpr uint16_t kNone = UINT16_MAX;
constexpr size_t kMaxRxSegs = 64;  // segments of one packet we deliver without dropping it
// Bytes of a TX packet pulled into its head when its protocol headers go
// beyond the copied 128 (IPv6 extension headers, TCP options): as much as
// set_meta() can describe (l2 < 128, l3 < 512, l4 < 256), within a buffer.
constexpr size_t kMaxHeaderPull = 896;
// Bytes of a frame's headers hashed for the control ring's HASH extra
// (Ethernet + tags + IPv6 with extension headers + the TCP ports).
constexpr size_t kHashHeaderBytes = 256;

}  // namespace

// One consumed TX slot awaiting its response. `shared` is the DPDK shared
// info of the slot's attached page (at most one per slot); it lives here so
// it outlives every packet that references the page.
struct VifQueue::Pending {
  VifQueue* q = nullptr;
  uint16_t idx = 0;
  uint16_t id = 0;
  uint16_t nulls = 0;
  int16_t status = NETIF_RSP_OKAY;
  uint32_t burst = kNoBurst;
  uint16_t next = kNone;  // next waiter of the same burst
  ExtBufShared shared{};
};

// One TX map call's pages. Answered and unmapped together once no packet
// holds any of them.
struct VifQueue::TxBurst {
  GrantMapping map;
  uint32_t outstanding = 0;  // attached pages not yet released
  uint16_t waiters = kNone;  // slots answered after the unmap
  bool live = false;
};

struct VifQueue::TxWork {
  TxPlan plan;
  std::array<uint16_t, kMaxTxSlots> pend{};
  PacketBuf* pkt = nullptr;
  uint32_t burst = kNoBurst;
  uint32_t first_ref = 0;  // its first map piece in tx_refs_
  uint32_t maps = 0;
  bool failed = false;
};

VifQueue::VifQueue(NetWorker& worker, const Config& config, VifQueueStats& stats, HaltSink on_halt) noexcept
    : worker_(worker), config_(config), stats_(stats), on_halt_(std::move(on_halt)), log_(config.log_prefix) {}

Result<std::unique_ptr<VifQueue>> VifQueue::start(NetWorker& worker, const Config& config, VifQueueStats& stats,
                                                  HaltSink on_halt) noexcept {
  std::unique_ptr<VifQueue> q;
  try {
    q.reset(new VifQueue(worker, config, stats, std::move(on_halt)));
  } catch (...) {
    return unexpected(ENOMEM);
  }
  if (auto st = q->init(); !st) {
    q->teardown();
    return unexpected(st.error());
  }
  return q;
}

Status VifQueue::init() noexcept {
  if (config_.port == nullptr || config_.pool == nullptr || config_.burst == 0 || config_.burst > kMaxBurst ||
      config_.port_queue >= config_.port->tx_queues() || config_.port_queue >= config_.port->rx_queues() ||
      config_.rx_backlog == 0) {
    return unexpected(EINVAL);
  }
  if (!config_.zero_copy || !config_.port->caps().external_buffers) {
    // The port cannot be handed guest pages (a NIC would DMA from them
    // without their being DMA-mapped): copy every byte instead.
    config_.zero_copy = false;
    config_.tx_limits.copy_below = UINT16_MAX;
  }
  if (config_.pool->data_room() == 0) return unexpected(EINVAL);
  GrantTable& gt = worker_.grant_table();
  auto tm = gt.map(config_.frontend, {&config_.tx_ring_ref, 1}, /*writable=*/true);
  if (!tm) {
    log_.guest("cannot map the TX ring: {}", error_string(tm.error()));
    return unexpected(tm.error());
  }
  tx_ring_map_ = std::move(*tm);
  auto rm = gt.map(config_.frontend, {&config_.rx_ring_ref, 1}, /*writable=*/true);
  if (!rm) {
    log_.guest("cannot map the RX ring: {}", error_string(rm.error()));
    return unexpected(rm.error());
  }
  rx_ring_map_ = std::move(*rm);
  if (auto st = tx_.attach(tx_ring_map_.data(), kPageSize, &stats_.tx_ring); !st) {
    log_.guest("bad TX ring: {}", error_string(st.error()));
    return st;
  }
  if (auto st = rx_.attach(rx_ring_map_.data(), kPageSize, &stats_.rx_ring); !st) {
    log_.guest("bad RX ring: {}", error_string(st.error()));
    return st;
  }
  const unsigned burst = config_.burst;
  const unsigned tx_size = tx_.size();
  try {
    carry_.resize(tx_size);
    pend_.resize(tx_size);
    free_pend_.reserve(tx_size);
    for (unsigned i = tx_size; i-- > 0;) {
      pend_[i].q = this;
      pend_[i].idx = static_cast<uint16_t>(i);
      free_pend_.push_back(static_cast<uint16_t>(i));
    }
    done_words_ = (tx_size + 63) / 64;
    done_bits_.reset(new std::atomic<uint64_t>[done_words_]);
    for (unsigned i = 0; i < done_words_; ++i) done_bits_[i].store(0);
    bursts_.resize(tx_size);
    free_bursts_.reserve(tx_size);
    for (uint32_t i = tx_size; i-- > 0;) free_bursts_.push_back(i);
    work_.resize(burst);
    // A copied piece (<= a page) takes ceil(4096 / buffer room) segments.
    const size_t chunks = (kPageSize + config_.pool->data_room() - 1) / std::max<size_t>(config_.pool->data_room(), 1);
    tx_copies_.resize(static_cast<size_t>(burst) * kMaxTxPieces * chunks);
    tx_copy_owner_.resize(tx_copies_.size());
    tx_refs_.resize(static_cast<size_t>(burst) * kMaxTxSlots);
    tx_out_.resize(burst);
    tx_backlog_.resize(burst);

    rx_carry_.resize(rx_.size());
    rx_pkts_.resize(config_.rx_backlog);
    rx_info_.resize(config_.rx_backlog);
    if (config_.inboxes.size() > 1) {
      if (config_.queue_index >= config_.inboxes.size()) return unexpected(EINVAL);
      steer_out_.resize(config_.inboxes.size());
    }
    rx_copies_.resize(static_cast<size_t>(rx_.size()) * 2 + kMaxRxSegs);
    rx_copy_owner_.resize(rx_copies_.size());
    rx_rsps_.resize(rx_.size());
    rx_batch_ = std::make_unique<RxBatch>(rx_copies_, rx_copy_owner_, rx_rsps_);
    rx_segs_.resize(kMaxRxSegs);
    rx_scratch_.resize(std::max<size_t>(kMaxRxSegs, rx_.size()));
  } catch (...) {
    return unexpected(ENOMEM);
  }
  rate_.start(config_.rate, RateLimiter::Clock::now());

  done_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (done_fd_ < 0) return unexpected_errno();
  XP_TRY(worker_.reactor().watch_fd(done_fd_, EPOLLIN, [this](uint32_t) {
    uint64_t v;
    while (::read(done_fd_, &v, sizeof v) < 0 && errno == EINTR) {
    }
  }));
  watching_done_ = true;

  EventChannel& ev = worker_.event_channel();
  XP_ASSIGN_OR_RETURN(tx_port_, ev.bind_interdomain(config_.frontend, config_.tx_remote_port));
  tx_bound_ = true;
  worker_.add_port(tx_port_, this);
  if (config_.rx_remote_port != config_.tx_remote_port) {
    XP_ASSIGN_OR_RETURN(rx_port_, ev.bind_interdomain(config_.frontend, config_.rx_remote_port));
    rx_bound_ = true;
    worker_.add_port(rx_port_, this);
  } else {
    rx_port_ = tx_port_;
  }
  if (!steer_out_.empty()) {
    SteerInbox* inbox = config_.inboxes[config_.queue_index];
    XP_TRY(worker_.reactor().watch_fd(inbox->fd(), EPOLLIN, [inbox](uint32_t) { inbox->clear_wakeup(); }));
    watching_inbox_ = true;
  }
  rx_fd_ = config_.port->rx_wait_fd(config_.port_queue);
  std::chrono::microseconds period = config_.port_poll;
  if (rx_fd_ >= 0) {
    rx_fd_watched_ = worker_.reactor().watch_fd(rx_fd_, EPOLLIN, [](uint32_t) {}).has_value();
    if (!rx_fd_watched_) {
      log_.warn("cannot watch the port's receive fd: polling it instead");
      rx_fd_ = -1;
    } else {
      // Credit replenish has its own exact timer (arm_credit_timer).
      period = std::max<std::chrono::microseconds>(period, kHousekeepingPeriod);
    }
  }
  auto t = worker_.reactor().add_timer(period, [] {});
  if (t) {
    timer_ = *t;
    have_timer_ = true;
  }
  worker_.reactor().add_poller(this);
  polling_ = true;
  return ok();
}

void VifQueue::teardown(bool keep_tx_pages) noexcept {
  if (polling_) worker_.reactor().remove_poller(this);
  polling_ = false;
  if (have_timer_) worker_.reactor().cancel_timer(timer_);
  have_timer_ = false;
  if (have_credit_timer_) worker_.reactor().cancel_timer(credit_timer_);
  have_credit_timer_ = false;
  credit_at_ = {};
  if (rx_fd_watched_) worker_.reactor().unwatch_fd(rx_fd_);
  rx_fd_watched_ = false;
  if (watching_inbox_) worker_.reactor().unwatch_fd(config_.inboxes[config_.queue_index]->fd());
  watching_inbox_ = false;
  for (auto& b : steer_out_) b.release();
  EventChannel& ev = worker_.event_channel();
  if (rx_bound_) {
    worker_.remove_port(rx_port_);
    (void)ev.unbind(rx_port_);
  }
  if (tx_bound_) {
    worker_.remove_port(tx_port_);
    (void)ev.unbind(tx_port_);
  }
  tx_bound_ = rx_bound_ = false;
  for (size_t i = 0; i < rx_len_; ++i) pkt::free(rx_pkts_[(rx_head_ + i) % rx_pkts_.size()]);
  rx_len_ = 0;
  for (size_t i = 0; i < tx_backlog_len_; ++i) pkt::free(tx_backlog_[i]);
  tx_backlog_len_ = 0;
  if (watching_done_) worker_.reactor().unwatch_fd(done_fd_);
  watching_done_ = false;
  tx_ring_map_.reset();
  rx_ring_map_.reset();
  stopped_ = true;
  if (keep_tx_pages) return;
  if (done_fd_ >= 0) ::close(done_fd_);
  done_fd_ = -1;
  for (auto& b : bursts_) b.map.reset();
}

void VifQueue::abandon() noexcept {
  if (stopped_) return;
  halted_ = true;
  teardown(/*keep_tx_pages=*/true);
}

Status VifQueue::stop() noexcept {
  if (stopped_) return ok();
  halted_ = true;  // consume nothing more
  (void)publish();
  for (size_t i = 0; i < tx_backlog_len_; ++i) pkt::free(tx_backlog_[i]);
  tx_backlog_len_ = 0;
  // Packets waiting for the guest may hold guest pages (ours, when the
  // wire loops back; another VIF's): give them back, and what the port
  // has queued for us too (bounded).
  while (rx_len_ > 0) {
    pkt::free(rx_pkts_[rx_head_]);
    pop_rx();
  }
  for (auto& b : steer_out_) b.release();
  if (!steer_out_.empty()) (void)config_.inboxes[config_.queue_index]->discard();
  for (unsigned i = 0; i < 64; ++i) {
    PacketBuf* in[kMaxBurst];
    const size_t n = config_.port->rx_burst(config_.port_queue, in);
    if (n == 0) break;
    pkt::free_bulk({in, n});
  }
  (void)reap_tx();
  (void)publish();
  // A page still attached somewhere may be read until its packet is freed;
  // the free callback (any thread) also still touches this queue.
  if (attached_ != 0 || in_callback_.load(std::memory_order_seq_cst) != 0) return unexpected(EBUSY);
  teardown();
  return ok();
}

VifQueue::~VifQueue() {
  if (!stopped_) {
    if (attached_ != 0) log_.error("destroyed with {} guest pages still attached to packets", attached_);
    teardown();
  }
}

void VifQueue::halt(const char* why) noexcept {
  if (halted_) return;
  halted_ = true;
  stats_.tx_ring.halted.set(1);
  log_.error("frontend misbehaved ({}): queue halted", why);
  if (on_halt_) on_halt_(EPROTO);
}

void VifQueue::on_event(EvtchnPort local) noexcept {
  if (local == tx_port_) {
    stats_.tx_ring.events_received.add();
    masked_tx_ = true;
  }
  if (local == rx_port_ && rx_port_ != tx_port_) {
    stats_.rx_ring.events_received.add();
    masked_rx_ = true;
  }
}

// --------------------------------------------------------------------- TX

void VifQueue::page_released(void* /*addr*/, void* opaque) {
  // Any thread. Only the bitmap and the eventfd: the owner does the rest.
  auto* p = static_cast<Pending*>(opaque);
  VifQueue* q = p->q;
  q->in_callback_.fetch_add(1, std::memory_order_seq_cst);
  q->done_bits_[p->idx / 64].fetch_or(uint64_t{1} << (p->idx % 64), std::memory_order_seq_cst);
  // Dekker pair with arm(): either it sees the bit, or we see it asleep.
  if (q->sleeping_.exchange(false, std::memory_order_seq_cst)) {
    const uint64_t one = 1;
    while (::write(q->done_fd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
  q->in_callback_.fetch_sub(1, std::memory_order_seq_cst);
}

bool VifQueue::reap_tx() noexcept {
  bool any = false;
  for (unsigned w = 0; w < done_words_; ++w) {
    uint64_t bits = done_bits_[w].exchange(0, std::memory_order_seq_cst);
    while (bits != 0) {
      const unsigned b = static_cast<unsigned>(__builtin_ctzll(bits));
      bits &= bits - 1;
      Pending& p = pend_[w * 64 + b];
      any = true;
      --attached_;
      TxBurst& burst = bursts_[p.burst];
      if (--burst.outstanding == 0) finish_burst(p.burst);
    }
  }
  return any;
}

void VifQueue::finish_burst(uint32_t b) noexcept {
  TxBurst& burst = bursts_[b];
  burst.map.reset();  // one unmap for the whole burst
  stats_.tx_unmap_calls.add();
  for (uint16_t i = burst.waiters; i != kNone;) {
    Pending& p = pend_[i];
    const uint16_t next = p.next;
    respond_tx(p.id, p.status, p.nulls);
    free_pending(i);
    i = next;
  }
  burst.waiters = kNone;
  burst.live = false;
  free_bursts_.push_back(b);
}

void VifQueue::respond_tx(uint16_t id, int16_t status, uint16_t nulls) noexcept {
  netif_tx_response r{};
  r.id = id;
  r.status = status;
  if (status != NETIF_RSP_OKAY) stats_.tx_ring.error_responses.add();
  (void)tx_.push_response(r);
  r.id = 0;
  r.status = NETIF_RSP_NULL;
  for (uint16_t i = 0; i < nulls; ++i) (void)tx_.push_response(r);
  tx_responses_ = true;
}

uint16_t VifQueue::alloc_pending() noexcept {
  const uint16_t i = free_pend_.back();
  free_pend_.pop_back();
  Pending& p = pend_[i];
  p.status = NETIF_RSP_OKAY;
  p.burst = kNoBurst;
  p.next = kNone;
  p.nulls = 0;
  return i;
}

void VifQueue::free_pending(uint16_t idx) noexcept { free_pend_.push_back(idx); }

bool VifQueue::flush_tx_backlog() noexcept {
  if (tx_backlog_len_ == 0) return false;
  const size_t n = config_.port->tx_burst(config_.port_queue, {tx_backlog_.data(), tx_backlog_len_});
  if (n > 0) {
    std::copy(tx_backlog_.begin() + static_cast<ptrdiff_t>(n),
              tx_backlog_.begin() + static_cast<ptrdiff_t>(tx_backlog_len_), tx_backlog_.begin());
    tx_backlog_len_ -= n;
  }
  return n > 0;
}

unsigned VifQueue::parse_tx_burst(unsigned& works) noexcept {
  if (carry_len_ < carry_.size()) {
    const unsigned room = std::min<unsigned>(config_.burst, static_cast<unsigned>(carry_.size()) - carry_len_);
    auto n = tx_.consume({carry_.data() + carry_len_, room});
    if (!n) {
      halt("TX ring producer overflow");
      return 0;
    }
    carry_len_ += *n;
  }
  const bool more_published = tx_.unconsumed() > 0;
  const auto now = RateLimiter::Clock::now();
  unsigned pos = 0;
  while (pos < carry_len_ && works < config_.burst) {
    TxWork& w = work_[works];
    const std::span<const netif_tx_request> rest(carry_.data() + pos, carry_len_ - pos);
    parse_tx(rest, more_published, config_.tx_limits, w.plan);
    const TxPlan& p = w.plan;
    if (p.verdict == TxVerdict::kNeedMore) break;
    if (p.verdict == TxVerdict::kFatal) {
      halt(tx_error_name(p.error));
      return pos;
    }
    if (p.verdict == TxVerdict::kPacket && free_pend_.size() < p.n_slots) break;  // cannot happen: slots <= ring
    // Credit is charged per request, as Linux does, before acting on it.
    if (!rate_.admit(rest[0].size, now)) {
      stats_.tx_rate_limited.add();
      arm_credit_timer();
      break;
    }
    pos += p.consumed;
    switch (p.verdict) {
      case TxVerdict::kDrop:
        log_.guest("TX packet dropped: {}", tx_error_name(p.error));
        stats_.tx_dropped.add();
        for (unsigned s = 0; s < p.n_slots; ++s) respond_tx(p.slots[s].id, NETIF_RSP_ERROR, p.slots[s].nulls);
        break;
      case TxVerdict::kMulticast: {
        stats_.tx_multicast.add();
        bool okay = true;
        if (p.mcast_type == XEN_NETIF_EXTRA_TYPE_MCAST_ADD) okay = mcast_.add(p.mcast_addr);
        else mcast_.del(p.mcast_addr);
        if (config_.on_multicast) config_.on_multicast(p.mcast_type, p.mcast_addr);
        respond_tx(p.slots[0].id, okay ? NETIF_RSP_OKAY : NETIF_RSP_ERROR, p.slots[0].nulls);
        break;
      }
      case TxVerdict::kPacket:
        for (unsigned s = 0; s < p.n_slots; ++s) {
          const uint16_t i = alloc_pending();
          pend_[i].id = p.slots[s].id;
          pend_[i].nulls = p.slots[s].nulls;
          w.pend[s] = i;
        }
        w.pkt = nullptr;
        w.burst = kNoBurst;
        w.failed = false;
        w.maps = 0;
        ++works;
        break;
      default:
        break;
    }
  }
  if (pos > 0) {
    std::copy(carry_.begin() + pos, carry_.begin() + carry_len_, carry_.begin());
    carry_len_ -= pos;
  }
  return pos;
}

bool VifQueue::map_tx(unsigned works) noexcept {
  uint32_t nrefs = 0;
  for (unsigned i = 0; i < works; ++i) {
    TxWork& w = work_[i];
    w.first_ref = nrefs;
    for (const auto& pc : w.plan.piece_span()) {
      if (pc.kind == TxPiece::kMap) tx_refs_[nrefs++] = pc.gref;
    }
    w.maps = nrefs - w.first_ref;
  }
  if (nrefs == 0) return true;
  GrantTable& gt = worker_.grant_table();
  auto take_burst = [&](GrantMapping&& m) {
    const uint32_t b = free_bursts_.back();
    free_bursts_.pop_back();
    bursts_[b].map = std::move(m);
    bursts_[b].outstanding = 0;
    bursts_[b].waiters = kNone;
    bursts_[b].live = true;
    return b;
  };
  stats_.tx_map_calls.add();
  auto m = gt.map(config_.frontend, {tx_refs_.data(), nrefs}, /*writable=*/false);
  if (m) {
    const uint32_t b = take_burst(std::move(*m));
    for (unsigned i = 0; i < works; ++i) {
      if (work_[i].maps != 0) work_[i].burst = b;
    }
    return true;
  }
  // One bad grant fails the batch: map packet by packet so only its packet fails.
  log_.guest("TX batch map of {} pages failed ({}): mapping per packet", nrefs, error_string(m.error()));
  for (unsigned i = 0; i < works; ++i) {
    TxWork& w = work_[i];
    if (w.maps == 0) continue;
    stats_.tx_map_calls.add();
    auto one = gt.map(config_.frontend, {tx_refs_.data() + w.first_ref, w.maps}, false);
    if (one) {
      w.burst = take_burst(std::move(*one));
      w.first_ref = 0;  // pages of its own mapping
    } else {
      w.failed = true;
    }
  }
  return false;
}

void VifQueue::execute_tx(unsigned works) noexcept {
  (void)map_tx(works);
  // Build each packet in piece order: copy destinations in pool buffers,
  // mapped pages attached behind them.
  unsigned ncopies = 0;
  PacketPool& pool = *config_.pool;
  for (unsigned i = 0; i < works; ++i) {
    TxWork& w = work_[i];
    const TxPlan& plan = w.plan;
    // Every slot with a mapped page waits for its burst's unmap, whatever
    // becomes of the packet.
    for (unsigned s = 0; s < plan.n_slots; ++s) {
      Pending& p = pend_[w.pend[s]];
      bool mapped = false;
      for (const auto& pc : plan.piece_span()) mapped |= (pc.slot == s && pc.kind == TxPiece::kMap);
      if (mapped && w.burst != kNoBurst) p.burst = w.burst;
    }
    if (w.failed) continue;
    w.pkt = pool.alloc();
    if (w.pkt == nullptr) {
      w.failed = true;
      continue;
    }
    uint32_t map_k = 0;
    for (const auto& pc : plan.piece_span()) {
      if (pc.kind == TxPiece::kMap) {
        Pending& p = pend_[w.pend[pc.slot]];
        ExtBuf e;
        e.addr = bursts_[w.burst].map.page(w.first_ref + map_k++) + pc.offset;
        e.len = pc.len;
        e.shared = &p.shared;
        e.free_fn = &VifQueue::page_released;
        e.opaque = &p;
        if (!pool.attach_external(w.pkt, e)) {
          w.failed = true;
          break;
        }
        ++attached_;
        ++bursts_[w.burst].outstanding;
        stats_.tx_mapped_pages.add();
        continue;
      }
      // Copied pieces land in pool buffers, in chunks of at most a buffer.
      for (uint16_t done = 0; done < pc.len && !w.failed;) {
        const uint16_t n = static_cast<uint16_t>(std::min<size_t>(pc.len - done, pool.data_room()));
        auto dst = pool.append_owned(w.pkt, n);
        if (dst.empty() || ncopies == tx_copies_.size()) {
          w.failed = true;
          break;
        }
        GrantCopySegment& c = tx_copies_[ncopies];
        c = GrantCopySegment{};
        c.source.foreign.ref = pc.gref;
        c.source.foreign.offset = static_cast<uint16_t>(pc.offset + done);
        c.source.foreign.domid = config_.frontend;
        c.dest.virt = dst.data();
        c.len = n;
        c.flags = kCopySourceGref;
        tx_copy_owner_[ncopies++] = static_cast<uint16_t>(i);
        done = static_cast<uint16_t>(done + n);
      }
      if (w.failed) break;
    }
  }
  if (ncopies > 0) {
    stats_.tx_copy_calls.add();
    auto r = worker_.grant_table().copy({tx_copies_.data(), ncopies});
    for (unsigned c = 0; c < ncopies; ++c) {
      TxWork& w = work_[tx_copy_owner_[c]];
      if (!r || tx_copies_[c].status != GNTST_okay) w.failed = true;
      else stats_.tx_copied_bytes.add(tx_copies_[c].len);
    }
  }

  size_t nout = 0;
  for (unsigned i = 0; i < works; ++i) {
    TxWork& w = work_[i];
    const TxPlan& plan = w.plan;
    const int16_t status = w.failed ? NETIF_RSP_ERROR : NETIF_RSP_OKAY;
    if (w.failed) {
      log_.guest("TX packet of {} bytes: a grant of it failed", plan.size);
      stats_.tx_dropped.add();
      pkt::free(w.pkt);  // attached pages come back through their callback
    } else {
      if (finish_tx_meta(w.pkt, plan)) {
        tx_out_[nout++] = w.pkt;
        stats_.tx_packets.add();
        stats_.tx_bytes.add(plan.size);
      } else {
        stats_.tx_port_dropped.add();
        pkt::free(w.pkt);
      }
    }
    w.pkt = nullptr;
    // Slots without a mapped page are answered now; the others when their
    // burst is unmapped.
    for (unsigned s = 0; s < plan.n_slots; ++s) {
      const uint16_t idx = w.pend[s];
      Pending& p = pend_[idx];
      p.status = status;
      if (p.burst == kNoBurst) {
        respond_tx(p.id, p.status, p.nulls);
        free_pending(idx);
      } else {
        p.next = bursts_[p.burst].waiters;
        bursts_[p.burst].waiters = idx;
      }
    }
  }
  // Bursts none of whose pages got attached are done already.
  for (unsigned i = 0; i < works; ++i) {
    const uint32_t b = work_[i].burst;
    if (b != kNoBurst && bursts_[b].live && bursts_[b].outstanding == 0) finish_burst(b);
  }
  if (nout > 0) {
    const size_t taken = config_.port->tx_burst(config_.port_queue, {tx_out_.data(), nout});
    for (size_t i = taken; i < nout; ++i) tx_backlog_[tx_backlog_len_++] = tx_out_[i];
  }
}

bool VifQueue::finish_tx_meta(PacketBuf* p, const TxPlan& plan) noexcept {
  PacketMeta m;
  if (plan.data_validated) m.flags |= PacketMeta::kL4CsumVerified;
  if (plan.has_hash) {
    // The guest's hash (its own Toeplitz, its own key) as Linux's
    // skb_set_hash: only which fields it covers is kept.
    const bool l4 = plan.hash_type == _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP ||
                    plan.hash_type == _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;
    m.hash_type = l4 ? PacketMeta::kHashL4 : PacketMeta::kHashL3;
    m.hash = plan.hash_value;
  }
  if (plan.csum_blank || plan.gso_type != XEN_NETIF_GSO_TYPE_NONE) {
    // A checksum to fill in or a segmentation needs the protocol headers
    // (Linux's checksum_setup); a packet without them is dropped. Only the
    // first 128 bytes were copied into the head: headers running beyond
    // them are pulled in (copied, so the guest cannot change them under
    // us afterwards), as Linux pulls past XEN_NETBACK_TX_COPY_LEN.
    bool ok = pkt::parse_headers(p, m);
    // Pull in steps, so a common long header costs a short copy.
    for (const size_t want : {size_t{256}, size_t{512}, kMaxHeaderPull}) {
      if (ok || pkt::segment_count(p) < 2 || !pkt::pull_up(p, want)) break;
      ok = pkt::parse_headers(p, m);
      if (ok) stats_.tx_headers_pulled.add();
    }
    if (!ok) return false;
    m.flags |= PacketMeta::kL4CsumPending;
    if (plan.gso_type != XEN_NETIF_GSO_TYPE_NONE) {
      const bool v4 = plan.gso_type == XEN_NETIF_GSO_TYPE_TCPV4;
      if (!m.has(PacketMeta::kTcp) || !m.has(v4 ? PacketMeta::kIpv4 : PacketMeta::kIpv6)) return false;
      m.flags |= PacketMeta::kSegment;
      m.mss = plan.gso_size;
    }
  }
  return pkt::set_meta(p, m);
}

bool VifQueue::tx_poll() noexcept {
  bool work = flush_tx_backlog();
  if (tx_backlog_len_ != 0) return work;  // the port pushes back: so do we
  unsigned works = 0;
  const unsigned parsed = parse_tx_burst(works);
  tx_again_ = works == config_.burst;
  if (works > 0) execute_tx(works);
  return work || parsed > 0;
}

// --------------------------------------------------------------------- RX

void VifQueue::set_rate(const RateSpec& spec) noexcept {
  config_.rate = spec;
  // A pending replenish happens now (the refused packet is retried in this
  // iteration's poll): its timer has nothing left to do.
  rate_.update(spec, RateLimiter::Clock::now());
  if (credit_at_ != RateLimiter::Clock::time_point{} && have_credit_timer_) {
    (void)worker_.reactor().arm_timer(credit_timer_, {});
    credit_at_ = {};
  }
}

// Credit ran out: wake exactly when it is replenished (Linux's
// tx_credit_callback), rather than re-checking periodically. The packet
// stays in the ring (or the carry) meanwhile and arm() does not wake for
// the TX ring while limited.
void VifQueue::arm_credit_timer() noexcept {
  const auto at = rate_.replenish_at();
  if (!at || *at == credit_at_ || credit_timer_failed_) return;  // armed for it already
  if (!have_credit_timer_) {
    auto t = worker_.reactor().add_oneshot_timer([this] {
      stats_.tx_credit_timer.add();
      credit_at_ = {};
      // The reactor polls us in this iteration: the refused packet is
      // admitted then.
    });
    if (!t) {
      // No timer: the periodic housekeeping wake-up still retries.
      log_.warn("cannot create the rate credit timer: {}; retrying on the periodic wake-up",
                error_string(t.error()));
      credit_timer_failed_ = true;
      return;
    }
    credit_timer_ = *t;
    have_credit_timer_ = true;
  }
  if (worker_.reactor().arm_timer(credit_timer_, *at)) credit_at_ = *at;
}

void VifQueue::apply_multicast(uint8_t type, const MulticastFilter::Mac& addr) noexcept {
  if (type == XEN_NETIF_EXTRA_TYPE_MCAST_ADD) (void)mcast_.add(addr);
  else if (type == XEN_NETIF_EXTRA_TYPE_MCAST_DEL) mcast_.del(addr);
}

void VifQueue::push_rx(PacketBuf* p, const FrameHash* hash, RateLimiter::Clock::time_point now) noexcept {
  if (rx_len_ == rx_pkts_.size()) {
    stats_.rx_dropped.add();
    pkt::free(p);
    return;
  }
  // The guest's lack of buffers is measured from when a packet starts
  // waiting for them.
  if (rx_len_ == 0) rx_progress_ = now;
  const size_t slot = (rx_head_ + rx_len_) % rx_pkts_.size();
  rx_pkts_[slot] = p;
  RxInfo& info = rx_info_[slot];
  info.queued = now;
  info.has_hash = hash != nullptr;
  if (hash != nullptr) info.hash = *hash;
  ++rx_len_;
}

void VifQueue::pop_rx() noexcept {
  rx_head_ = (rx_head_ + 1) % rx_pkts_.size();
  --rx_len_;
}

void VifQueue::queue_rx(PacketBuf* p, RateLimiter::Clock::time_point now) noexcept {
  if (config_.multicast_control) {
    MulticastFilter::Mac dst{};
    if (pkt::copy_out(p, 0, {reinterpret_cast<std::byte*>(dst.data()), dst.size()}) != dst.size() ||
        !mcast_.accepts(dst)) {
      stats_.rx_dropped.add();
      pkt::free(p);
      return;
    }
  }
  // The hash of the whole frame, computed once (segments share the flow).
  FrameHash hash;
  bool has_hash = false;
  if (hash_ && hash_->algorithm() == XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ) {
    uint8_t hdr[kHashHeaderBytes];
    const size_t n = pkt::copy_out(p, 0, {reinterpret_cast<std::byte*>(hdr), sizeof hdr});
    if (auto h = hash_->hash_frame({hdr, n})) {
      hash = *h;
      has_hash = true;
    }
  }
  const FrameHash* hp = has_hash ? &hash : nullptr;
  if (has_hash && !steer_out_.empty()) {
    // The guest's mapping decides which of its queues gets the flow.
    const uint32_t target = hash_->queue_for(hash.value);
    if (target != config_.queue_index && target < steer_out_.size()) {
      SteeredRx& b = steer_out_[target];
      b.pkts[b.n] = p;
      b.hashes[b.n] = hash;
      if (++b.n == SteeredRx::kMax) {
        if (!config_.inboxes[target]->push(std::move(b))) stats_.rx_dropped.add(SteeredRx::kMax);
        b.n = 0;
      }
      return;
    }
  }
  admit_rx(p, hp, now);
}

void VifQueue::flush_steered() noexcept {
  for (size_t t = 0; t < steer_out_.size(); ++t) {
    SteeredRx& b = steer_out_[t];
    if (b.n == 0) continue;
    const unsigned n = b.n;
    // A refused batch (out of memory) frees its packets.
    if (!config_.inboxes[t]->push(std::move(b))) stats_.rx_dropped.add(n);
    b.n = 0;
  }
}

bool VifQueue::take_steered() noexcept {
  if (steer_out_.empty()) return false;
  SteerInbox* inbox = config_.inboxes[config_.queue_index];
  if (inbox->empty()) return false;
  const auto now = RateLimiter::Clock::now();
  // Bounded: a few batches per iteration.
  const size_t got = inbox->drain(
      [&](SteeredRx&& b) {
        for (unsigned i = 0; i < b.n; ++i) admit_rx(b.pkts[i], &b.hashes[i], now);
        b.n = 0;  // every packet is ours now
      },
      4);
  return got > 0;
}

void VifQueue::admit_rx(PacketBuf* p, const FrameHash* hp, RateLimiter::Clock::time_point now) noexcept {
  if (rx_stalled_) {
    // Carrier off: what the host sends a stalled guest is dropped here
    // rather than held (Linux stops the vif's queue; the stack drops).
    stats_.rx_stall_dropped.add();
    pkt::free(p);
    return;
  }
  const PacketMeta m = pkt::meta(p);
  // Whether the guest takes a blank L4 checksum of this address family.
  const bool csum_offload = m.has(PacketMeta::kIpv6) ? config_.rx_ipv6_csum_offload : config_.rx_csum_offload;
  if (m.has(PacketMeta::kSegment)) {
    const bool supported = (m.has(PacketMeta::kIpv4) && config_.rx_gso_tcpv4) ||
                           (m.has(PacketMeta::kIpv6) && config_.rx_gso_tcpv6);
    if (!supported) {
      // The frontend cannot take it whole: cut it here.
      auto n = config_.pool->segment(p, {rx_scratch_.data(), kMaxRxSegs});
      if (!n) {
        stats_.rx_dropped.add();
        pkt::free(p);
        return;
      }
      if (*n > 0) {
        pkt::free(p);  // the segments hold their own references
        stats_.rx_gso_segmented.add();
        for (size_t i = 0; i < *n; ++i) {
          PacketBuf* s = rx_scratch_[i];
          // New lengths: the IPv4 header checksum is always redone here; the
          // L4 one too for a frontend without checksum offload, else its
          // partial form (pseudo-header) is rewritten for csum_blank.
          const bool ok = csum_offload ? pkt::complete_checksums(s, false) && pkt::prepare_partial_checksum(s)
                                       : pkt::complete_checksums(s, true);
          if (!ok || (!config_.rx_sg && pkt::length(s) > kPageSize)) {
            stats_.rx_dropped.add();
            pkt::free(s);
            continue;
          }
          push_rx(s, hp, now);
        }
        return;
      }
    }
  }
  // A frontend without feature-sg takes one slot per packet (Linux caps
  // such a vif's MTU at 1500).
  if (!config_.rx_sg && pkt::length(p) > kPageSize) {
    stats_.rx_dropped.add();
    pkt::free(p);
    return;
  }
  const PacketMeta now_meta = pkt::meta(p);
  // A guest never fills in an IPv4 header checksum; the L4 one only with
  // checksum offload.
  bool ok = true;
  if (now_meta.has(PacketMeta::kIpCsumPending)) ok = pkt::complete_checksums(p, false);
  if (ok && now_meta.has(PacketMeta::kL4CsumPending) && !csum_offload) ok = pkt::complete_checksums(p, true);
  if (!ok) {
    stats_.rx_dropped.add();
    pkt::free(p);
    return;
  }
  push_rx(p, hp, now);
}

void VifQueue::fetch_rx() noexcept {
  // A stalled guest's packets are dropped as they come, so the port is
  // drained at full burst; otherwise only as far as the backlog has room.
  const size_t room = rx_stalled_ ? config_.burst : std::min<size_t>(rx_pkts_.size() - rx_len_, config_.burst);
  if (room == 0) return;  // the guest is not taking: the port queue backs up and drops
  PacketBuf* in[kMaxBurst];
  size_t n = config_.port->rx_burst(config_.port_queue, {in, room});
  if (n == 0) return;
  if (config_.rx_gro && config_.rx_gso_tcpv4 && config_.rx_csum_offload && config_.rx_sg && n > 1) {
    pkt::CoalesceStats cs;
    pkt::CoalesceOptions co;
    co.max_segments = static_cast<uint16_t>(kMaxRxSegs);
    n = pkt::coalesce_tcp({in, n}, co, &cs);
    stats_.rx_gro_packets.add(cs.merged_packets);
    stats_.rx_gro_merged.add(cs.merged_frames);
  }
  const auto now = RateLimiter::Clock::now();
  for (size_t i = 0; i < n; ++i) queue_rx(in[i], now);
  flush_steered();
}

bool VifQueue::check_rx_stall(RateLimiter::Clock::time_point now) noexcept {
  // Buffers the guest posted and we have not used yet.
  const bool posted = rx_carry_len_ > 0 || rx_.unconsumed() > 0;
  if (rx_stalled_) {
    if (!posted) return false;
    rx_stalled_ = false;
    stats_.rx_stalled.set(0);
    rx_progress_ = now;
    log_.info("guest RX resumed: it posts buffers again (carrier on)");
    return true;
  }
  bool work = false;
  // Packets older than the drain timeout are dropped (FIFO: the oldest
  // is at the head), so a slow guest cannot hold host memory for long.
  while (rx_len_ > 0 && now - rx_info_[rx_head_].queued >= config_.rx_drain_timeout) {
    pkt::free(rx_pkts_[rx_head_]);
    pop_rx();
    stats_.rx_expired.add();
    work = true;
  }
  if (config_.rx_stall_timeout.count() > 0 && rx_len_ > 0 && !posted &&
      now - rx_progress_ >= config_.rx_stall_timeout) {
    rx_stalled_ = true;
    stats_.rx_stalls.add();
    stats_.rx_stalled.set(1);
    const size_t dropped = rx_len_;
    while (rx_len_ > 0) {
      pkt::free(rx_pkts_[rx_head_]);
      pop_rx();
    }
    stats_.rx_stall_dropped.add(dropped);
    // Once per stall (not per packet): the guest may stay like this for good.
    log_.warn("guest RX stalled: no buffer posted for {} ms; {} queued packets dropped, carrier off",
              config_.rx_stall_timeout.count(), dropped);
    work = true;
  }
  return work;
}

bool VifQueue::deliver_rx() noexcept {
  if (rx_len_ == 0) return false;
  if (rx_carry_len_ < rx_carry_.size()) {
    auto n = rx_.consume({rx_carry_.data() + rx_carry_len_, rx_carry_.size() - rx_carry_len_});
    if (!n) {
      halt("RX ring producer overflow");
      return false;
    }
    rx_carry_len_ += *n;
  }
  RxBatch& batch = *rx_batch_;
  batch.reset({rx_carry_.data(), rx_carry_len_}, config_.frontend);
  size_t planned = 0;  // packets moved to rx_scratch_ for freeing after the copy
  bool dropped = false;
  rx_again_ = false;
  while (rx_len_ > 0 && planned < rx_scratch_.size()) {
    PacketBuf* p = rx_pkts_[rx_head_];
    const RxInfo& info = rx_info_[rx_head_];
    RxPacket rp;
    if (info.has_hash) {
      rp.has_hash = true;
      rp.hash_type = info.hash.type;
      rp.hash_value = info.hash.value;
    }
    RxVerdict v = RxVerdict::kTooBig;
    if (pkt::segment_count(p) <= rx_segs_.size()) {
      const size_t ns = pkt::segments(p, rx_segs_);
      rp.segs = {rx_segs_.data(), ns};
      const PacketMeta m = pkt::meta(p);
      rp.csum_blank = m.has(PacketMeta::kL4CsumPending);
      rp.data_validated = m.has(PacketMeta::kL4CsumVerified);
      if (m.has(PacketMeta::kSegment) && m.mss != 0) {
        rp.gso_type = m.has(PacketMeta::kIpv4) ? XEN_NETIF_GSO_TYPE_TCPV4 : XEN_NETIF_GSO_TYPE_TCPV6;
        rp.gso_size = m.mss;
      }
      v = batch.add(rp);
    }
    if (v == RxVerdict::kNoSlots) break;
    if (v == RxVerdict::kBatchFull) {
      rx_again_ = true;
      break;
    }
    pop_rx();
    if (v == RxVerdict::kPlanned) {
      rx_scratch_[planned++] = p;
    } else {
      stats_.rx_dropped.add();
      pkt::free(p);
      dropped = true;
    }
  }
  if (rx_len_ > 0 && planned == rx_scratch_.size()) rx_again_ = true;
  if (batch.requests_used() == 0) return dropped;
  if (!batch.copies().empty()) {
    stats_.rx_copy_calls.add();
    auto r = worker_.grant_table().copy(batch.copies());
    if (!r) {
      for (auto& c : batch.copies()) c.status = GNTST_general_error;
    }
    const unsigned failed = batch.apply_copy_status();
    if (failed != 0) {
      stats_.rx_copy_failures.add(failed);
      log_.guest("RX: {} grant copies into the guest failed", failed);
    }
  }
  for (const auto& rsp : batch.responses()) (void)rx_.push_response(rsp);
  rx_responses_ = true;
  stats_.rx_packets.add(batch.packets());
  stats_.rx_bytes.add(batch.bytes());
  pkt::free_bulk({rx_scratch_.data(), planned});
  const unsigned used = batch.requests_used();
  std::copy(rx_carry_.begin() + used, rx_carry_.begin() + rx_carry_len_, rx_carry_.begin());
  rx_carry_len_ -= used;
  rx_progress_ = RateLimiter::Clock::now();
  return true;
}

bool VifQueue::rx_poll() noexcept {
  bool work = take_steered();
  fetch_rx();
  if (rx_len_ > 0 || rx_stalled_) work = check_rx_stall(RateLimiter::Clock::now());
  return deliver_rx() || work;
}

// ----------------------------------------------------------------- reactor

bool VifQueue::publish() noexcept {
  bool any = false;
  EventChannel& ev = worker_.event_channel();
  bool notify_tx = false;
  bool notify_rx = false;
  if (tx_responses_) {
    tx_responses_ = false;
    notify_tx = tx_.flush();
    any = true;
  }
  if (rx_responses_) {
    rx_responses_ = false;
    notify_rx = rx_.flush();
    any = true;
  }
  if (notify_tx && tx_bound_) (void)ev.notify(tx_port_);
  if (notify_rx) {
    if (rx_port_ == tx_port_) {
      if (!notify_tx && tx_bound_) (void)ev.notify(tx_port_);  // one channel: one kick
    } else if (rx_bound_) {
      (void)ev.notify(rx_port_);
    }
  }
  return any;
}

bool VifQueue::poll() noexcept {
  if (stopped_) return false;
  sleeping_.store(false, std::memory_order_seq_cst);
  bool work = reap_tx();
  if (!halted_) {
    work |= tx_poll();
    work |= rx_poll();
  }
  work |= reap_tx();
  work |= publish();
  return work;
}

bool VifQueue::arm() noexcept {
  if (stopped_) return false;
  bool late = publish();
  EventChannel& ev = worker_.event_channel();
  if (masked_tx_ && tx_bound_) (void)ev.unmask(tx_port_);
  if (masked_rx_ && rx_bound_) (void)ev.unmask(rx_port_);
  masked_tx_ = masked_rx_ = false;
  if (rx_fd_ >= 0) {
    // The port's fd stays readable while frames wait in it: watch it only
    // while we would take them, or a guest that takes nothing would keep
    // the reactor spinning.
    const bool want = !halted_ && (rx_stalled_ || rx_len_ < rx_pkts_.size());
    if (want && !rx_fd_watched_) {
      rx_fd_watched_ = worker_.reactor().watch_fd(rx_fd_, EPOLLIN, [](uint32_t) {}).has_value();
    } else if (!want && rx_fd_watched_) {
      worker_.reactor().unwatch_fd(rx_fd_);
      rx_fd_watched_ = false;
    }
  }
  sleeping_.store(true, std::memory_order_seq_cst);
  for (unsigned w = 0; w < done_words_; ++w) {
    if (done_bits_[w].load(std::memory_order_seq_cst) != 0) return true;
  }
  if (halted_) return late;
  if (tx_again_ || rx_again_) return true;
  // TX: new requests (unless the port or the rate limiter holds us back:
  // the periodic wake-up retries the port, the credit timer the limiter).
  if (tx_backlog_len_ == 0 && !rate_.limited() && tx_.final_check()) return true;
  if (!steer_out_.empty() && !config_.inboxes[config_.queue_index]->empty()) return true;
  // RX: packets waiting for guest buffers: wake when it posts some.
  if (rx_len_ > 0 && rx_.final_check()) return true;
  return late;
}

}  // namespace xenpath
