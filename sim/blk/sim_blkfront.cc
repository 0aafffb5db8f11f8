#include "sim/blk/sim_blkfront.h"

#include <poll.h>

#include <algorithm>
#include <cstring>

#include "sim/front_ring.h"

namespace xenpath::sim {

// The frontend ring in whichever ABI was chosen.
class SimBlkfront::Ring {
 public:
  virtual ~Ring() = default;
  virtual Status init(void* shared, size_t bytes) noexcept = 0;
  [[nodiscard]] virtual unsigned size() const noexcept = 0;
  [[nodiscard]] virtual unsigned free_slots() const noexcept = 0;
  virtual bool push(const BlkRequest& r) noexcept = 0;
  virtual bool flush() noexcept = 0;
  virtual unsigned take(std::span<BlkResponse> out) noexcept = 0;
  virtual bool final_check() noexcept = 0;
  virtual void set_req_prod_raw(RING_IDX prod) noexcept = 0;
  [[nodiscard]] virtual RING_IDX req_prod_pvt() const noexcept = 0;
};

namespace {

template <typename Types>
class RingOf final : public SimBlkfront::Ring {
 public:
  Status init(void* shared, size_t bytes) noexcept override { return r_.init(shared, bytes); }
  unsigned size() const noexcept override { return r_.size(); }
  unsigned free_slots() const noexcept override { return r_.free_slots(); }
  bool push(const BlkRequest& req) noexcept override {
    typename Types::Request slot{};
    blk_encode(req, slot);
    return r_.push(slot);
  }
  bool flush() noexcept override { return r_.flush(); }
  unsigned take(std::span<BlkResponse> out) noexcept override {
    typename Types::Response buf[64];
    const unsigned n = r_.take_responses(std::span(buf, std::min<size_t>(out.size(), 64)));
    for (unsigned i = 0; i < n; ++i) {
      // Field by field: the i386 response's u64 is only 4-byte aligned.
      const uint64_t id = buf[i].id;
      const uint8_t op = buf[i].operation;
      const int16_t st = buf[i].status;
      out[i] = BlkResponse{id, op, st};
    }
    return n;
  }
  bool final_check() noexcept override { return r_.final_check_responses(); }
  void set_req_prod_raw(RING_IDX prod) noexcept override { r_.set_req_prod_raw(prod); }
  RING_IDX req_prod_pvt() const noexcept override { return r_.req_prod_pvt(); }

