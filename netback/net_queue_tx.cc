#include "netback/net_queue_tx.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/guest_channel.h"
#include "common/xen/platform.h"

namespace xenpath {

namespace {

constexpr uint32_t kNoBurst = UINT32_MAX;
constexpr uint16_t kNone = UINT16_MAX;
// Bytes of a TX packet pulled into its head when its protocol headers go
// beyond the copied 128 (IPv6 extension headers, TCP options): as much as
// set_meta() can describe (l2 < 128, l3 < 512, l4 < 256), within a buffer.
constexpr size_t kMaxHeaderPull = 896;

}  // namespace

// One consumed TX slot awaiting its response. `shared` is the DPDK shared
// info of the slot's attached page (at most one per slot); it lives here so
// it outlives every packet that references the page.
struct VifTxPath::Pending {
  VifTxPath* q = nullptr;
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
struct VifTxPath::TxBurst {
  GrantMapping map;
  uint32_t outstanding = 0;  // attached pages not yet released
  uint16_t waiters = kNone;  // slots answered after the unmap
  bool live = false;
};

struct VifTxPath::TxWork {
  TxPlan plan;
  std::array<uint16_t, kMaxTxSlots> pend{};
  PacketBuf* pkt = nullptr;
  uint32_t burst = kNoBurst;
  uint32_t first_ref = 0;  // its first map piece in refs_
  uint32_t maps = 0;
  bool failed = false;
};

VifTxPath::VifTxPath(VifQueueCore& core) noexcept : core_(core) {}
VifTxPath::~VifTxPath() = default;

Status VifTxPath::init() noexcept {
  const VifQueueConfig& config = core_.config;
  XP_TRY(map_guest_ring(core_.worker, config.frontend, {&config.tx_ring_ref, 1}, ring_map_, ring_, &core_.stats.tx_ring,
                        core_.log, "TX"));
  const unsigned burst = config.burst;
  const unsigned size = ring_.size();
  try {
    carry_.resize(size);
    pend_.resize(size);
    free_pend_.reserve(size);
    for (unsigned i = size; i-- > 0;) {
      pend_[i].q = this;
      pend_[i].idx = static_cast<uint16_t>(i);
      free_pend_.push_back(static_cast<uint16_t>(i));
    }
    done_words_ = (size + 63) / 64;
    done_bits_.reset(new std::atomic<uint64_t>[done_words_]);
    for (unsigned i = 0; i < done_words_; ++i) done_bits_[i].store(0);
    bursts_.resize(size);
    free_bursts_.reserve(size);
    for (uint32_t i = size; i-- > 0;) free_bursts_.push_back(i);
    work_.resize(burst);
    // A copied piece (<= a page) takes ceil(4096 / buffer room) segments.
    const size_t room = config.pool->data_room();
    const size_t chunks = (kPageSize + room - 1) / std::max<size_t>(room, 1);
    copies_.resize(static_cast<size_t>(burst) * kMaxTxPieces * chunks);
    refs_.resize(static_cast<size_t>(burst) * kMaxTxSlots);
    out_.resize(burst);
    backlog_.resize(burst);
  } catch (...) {
    return unexpected(ENOMEM);
  }
  rate_.start(config.rate, core_.worker.reactor().now());

  done_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (done_fd_ < 0) return unexpected_errno();
  XP_TRY(core_.worker.reactor().watch_fd(done_fd_, EPOLLIN, [this](uint32_t) {
    uint64_t v;
    while (::read(done_fd_, &v, sizeof v) < 0 && errno == EINTR) {
    }
  }));
  watching_done_ = true;
  return ok();
}

void VifTxPath::teardown(bool keep_pages) noexcept {
  Reactor& reactor = core_.worker.reactor();
  if (have_credit_timer_) reactor.cancel_timer(credit_timer_);
  have_credit_timer_ = false;
  credit_at_ = {};
  drop_backlog();
  if (watching_done_) reactor.unwatch_fd(done_fd_);
  watching_done_ = false;
  ring_map_.reset();
  if (keep_pages) return;
  if (done_fd_ >= 0) ::close(done_fd_);
  done_fd_ = -1;
  for (auto& b : bursts_) b.map.reset();
}

void VifTxPath::drop_backlog() noexcept {
  for (size_t i = 0; i < backlog_len_; ++i) pkt::free(backlog_[i]);
  backlog_len_ = 0;
}

bool VifTxPath::pages_released() const noexcept {
  for (unsigned w = 0; w < done_words_; ++w) {
    if (done_bits_[w].load(std::memory_order_seq_cst) != 0) return true;
  }
  return false;
}

bool VifTxPath::final_check() noexcept { return backlog_len_ == 0 && !rate_.limited() && ring_.final_check(); }

void VifTxPath::page_released(void* /*addr*/, void* opaque) {
  // Any thread. Only the bitmap and the eventfd: the owner does the rest.
  auto* p = static_cast<Pending*>(opaque);
  VifTxPath* q = p->q;
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

bool VifTxPath::reap() noexcept {
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

void VifTxPath::finish_burst(uint32_t b) noexcept {
  TxBurst& burst = bursts_[b];
  burst.map.reset();  // one unmap for the whole burst
  core_.stats.tx_unmap_calls.add();
  for (uint16_t i = burst.waiters; i != kNone;) {
    Pending& p = pend_[i];
    const uint16_t next = p.next;
    respond(p.id, p.status, p.nulls);
    free_pending(i);
    i = next;
  }
  burst.waiters = kNone;
  burst.live = false;
  free_bursts_.push_back(b);
}

void VifTxPath::respond(uint16_t id, int16_t status, uint16_t nulls) noexcept {
  netif_tx_response r{};
  r.id = id;
  r.status = status;
  if (status != NETIF_RSP_OKAY) core_.stats.tx_ring.error_responses.add();
  (void)ring_.push_response(r);
  r.id = 0;
  r.status = NETIF_RSP_NULL;
  for (uint16_t i = 0; i < nulls; ++i) (void)ring_.push_response(r);
  responses_ = true;
}

uint16_t VifTxPath::alloc_pending() noexcept {
  const uint16_t i = free_pend_.back();
  free_pend_.pop_back();
  Pending& p = pend_[i];
  p.status = NETIF_RSP_OKAY;
  p.burst = kNoBurst;
  p.next = kNone;
  p.nulls = 0;
  return i;
}

void VifTxPath::free_pending(uint16_t idx) noexcept { free_pend_.push_back(idx); }

bool VifTxPath::flush_backlog() noexcept {
  if (backlog_len_ == 0) return false;
  const size_t n = core_.config.port->tx_burst(core_.config.port_queue, {backlog_.data(), backlog_len_});
  if (n > 0) {
    std::copy(backlog_.begin() + static_cast<ptrdiff_t>(n), backlog_.begin() + static_cast<ptrdiff_t>(backlog_len_),
              backlog_.begin());
    backlog_len_ -= n;
  }
  return n > 0;
}

unsigned VifTxPath::parse_burst(unsigned& works) noexcept {
  if (carry_len_ < carry_.size()) {
    const unsigned room = std::min<unsigned>(core_.config.burst, static_cast<unsigned>(carry_.size()) - carry_len_);
    auto n = ring_.consume({carry_.data() + carry_len_, room});
    if (!n) {
      core_.halt("TX ring producer overflow");
      return 0;
    }
    carry_len_ += *n;
  }
  const bool more_published = ring_.unconsumed() > 0;
  const auto now = core_.worker.reactor().now();
  unsigned pos = 0;
  while (pos < carry_len_ && works < core_.config.burst) {
    TxWork& w = work_[works];
    const std::span<const netif_tx_request> rest(carry_.data() + pos, carry_len_ - pos);
    parse_tx(rest, more_published, core_.config.tx_limits, w.plan);
    const TxPlan& p = w.plan;
    if (p.verdict == TxVerdict::kNeedMore) break;
    if (p.verdict == TxVerdict::kFatal) {
      core_.halt(tx_error_name(p.error));
      return pos;
    }
    if (p.verdict == TxVerdict::kPacket && free_pend_.size() < p.n_slots) break;  // cannot happen: slots <= ring
    // Credit is charged per request, as Linux does, before acting on it.
    if (!rate_.admit(rest[0].size, now)) {
      core_.stats.tx_rate_limited.add();
      arm_credit_timer();
      break;
    }
    pos += p.consumed;
    switch (p.verdict) {
      case TxVerdict::kDrop:
        core_.log.guest("TX packet dropped: {}", tx_error_name(p.error));
        core_.stats.tx_dropped.add();
        for (unsigned s = 0; s < p.n_slots; ++s) respond(p.slots[s].id, NETIF_RSP_ERROR, p.slots[s].nulls);
        break;
      case TxVerdict::kMulticast: {
        core_.stats.tx_multicast.add();
        // The VIF's list, whichever of its queues the request came on.
        const bool okay = core_.config.multicast->apply(p.mcast_type, p.mcast_addr);
        respond(p.slots[0].id, okay ? NETIF_RSP_OKAY : NETIF_RSP_ERROR, p.slots[0].nulls);
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

bool VifTxPath::map(unsigned works) noexcept {
  uint32_t nrefs = 0;
  for (unsigned i = 0; i < works; ++i) {
    TxWork& w = work_[i];
    w.first_ref = nrefs;
    for (const auto& pc : w.plan.piece_span()) {
      if (pc.kind == TxPiece::kMap) refs_[nrefs++] = pc.gref;
    }
    w.maps = nrefs - w.first_ref;
  }
  if (nrefs == 0) return true;
  GrantTable& gt = core_.worker.grant_table();
  auto take_burst = [&](GrantMapping&& m) {
    const uint32_t b = free_bursts_.back();
    free_bursts_.pop_back();
    bursts_[b].map = std::move(m);
    bursts_[b].outstanding = 0;
    bursts_[b].waiters = kNone;
    bursts_[b].live = true;
    return b;
  };
  core_.stats.tx_map_calls.add();
  auto m = gt.map(core_.config.frontend, {refs_.data(), nrefs}, /*writable=*/false);
  if (m) {
    const uint32_t b = take_burst(std::move(*m));
    for (unsigned i = 0; i < works; ++i) {
      if (work_[i].maps != 0) work_[i].burst = b;
    }
    return true;
  }
  // One bad grant fails the batch: map packet by packet so only its packet fails.
  core_.log.guest("TX batch map of {} pages failed ({}): mapping per packet", nrefs, error_string(m.error()));
  for (unsigned i = 0; i < works; ++i) {
    TxWork& w = work_[i];
    if (w.maps == 0) continue;
    core_.stats.tx_map_calls.add();
    auto one = gt.map(core_.config.frontend, {refs_.data() + w.first_ref, w.maps}, false);
    if (one) {
      w.burst = take_burst(std::move(*one));
      w.first_ref = 0;  // pages of its own mapping
    } else {
      w.failed = true;
    }
  }
  return false;
}

// Builds each packet in piece order: copy destinations in pool buffers,
// mapped pages attached behind them. Returns the copies to issue.
unsigned VifTxPath::build(unsigned works) noexcept {
  unsigned ncopies = 0;
  PacketPool& pool = *core_.config.pool;
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
        e.free_fn = &VifTxPath::page_released;
        e.opaque = &p;
        if (!pool.attach_external(w.pkt, e)) {
          w.failed = true;
          break;
        }
        ++attached_;
        ++bursts_[w.burst].outstanding;
        core_.stats.tx_mapped_pages.add();
        continue;
      }
      // Copied pieces land in pool buffers, in chunks of at most a buffer.
      for (uint16_t done = 0; done < pc.len && !w.failed;) {
        const uint16_t n = static_cast<uint16_t>(std::min<size_t>(pc.len - done, pool.data_room()));
        auto dst = pool.append_owned(w.pkt, n);
        if (dst.empty() || ncopies == copies_.segs.size()) {
          w.failed = true;
          break;
        }
        GrantCopySegment& c = copies_.segs[ncopies];
        c = GrantCopySegment{};
        c.source.foreign.ref = pc.gref;
        c.source.foreign.offset = static_cast<uint16_t>(pc.offset + done);
        c.source.foreign.domid = core_.config.frontend;
        c.dest.virt = dst.data();
        c.len = n;
        c.flags = kCopySourceGref;
        copies_.owner[ncopies++] = static_cast<uint16_t>(i);
        done = static_cast<uint16_t>(done + n);
      }
      if (w.failed) break;
    }
  }
  return ncopies;
}

void VifTxPath::execute(unsigned works) noexcept {
  (void)map(works);
  const unsigned ncopies = build(works);
  if (ncopies > 0) {
    core_.stats.tx_copy_calls.add();
    auto r = core_.worker.grant_table().copy({copies_.segs.data(), ncopies});
    for (unsigned c = 0; c < ncopies; ++c) {
      TxWork& w = work_[copies_.owner[c]];
      if (!r || copies_.segs[c].status != GNTST_okay) w.failed = true;
      else core_.stats.tx_copied_bytes.add(copies_.segs[c].len);
    }
  }

  size_t nout = 0;
  for (unsigned i = 0; i < works; ++i) {
    TxWork& w = work_[i];
    const TxPlan& plan = w.plan;
    const int16_t status = w.failed ? NETIF_RSP_ERROR : NETIF_RSP_OKAY;
    if (w.failed) {
      core_.log.guest("TX packet of {} bytes: a grant of it failed", plan.size);
      core_.stats.tx_dropped.add();
      pkt::free(w.pkt);  // attached pages come back through their callback
    } else {
      if (finish_meta(w.pkt, plan)) {
        out_[nout++] = w.pkt;
        core_.stats.tx_packets.add();
        core_.stats.tx_bytes.add(plan.size);
      } else {
        core_.stats.tx_port_dropped.add();
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
        respond(p.id, p.status, p.nulls);
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
    const size_t taken = core_.config.port->tx_burst(core_.config.port_queue, {out_.data(), nout});
    for (size_t i = taken; i < nout; ++i) backlog_[backlog_len_++] = out_[i];
  }
}

bool VifTxPath::finish_meta(PacketBuf* p, const TxPlan& plan) noexcept {
  PacketMeta m;
  if (plan.data_validated) m.flags |= PacketMeta::kL4CsumVerified;
  if (plan.has_hash) {
    // The guest's hash (its own Toeplitz, its own key) as Linux's
    // skb_set_hash: only which fields it covers is kept.
    const bool l4 =
        plan.hash_type == _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP || plan.hash_type == _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;
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
      if (ok) core_.stats.tx_headers_pulled.add();
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

bool VifTxPath::poll() noexcept {
  bool work = flush_backlog();
  if (backlog_len_ != 0) return work;  // the port pushes back: so do we
  unsigned works = 0;
  const unsigned parsed = parse_burst(works);
  again_ = works == core_.config.burst;
  if (works > 0) execute(works);
  return work || parsed > 0;
}

void VifTxPath::set_rate(const RateSpec& spec) noexcept {
  core_.config.rate = spec;
  // A pending replenish happens now (the refused packet is retried in this
  // iteration's poll): its timer has nothing left to do.
  rate_.update(spec, core_.worker.reactor().now());
  if (credit_at_ != RateLimiter::Clock::time_point{} && have_credit_timer_) {
    (void)core_.worker.reactor().arm_timer(credit_timer_, {});
    credit_at_ = {};
  }
}

// Credit ran out: wake exactly when it is replenished (Linux's
// tx_credit_callback), rather than re-checking periodically. The packet
// stays in the ring (or the carry) meanwhile and arm() does not wake for
// the TX ring while limited.
void VifTxPath::arm_credit_timer() noexcept {
  const auto at = rate_.replenish_at();
  if (!at || *at == credit_at_ || credit_timer_failed_) return;  // armed for it already
  if (!have_credit_timer_) {
    auto t = core_.worker.reactor().add_oneshot_timer([this] {
      core_.stats.tx_credit_timer.add();
      credit_at_ = {};
      // The reactor polls us in this iteration: the refused packet is
      // admitted then.
    });
    if (!t) {
      // No timer: the periodic housekeeping wake-up still retries.
      core_.log.warn("cannot create the rate credit timer: {}; retrying on the periodic wake-up",
                     error_string(t.error()));
      credit_timer_failed_ = true;
      return;
    }
    credit_timer_ = *t;
    have_credit_timer_ = true;
  }
  if (core_.worker.reactor().arm_timer(credit_timer_, *at)) credit_at_ = *at;
}

}  // namespace xenpath