 private:
  SimFrontRing<Types> r_;
};

}  // namespace

SimBlkfront::SimBlkfront(SimDomain& dom, EventChannel& evtchn, const Options& opts) noexcept
    : dom_(dom), evtchn_(evtchn), opts_(opts) {}

Result<std::unique_ptr<SimBlkfront>> SimBlkfront::create(SimDomain& dom, EventChannel& evtchn,
                                                         const Options& opts) noexcept {
  std::unique_ptr<SimBlkfront> f(new (std::nothrow) SimBlkfront(dom, evtchn, opts));
  if (!f) return unexpected(ENOMEM);
  XP_TRY(f->init());
  return f;
}

Status SimBlkfront::init() noexcept {
  if (opts_.ring_order > 4 || opts_.sector_size < 512 || opts_.sector_size > kPageSize ||
      (opts_.sector_size & (opts_.sector_size - 1)) != 0) {
    return unexpected(EINVAL);
  }
  switch (opts_.protocol) {
    case BlkProtocol::kX86_32:
      ring_.reset(new (std::nothrow) RingOf<BlkifX86_32Ring>());
      break;
    case BlkProtocol::kX86_64:
      ring_.reset(new (std::nothrow) RingOf<BlkifX86_64Ring>());
      break;
    case BlkProtocol::kNative:
      ring_.reset(new (std::nothrow) RingOf<BlkifNativeRing>());
      break;
  }
  if (!ring_) return unexpected(ENOMEM);
  const uint32_t pages = 1u << opts_.ring_order;
  XP_ASSIGN_OR_RETURN(ring_pfn_, dom_.alloc_pages(pages));
  for (uint32_t i = 1; i < pages; ++i) {
    if (dom_.page(ring_pfn_ + i) != dom_.page(ring_pfn_) + i * kPageSize) return unexpected(EINVAL);
  }
  XP_TRY(ring_->init(dom_.page(ring_pfn_), static_cast<size_t>(pages) * kPageSize));
  try {
    for (uint32_t i = 0; i < pages; ++i) {
      XP_ASSIGN_OR_RETURN(const GrantRef ref, dom_.grant_access(opts_.backend, ring_pfn_ + i, false));
      ring_refs_.push_back(ref);
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }
  const unsigned slots = ring_->size();
  if (slots > 0xffff) return unexpected(EINVAL);
  try {
    pending_.resize(slots);
    free_pending_.reserve(slots);
    for (unsigned i = slots; i-- > 0;) free_pending_.push_back(i);
    segs_.reserve(std::max<uint32_t>(opts_.max_indirect_segments, kBlkDirectSegments));
  } catch (...) {
    return unexpected(ENOMEM);
  }
  XP_ASSIGN_OR_RETURN(port_, evtchn_.bind_unbound(opts_.backend));
  bound_ = true;
  return ok();
}

SimBlkfront::~SimBlkfront() {
  for (Pending& p : pending_) {
    if (p.id != 0) release(p);
  }
  for (const Page& pg : pool_) {
    (void)dom_.end_access(pg.ref);
    dom_.free_pages(pg.pfn, 1);
  }
  for (uint32_t pfn : spare_pfns_) dom_.free_pages(pfn, 1);
  for (GrantRef r : ring_refs_) (void)dom_.end_access(r);
  if (!ring_refs_.empty()) dom_.free_pages(ring_pfn_, 1u << opts_.ring_order);
  if (bound_) (void)evtchn_.unbind(port_);
}

unsigned SimBlkfront::ring_size() const noexcept { return ring_->size(); }

Result<GrantRef> SimBlkfront::grant_page(bool readonly, uint32_t* pfn_out) noexcept {
  XP_ASSIGN_OR_RETURN(const uint32_t pfn, dom_.alloc_pages(1));
  auto ref = dom_.grant_access(opts_.backend, pfn, readonly);
  if (!ref) {
    dom_.free_pages(pfn, 1);
    return unexpected(ref.error());
  }
  if (pfn_out != nullptr) *pfn_out = pfn;
  return *ref;
}

Result<SimBlkfront::Page> SimBlkfront::take_page(bool readonly) noexcept {
  if (opts_.persistent) {
    if (!pool_free_.empty()) {
      Page p = pool_free_.back();
      pool_free_.pop_back();
      return p;
    }
    // Persistent grants are read-write whatever the I/O (the backend keeps
    // them mapped for later requests of either direction).
    Page p;
    XP_ASSIGN_OR_RETURN(p.ref, grant_page(false, &p.pfn));
    try {
      pool_.push_back(p);
    } catch (...) {
      return unexpected(ENOMEM);
    }
    return p;
  }
  Page p;
  if (spare_pfns_.empty()) {
    XP_ASSIGN_OR_RETURN(p.ref, grant_page(readonly, &p.pfn));
    return p;
  }
  p.pfn = spare_pfns_.back();
  auto ref = dom_.grant_access(opts_.backend, p.pfn, readonly);
  if (!ref) return unexpected(ref.error());
  spare_pfns_.pop_back();
  p.ref = *ref;
  return p;
}

Status SimBlkfront::give_back(Page p, bool persistent_pool) noexcept {
  if (persistent_pool) {
    try {
      pool_free_.push_back(p);
    } catch (...) {
      return unexpected(ENOMEM);
    }
    return ok();
  }
  // Revoking fails (EBUSY) while the backend still has the page mapped:
  // after the answer, that is a leak.
  Status st = dom_.end_access(p.ref);
  if (!st) return st;
  try {
    spare_pfns_.push_back(p.pfn);
  } catch (...) {
    dom_.free_pages(p.pfn, 1);
  }
  return ok();
}

void SimBlkfront::release(Pending& p) noexcept {
  for (const Page& pg : p.data) (void)give_back(pg, opts_.persistent);
  for (const Page& pg : p.indirect) (void)give_back(pg, opts_.persistent);
  p.data.clear();
  p.indirect.clear();
}

unsigned SimBlkfront::free_slots() const noexcept { return ring_->free_slots(); }

Status SimBlkfront::start(Io& io) noexcept {
  if (free_pending_.empty() || ring_->free_slots() == 0) return unexpected(ENOSPC);
  const uint32_t slot = free_pending_.back();
  Pending& pend = pending_[slot];
  BlkRequest req;
  req.id = (next_seq_ << 16) | slot;
  req.sector = io.sector;
  pend.io = &io;
  pend.op = io.op;
  io.status = 1;
  io.error = 0;
  // On failure, what was taken so far goes back (grants revoked).
  auto fail = [&](int err) -> Status {
    release(pend);
    return unexpected(err);
  };
  if (io.op == BLKIF_OP_DISCARD) {
    req.ring_op = req.op = BLKIF_OP_DISCARD;
    req.nr_sectors = io.discard_sectors;
    req.secure = io.secure;
  } else {
    const uint32_t ss = opts_.sector_size;
    const uint32_t spp = kPageSize / ss;
    if (io.first_sect >= spp) return unexpected(EINVAL);
    const uint64_t end = static_cast<uint64_t>(io.first_sect) + io.sectors;  // in sectors from the first page
    const uint32_t nseg = io.sectors == 0 ? 0 : static_cast<uint32_t>((end + spp - 1) / spp);
    const bool indirect = io.indirect || nseg > kBlkDirectSegments;
    if (indirect &&
        (nseg == 0 || nseg > opts_.max_indirect_segments || (io.op != BLKIF_OP_READ && io.op != BLKIF_OP_WRITE))) {
      return unexpected(EINVAL);
    }
    try {
      pend.data.reserve(nseg);
    } catch (...) {
      return unexpected(ENOMEM);
    }
    segs_.clear();  // capacity reserved at init for the largest request
    const std::byte* src = io.data;
    for (uint32_t k = 0; k < nseg; ++k) {
      auto pg = take_page(io.op != BLKIF_OP_READ);
      if (!pg) return fail(pg.error());
      pend.data.push_back(*pg);
      const uint32_t first = k == 0 ? io.first_sect : 0;
      const uint64_t seg_end = std::min<uint64_t>(end - static_cast<uint64_t>(k) * spp, spp);  // exclusive
      const uint32_t last = static_cast<uint32_t>(seg_end - 1);
      const size_t bytes = static_cast<size_t>(last - first + 1) * ss;
      if (src != nullptr) {
        if (io.op != BLKIF_OP_READ) {
          std::memcpy(dom_.page(pg->pfn) + static_cast<size_t>(first) * ss, src, bytes);
        } else {
          // Poison, so a read that did not happen shows.
          std::memset(dom_.page(pg->pfn) + static_cast<size_t>(first) * ss, 0xee, bytes);
        }
        src += bytes;
      }
      segs_.push_back(BlkSegment{pg->ref, static_cast<uint8_t>(first), static_cast<uint8_t>(last)});
    }
    req.op = io.op;
    req.nr_segments = nseg;
    if (indirect) {
      req.ring_op = BLKIF_OP_INDIRECT;
      req.indirect = true;
      const unsigned npages = blk_indirect_pages(nseg);
      req.nr_indirect_pages = static_cast<uint8_t>(npages);
      try {
        pend.indirect.reserve(npages);
      } catch (...) {
        return fail(ENOMEM);
      }
      for (unsigned p = 0; p < npages; ++p) {
        auto pg = take_page(true);
        if (!pg) return fail(pg.error());
        pend.indirect.push_back(*pg);
        req.indirect_grefs[p] = pg->ref;
        std::byte* page = dom_.page(pg->pfn);
        std::memset(page, 0, kPageSize);
        for (unsigned s = 0; s < kBlkSegmentsPerIndirectPage && p * kBlkSegmentsPerIndirectPage + s < nseg; ++s) {
          const BlkSegment& sg = segs_[p * kBlkSegmentsPerIndirectPage + s];
          blkif_request_segment d{};
          d.gref = sg.gref;
          d.first_sect = sg.first_sect;
          d.last_sect = sg.last_sect;
          std::memcpy(page + s * sizeof(d), &d, sizeof(d));
        }
      }
    } else {
      req.ring_op = io.op;
      for (uint32_t k = 0; k < nseg; ++k) req.seg[k] = segs_[k];
    }
  }
  if (!ring_->push(req)) return fail(ENOSPC);
  ++next_seq_;
  pend.id = req.id;
  free_pending_.pop_back();
  ++in_flight_;
  return ok();
}

Status SimBlkfront::complete(Pending& p, const BlkResponse& r) noexcept {
  Io& io = *p.io;
  io.status = r.status;
  Status result;
  if (r.op != p.op) result = unexpected(EPROTO);
  if (io.op == BLKIF_OP_READ && r.status == BLKIF_RSP_OKAY && io.data != nullptr) {
    const uint32_t ss = opts_.sector_size;
    std::byte* dst = io.data;
    uint64_t left = io.sectors;
    for (size_t k = 0; k < p.data.size(); ++k) {
      const uint32_t first = k == 0 ? io.first_sect : 0;
      const uint64_t n = std::min<uint64_t>(left, kPageSize / ss - first);
      std::memcpy(dst, dom_.page(p.data[k].pfn) + static_cast<size_t>(first) * ss, n * ss);
      dst += n * ss;
      left -= n;
    }
  }
  for (const Page& pg : p.data) {
    if (auto st = give_back(pg, opts_.persistent); !st && result) result = st;
  }
  for (const Page& pg : p.indirect) {
    if (auto st = give_back(pg, opts_.persistent); !st && result) result = st;
  }
  p.data.clear();
  p.indirect.clear();
  if (!result) io.error = result.error();
  return result;
}

unsigned SimBlkfront::reap(std::span<Io*> out) noexcept {
  unsigned done = 0;
  while (done < out.size()) {
    BlkResponse rs[64];
    const unsigned n = ring_->take(std::span(rs, std::min<size_t>(64, out.size() - done)));
    if (n == 0) break;
    for (unsigned i = 0; i < n; ++i) {
      const uint64_t slot = rs[i].id & 0xffff;
      if (slot >= pending_.size() || pending_[slot].id != rs[i].id || rs[i].id == 0) {
        ++stray_;
        continue;
      }
      Pending& p = pending_[slot];
      (void)complete(p, rs[i]);  // the verdict is in io.error
      p.id = 0;
      free_pending_.push_back(static_cast<uint32_t>(slot));  // capacity: ring_size()
      --in_flight_;
      out[done++] = p.io;
    }
  }
  return done;
}

Status SimBlkfront::publish() noexcept {
  if (ring_->flush()) return evtchn_.notify(port_);
  return ok();
}

bool SimBlkfront::rearm() noexcept { return ring_->final_check(); }

Status SimBlkfront::wait_event(std::chrono::milliseconds limit) noexcept {
  pollfd pfd{evtchn_.fd(), POLLIN, 0};
  const int r = ::poll(&pfd, 1, static_cast<int>(std::max<int64_t>(limit.count(), 0)));
  if (r < 0 && errno != EINTR) return unexpected_errno();
  // Ports stay masked after they fired until unmasked.
  for (unsigned i = 0; i < 64; ++i) {
    auto p = evtchn_.pending();
    if (!p) break;
    (void)evtchn_.unmask(*p);
  }
  return ok();
}

Status SimBlkfront::run(std::span<Io> ios, std::chrono::milliseconds timeout) noexcept {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const uint64_t stray0 = stray_;
  const size_t in_flight0 = in_flight_;
  size_t next = 0;
  Status result;
  while (next < ios.size() || in_flight_ > in_flight0) {
    bool pushed = false;
    while (next < ios.size() && ring_->free_slots() > 0) {
      XP_TRY(start(ios[next]));
      ++next;
      pushed = true;
    }
    if (pushed) XP_TRY(publish());
    Io* done[64];
    const unsigned n = reap(done);
    for (unsigned i = 0; i < n; ++i) {
      if (done[i]->error != 0 && result) result = unexpected(done[i]->error);
    }
    if (stray_ != stray0 && result) result = unexpected(EPROTO);
    if (n != 0 || pushed) continue;
    if (rearm()) continue;  // answers arrived while re-arming
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return unexpected(ETIMEDOUT);
    XP_TRY(wait_event(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) +
                      std::chrono::milliseconds(1)));
  }
  return result;
}

bool SimBlkfront::push_raw(const BlkRequest& req) noexcept { return ring_->push(req); }

Status SimBlkfront::kick() noexcept {
  (void)ring_->flush();
  return evtchn_.notify(port_);
}

Result<std::vector<BlkResponse>> SimBlkfront::wait_responses(unsigned n, std::chrono::milliseconds timeout) noexcept {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<BlkResponse> out;
  try {
    out.reserve(n);
  } catch (...) {
    return unexpected(ENOMEM);
  }
  while (out.size() < n) {
    BlkResponse rs[64];
    const unsigned got = ring_->take(std::span(rs, std::min<size_t>(64, n - out.size())));
    out.insert(out.end(), rs, rs + got);
    if (got != 0 || ring_->final_check()) continue;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return unexpected(ETIMEDOUT);
    XP_TRY(wait_event(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) +
                      std::chrono::milliseconds(1)));
  }
  return out;
}

void SimBlkfront::set_req_prod_raw(RING_IDX prod) noexcept { ring_->set_req_prod_raw(prod); }

RING_IDX SimBlkfront::req_prod_pvt() const noexcept { return ring_->req_prod_pvt(); }

}  // namespace xenpath::sim
