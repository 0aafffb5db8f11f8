#include "blkback/blk_queue.h"

#include <sys/epoll.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "blkback/blk_queue_slot.h"
#include "blkback/image_open.h"
#include "common/aligned_bytes.h"

namespace xenpath {

// ---------------------------------------------------------------------------
// VbdQueue

VbdQueue::VbdQueue(BlkWorker& worker, Image& image, const Config& config, VbdQueueStats& stats,
                   HaltSink on_halt) noexcept
    : XenRingPoller(worker),
      image_(image),
      config_(config),
      stats_(stats),
      on_halt_(std::move(on_halt)),
      log_(config.log_prefix) {}

Result<std::unique_ptr<VbdQueue>> VbdQueue::start(BlkWorker& worker, Image& image, const Config& config,
                                                  VbdQueueStats& stats, HaltSink on_halt) noexcept {
  return start_with<VbdQueue>([&] { return new VbdQueue(worker, image, config, stats, std::move(on_halt)); });
}

uint32_t VbdQueue::segment_capacity() const noexcept {
  return std::max<uint32_t>(kBlkDirectSegments, config_.limits.max_indirect_segments);
}

VbdQueue::DispatchScratch& VbdQueue::scratch() noexcept {
  thread_local DispatchScratch s;
  return s;
}

bool VbdQueue::grow_slot(Slot& s) noexcept {
  const uint32_t cap = segment_capacity();
  if (s.pages.size() >= cap) return true;
  try {
    s.indirect_segs.resize(config_.limits.max_indirect_segments);
    s.iov.resize(cap + 1);
    s.pages.resize(cap);
    if (config_.persistent) s.handles.resize(cap);
  } catch (...) {
    return false;
  }
  return true;
}

Status VbdQueue::init() noexcept {
  const size_t pages = config_.ring_refs.size();
  if (!config_.limits.sane() || pages == 0 || pages > (1u << BackRing<BlkifRing>::kMaxOrder) ||
      !std::has_single_bit(pages) || config_.burst == 0 || config_.burst > kMaxBurst) {
    return unexpected(EINVAL);
  }
  GrantTable& gt = worker_.grant_table();
  ring_ = BlkRingPort::make(config_.protocol);
  if (!ring_) return unexpected(ENOMEM);
  XP_TRY(map_guest_ring(worker_, config_.frontend, config_.ring_refs, ring_mapping_, *ring_, &stats_.ring, log_,
                        "shared"));
  XP_ASSIGN_OR_RETURN(channel_, image_.open_channel(worker_.reactor()));

  const unsigned nslots = ring_->size();
  const uint32_t cap = segment_capacity();
  try {
    if (config_.persistent) {
      PersistentGrants::Options po;
      // Default: what a full ring of direct requests can use, and never less
      // than Linux blkback's max_persistent_grants (1056). Smaller, a
      // frontend's pool (Linux blkfront keeps up to 32 slots x 33 grants)
      // no longer fits: every burst evicts and maps transiently, and 128 KiB
      // requests at QD >= 11 fell from ~180k to ~5k IOPS (xenpath-blkload).
      po.max_pages = config_.persistent_max_pages != 0
                         ? config_.persistent_max_pages
                         : std::max<uint32_t>(kLinuxMaxPersistentGrants, nslots * kBlkDirectSegments);
      po.idle_timeout = config_.persistent_idle;
      pgrants_ = std::make_unique<PersistentGrants>(gt, config_.frontend, po);
    }
    slots_.reserve(nslots);
    for (unsigned i = 0; i < nslots; ++i) {
      auto s = std::make_unique<Slot>();
      s->q = this;
      // Direct requests' room; grow_slot() makes the indirect room.
      s->iov.resize(kBlkDirectSegments + 1);  // + 1: guard_write may split the last vector
      s->pages.resize(kBlkDirectSegments);
      if (config_.persistent) s->handles.resize(kBlkDirectSegments);
      s->next = free_;
      free_ = s.get();
      slots_.push_back(std::move(s));
    }
    bursts_.resize(nslots);
    for (uint32_t i = nslots; i-- > 0;) {
      bursts_[i].next_free = free_burst_;
      free_burst_ = i;
    }
    // init() runs on the worker thread whose queues share the scratch.
    DispatchScratch& sc = scratch();
    const size_t need = static_cast<size_t>(config_.burst) * std::max<size_t>(cap, kBlkMaxIndirectPages);
    if (sc.refs.size() < need) {
      sc.refs.resize(need);
      sc.pages.resize(need);
      sc.handles.resize(need);
    }
  } catch (...) {
    return unexpected(ENOMEM);
  }

  qos_.configure(config_.qos, config_.qos_queues, uint64_t{cap} * kPageSize, worker_.reactor().now());
  XP_TRY(evtchn_.bind(worker_, config_.frontend, config_.remote_port, this));
  start_polling();
  if (pgrants_) {
    // Idle persistent grants go back to the guest after their timeout: a
    // one-shot timer for the oldest idle entry's, armed by arm() when the
    // queue goes idle, so an idle queue has no periodic wake-up.
    auto t = worker_.reactor().add_oneshot_timer([this] {
      purge_armed_ = false;
      if (pgrants_) pgrants_->purge(worker_.reactor().now());
    });
    if (t) {
      purge_timer_ = *t;
      have_timer_ = true;
    }
  }
  // Requests queued before we bound are picked up by the first poll().
  return ok();
}

void VbdQueue::teardown() noexcept {
  stop_polling();
  if (have_timer_) worker_.reactor().cancel_timer(purge_timer_);
  have_timer_ = false;
  if (have_qos_timer_) worker_.reactor().cancel_timer(qos_timer_);
  have_qos_timer_ = false;
  qos_head_ = nullptr;  // consumed, never started: nobody to answer, as below
  evtchn_.unbind();
  // Consumed but never dispatched (behind a barrier): the frontend is going
  // away, there is nobody to answer.
  for (auto& s : slots_) {
    s->own.reset();
    if (pgrants_ && s->nhandles != 0) pgrants_->release(std::span(s->handles.data(), s->nhandles));
    s->nhandles = 0;
  }
  for (auto& b : bursts_) b.mapping.reset();
  if (pgrants_) {
    const unsigned busy = pgrants_->clear();
    if (busy != 0) log_.error("{} persistent grants still in use at teardown", busy);
  }
  pgrants_.reset();
  channel_.reset();
  ring_mapping_.reset();
  stopped_ = true;
}

Status VbdQueue::stop() noexcept {
  if (stopped_) return ok();
  stopping_ = true;
  // Answers of finished requests still reach the frontend.
  (void)publish();
  if (active_ != 0) return unexpected(EBUSY);
  teardown();
  return ok();
}

VbdQueue::~VbdQueue() {
  if (stopped_) return;
  if (active_ != 0) log_.error("destroyed with {} requests in flight", active_);
  teardown();
}

void VbdQueue::on_event(EvtchnPort) noexcept {
  stats_.ring.events_received.add();
  evtchn_.reported();  // the event channel stays masked until arm() unmasks it
}

VbdQueue::Slot* VbdQueue::alloc_slot() noexcept {
  Slot* s = free_;
  if (s == nullptr) return nullptr;
  free_ = s->next;
  s->next = nullptr;
  ++in_use_;
  stats_.in_flight.set(in_use_);
  return s;
}

void VbdQueue::free_slot(Slot& s) noexcept {
  s.phase = Phase::kFree;
  s.started = false;
  s.taken = {};
  s.burst = kNoBurst;
  s.nhandles = 0;
  s.iovcnt = 0;
  s.a = {};
  s.qos_waited = false;
  s.qos_bytes = 0;
  s.next = free_;
  free_ = &s;
  --in_use_;
  stats_.in_flight.set(in_use_);
}

bool VbdQueue::poll() noexcept {
  if (stopped_) return false;
  bool work = false;
  if (barrier_ != nullptr) work |= try_start_barrier();
  if (barrier_ == nullptr && held_head_ != nullptr) {
    Slot* held = held_head_;
    held_head_ = held_tail_ = nullptr;
    process_list(held);
    work = true;
  }
  if (qos_.limited()) qos_.refill(worker_.reactor().now());
  if (qos_head_ != nullptr && !stopping_) {
    // Waiting for credit (limits removed: all of them pass).
    Slot* waiting = qos_head_;
    qos_head_ = nullptr;
    if (Slot* pass = qos_gate(waiting)) {
      process_list(pass);
      work = true;
    }
  }
  if (qos_head_ == nullptr && barrier_ == nullptr && held_head_ == nullptr && !halted_ && !stopping_) {
    unsigned room = std::min<unsigned>(config_.burst, ring_->size() - in_use_);
    // Limited: no more than the IOPS credit pays for (at least the head,
    // to learn which way it goes and what it costs).
    if (qos_.limited() && room != 0) room = qos_.affordable(room);
    if (room != 0) {
      auto n = ring_->consume(std::span(consumed_.data(), room));
      if (!n) {
        halt("overran the ring", n.error());
      } else if (*n != 0) {
        Slot* head = nullptr;
        Slot* tail = nullptr;
        // One stamp for the burst: at most one clock read per iteration.
        const auto taken = worker_.reactor().fine_now();
        for (unsigned i = 0; i < *n; ++i) {
          Slot* s = alloc_slot();  // room <= free slots
          s->req = consumed_[i];
          s->taken = taken;
          if (tail != nullptr) {
            tail->next = s;
          } else {
            head = s;
          }
          tail = s;
        }
        process_list(qos_.limited() ? qos_gate(head) : head);
        work = true;
      }
    }
  }
  return publish() || work;
}

void VbdQueue::arm_purge() noexcept {
  if (purge_armed_ || !have_timer_ || !pgrants_) return;
  // Armed at most once per expiry: entries used meanwhile only make it
  // fire early, and the next arm() re-arms for the new oldest one.
  if (auto at = pgrants_->next_purge()) purge_armed_ = worker_.reactor().arm_timer(purge_timer_, *at).has_value();
}

bool VbdQueue::arm() noexcept {
  if (stopped_) return false;
  const bool late = publish();
  evtchn_.unmask_reported();
  arm_purge();
  if (barrier_ != nullptr) return late;  // completions wake us; nothing to consume meanwhile
  if (held_head_ != nullptr) return true;
  if (qos_head_ != nullptr) {
    // Nothing to do until the credit is due: the timer wakes us (the ring
    // is not re-checked; its requests wait there). Without a timer, poll.
    qos_arm();
    return late || !qos_armed_;
  }
  if (halted_ || stopping_ || in_use_ == ring_->size()) return late;
  // RING_FINAL_CHECK_FOR_REQUESTS: asks for an event, then re-checks.
  return ring_->final_check() || late;
}

bool VbdQueue::publish() noexcept {
  if (!responses_pending_) return false;
  responses_pending_ = false;
  if (ring_->flush()) evtchn_.notify();
  return true;
}

void VbdQueue::process_list(Slot* head) noexcept {
  Slot* batch[kMaxBurst];
  unsigned nb = 0;
  for (Slot* s = head; s != nullptr;) {
    Slot* next = s->next;
    s->next = nullptr;
    if (barrier_ != nullptr) {
      // Everything after a barrier waits until it is done.
      s->phase = Phase::kHeld;
      if (held_tail_ != nullptr) {
        held_tail_->next = s;
      } else {
        held_head_ = s;
      }
      held_tail_ = s;
    } else if (!s->req.indirect && !admit(*s, {})) {
      // Refused and answered. A direct request is admitted as it is taken
      // (all of it is in the private copy); an indirect one in dispatch(),
      // once its burst's descriptor pages are mapped.
    } else if (s->a.op == BLKIF_OP_WRITE_BARRIER) {  // admitted (a barrier is never indirect)
      dispatch(batch, nb);
      nb = 0;
      barrier_ = s;
      s->phase = Phase::kWaitBarrier;
      if (active_ != 0) stats_.barrier_drains.add();
    } else {
      batch[nb++] = s;
      if (nb == kMaxBurst) {
        dispatch(batch, nb);
        nb = 0;
      }
    }
    s = next;
  }
  dispatch(batch, nb);
  if (barrier_ != nullptr) (void)try_start_barrier();
}

void VbdQueue::set_qos(const QosLimits& limits, unsigned queues) noexcept {
  config_.qos = limits;
  config_.qos_queues = queues;
  qos_.configure(limits, queues, uint64_t{segment_capacity()} * kPageSize, worker_.reactor().now());
  if (stopped_) return;
  // The head's wait may be shorter now (or over: the next poll lets it go).
  qos_armed_ = false;
  qos_arm();
}

// Charges the requests of `head` (in ring order) while their direction has
// credit; the first one without, and everything after it, wait in
// qos_head_ (ring order is kept: a waiting read holds back the writes
// behind it, as a slow disk would). Returns the ones that may go.
VbdQueue::Slot* VbdQueue::qos_gate(Slot* head) noexcept {
  const auto now = worker_.reactor().now();
  if (qos_waiting_) {
    stats_.qos_throttled_ns.add(
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - qos_since_).count()));
  }
  qos_since_ = now;
  Slot* pass = nullptr;
  Slot* tail = nullptr;
  Slot* s = head;
  while (s != nullptr) {
    const QosCost c = qos_cost(s->req, config_.limits.sector_size, config_.limits.max_indirect_segments);
    if (!qos_.ready(c.dir)) break;
    Slot* next = s->next;
    s->next = nullptr;
    s->qos_dir = c.dir;
    s->qos_bytes = c.bytes;
    qos_.charge(c.dir, c.bytes);
    if (tail != nullptr) {
      tail->next = s;
    } else {
      pass = s;
    }
    tail = s;
    s = next;
  }
  qos_waiting_ = s != nullptr;
  if (s != nullptr) {
    // Fresh off the ring (nothing is consumed while requests wait, so all
    // of the list is), or the waiting list again. The same head still
    // waiting (a poll while the worker serves other queues) keeps its
    // timer: no timerfd_settime per iteration.
    const bool fresh = !s->qos_waited;
    qos_head_ = s;
    if (fresh) {
      for (Slot* w = s; w != nullptr; w = w->next) {
        stats_.qos_delayed.add();
        w->qos_waited = true;
      }
    }
    if (fresh || s != head) {
      qos_dir_ = qos_cost(s->req, config_.limits.sector_size, config_.limits.max_indirect_segments).dir;
      qos_armed_ = false;
    }
    qos_arm();
  }
  return pass;
}

// Arms the one-shot timer for when the waiting head's direction has a
// quantum of credit (blk_qos.h: kQosWakeQuantum), once per wait.
void VbdQueue::qos_arm() noexcept {
  if (qos_head_ == nullptr || qos_armed_) return;
  Reactor& r = worker_.reactor();
  if (!have_qos_timer_) {
    auto t = r.add_oneshot_timer([this] { qos_armed_ = false; });
    if (!t) {
      log_.error("no timer for the QoS wait ({}): polling instead", error_string(t.error()));
      return;
    }
    qos_timer_ = *t;
    have_qos_timer_ = true;
  }
  qos_armed_ = r.arm_timer(qos_timer_, qos_.ready_at(qos_dir_)).has_value();
}

bool VbdQueue::try_start_barrier() noexcept {
  if (barrier_ == nullptr || barrier_->phase != Phase::kWaitBarrier || active_ != 0) return false;
  Slot* b[1] = {barrier_};
  dispatch(b, 1);  // a failure answers it and clears barrier_
  return true;
}

bool VbdQueue::admit(Slot& s, std::span<const std::byte* const> descriptor_pages) noexcept {
  const BlkAdmission a = blk_admit(s.req, config_.limits, descriptor_pages, s.indirect_segs);
  if (a.ok()) {
    s.a = a.req;
    return true;
  }
  reject(s, a.verdict);
  if (a.verdict.fatal) halt("broke the protocol", EPROTO);
  return false;
}

void VbdQueue::halt(std::string_view what, int error) noexcept {
  if (halted_) return;
  halted_ = true;
  log_.error("frontend {} ({}): queue halted", what, error_string(error));
  if (on_halt_) on_halt_(error);
}

void VbdQueue::dispatch(Slot** batch, unsigned n) noexcept {
  if (n == 0) return;
  admit_indirect(batch, n);
  if (std::all_of(batch, batch + n, [](const Slot* s) { return s == nullptr; })) return;
  map_data(batch, n);
  for (unsigned i = 0; i < n; ++i) {
    if (batch[i] != nullptr) start_io(*batch[i]);
  }
}

void VbdQueue::count_op(const Slot& s) noexcept {
  // Each operation's count, and the byte counter its volume goes to
  // (flushes and barriers carry writes).
  Counter* op = nullptr;
  Counter* volume = &stats_.write_bytes;
  switch (s.a.op) {
    case BLKIF_OP_READ:
      op = &stats_.reads, volume = &stats_.read_bytes;
      break;
    case BLKIF_OP_WRITE:
      op = &stats_.writes;
      break;
    case BLKIF_OP_FLUSH_DISKCACHE:
      op = &stats_.flushes;
      break;
    case BLKIF_OP_WRITE_BARRIER:
      op = &stats_.barriers;
      break;
    case BLKIF_OP_DISCARD:
      op = &stats_.discards, volume = &stats_.discard_bytes;
      break;
    default:
      return;
  }
  if (s.a.indirect) stats_.indirect.add();
  op->add();
  volume->add(s.a.sectors * config_.limits.sector_size);
}

void VbdQueue::start_io(Slot& s) noexcept {
  s.started = true;
  ++active_;
  if (s.qos_bytes != 0) {
    // The admitted transfer, where the charge was an estimate (qos_cost).
    const uint64_t actual = s.a.op == BLKIF_OP_DISCARD ? 0 : s.a.sectors * config_.limits.sector_size;
    qos_.adjust(s.qos_dir, s.qos_bytes, actual);
    s.qos_bytes = actual;
  }
  switch (s.a.op) {
    case BLKIF_OP_DISCARD: {
      const uint64_t ss = config_.limits.sector_size;
      s.phase = Phase::kDiscard;
      s.prep_discard(s.a.sector * ss, s.a.sectors * ss, s.a.secure);
      channel_->submit(s);
      return;
    }
    case BLKIF_OP_WRITE_BARRIER:
      // Earlier requests are complete; make their writes durable first.
      s.phase = Phase::kPreFlush;
      s.prep_flush();
      channel_->submit(s);
      return;
    case BLKIF_OP_FLUSH_DISKCACHE:
      if (s.a.segs.empty()) {
        s.phase = Phase::kPostFlush;
        s.prep_flush();
        channel_->submit(s);
        return;
      }
      break;
    default:
      break;
  }
  s.phase = Phase::kData;
  next_phase(s);
}

// Builds and submits the data transfer (phase kData), or the next flush.
void VbdQueue::next_phase(Slot& s) noexcept {
  if (s.phase == Phase::kData) {
    const uint32_t ss = config_.limits.sector_size;
    unsigned cnt = 0;
    for (size_t k = 0; k < s.a.segs.size(); ++k) {
      const BlkSegment& seg = s.a.segs[k];
      std::byte* base = s.pages[k] + static_cast<size_t>(seg.first_sect) * ss;
      const size_t len = static_cast<size_t>(seg.last_sect - seg.first_sect + 1) * ss;
      // Segments adjacent in our mapping (whole pages of one burst mapping)
      // become one vector.
      if (cnt != 0 && static_cast<std::byte*>(s.iov[cnt - 1].iov_base) + s.iov[cnt - 1].iov_len == base) {
        s.iov[cnt - 1].iov_len += len;
      } else {
        s.iov[cnt++] = iovec{base, len};
      }
    }
    s.iovcnt = cnt;
    const uint64_t offset = s.a.sector * ss;
    if (s.a.op == BLKIF_OP_READ) {
      s.prep_read(s.iov.data(), cnt, offset);
    } else {
      if (config_.probe_guard != nullptr && !guard_write(s, offset, s.a.sectors * uint64_t{ss})) return;
      s.prep_write(s.iov.data(), s.iovcnt, offset);
    }
    channel_->submit(s);
    return;
  }
  s.prep_flush();
  channel_->submit(s);
}

// A write to a bare path probed as raw (ProbeGuard, image_open.h): one that
// reaches the disk's last block is decided on a private copy of that block,
// and the copy is what gets written (the guest may change its page between
// the check and the kernel's read of it). Writes below the block pay one
// comparison. False when the write was refused (answered).
bool VbdQueue::guard_write(Slot& s, uint64_t offset, uint64_t bytes) noexcept {
  const ProbeGuard& g = *config_.probe_guard;
  if (offset + bytes <= g.block) return true;
  const size_t len = g.block_len;
  // Requests are whole blocks inside the disk, so this one ends with the
  // last block; anything else is not decided on (refused).
  bool ok = offset <= g.block && offset + bytes == g.block + len && len <= kPageSize;
  if (ok && !s.guard_copy) {
    s.guard_copy = aligned_bytes(kPageSize);
    if (!s.guard_copy) {
      log_.guest("request {}: no memory to check its last block", s.req.id);
      finish(s, BLKIF_RSP_ERROR, BlkReason::kIoError);
      return false;
    }
  }
  unsigned n = s.iovcnt;
  if (ok) {
    // Copy the last `len` bytes out of the guest's pages and cut them from
    // the vector.
    uint8_t* copy = s.guard_copy.get();
    size_t at = len;
    while (at > 0 && n > 0) {
      iovec& v = s.iov[n - 1];
      const size_t take = std::min(v.iov_len, at);
      at -= take;
      std::memcpy(copy + at, static_cast<const uint8_t*>(v.iov_base) + v.iov_len - take, take);
      v.iov_len -= take;
      if (v.iov_len == 0) --n;
    }
    ok = at == 0 && !g.refuses(std::span<const uint8_t>(copy, len));
  }
  if (!ok) {
    if (!g.reported.exchange(true, std::memory_order_relaxed)) {
      log_.warn(
          "request {}: write to the last {} bytes refused: the disk was probed as raw and this would make it "
          "probe as VHD at its next attach (use \"raw:\" params to allow it; later refusals are only counted)",
          s.req.id, len);
    }
    finish(s, BLKIF_RSP_ERROR, BlkReason::kProbeGuard);
    return false;
  }
  s.iov[n++] = iovec{s.guard_copy.get(), len};
  s.iovcnt = n;
  return true;
}

void VbdQueue::on_done(Slot& s, int result) noexcept {
  if (result < 0) {
    const bool unsupported = result == -EOPNOTSUPP;
    log_.guest("request {} op {} failed: {}", s.req.id, s.req.op, error_string(-result));
    finish(s, unsupported ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR,
           unsupported ? BlkReason::kNotSupported : BlkReason::kIoError);
    return;
  }
  switch (s.phase) {
    case Phase::kPreFlush:
      if (!s.a.segs.empty()) {
        s.phase = Phase::kData;
        next_phase(s);
        return;
      }
      break;  // a barrier without data: one flush is all of it
    case Phase::kData:
      if (s.a.op == BLKIF_OP_FLUSH_DISKCACHE || s.a.op == BLKIF_OP_WRITE_BARRIER) {
        s.phase = Phase::kPostFlush;
        next_phase(s);
        return;
      }
      break;
    default:
      break;
  }
  finish(s, BLKIF_RSP_OKAY, BlkReason::kOk);
}

void VbdQueue::reject(Slot& s, BlkVerdict v) noexcept {
  log_.guest("request {} (op {}, {} segments) refused: {}", s.req.id, s.req.op, s.req.nr_segments,
             blk_reason_name(v.reason));
  finish(s, v.status, v.reason);
}

void VbdQueue::finish(Slot& s, int16_t status, BlkReason reason) noexcept {
  if (status != BLKIF_RSP_OKAY) {
    stats_.errors.count(reason);
    stats_.ring.error_responses.add();
  } else if (s.started) {
    count_op(s);
  }
  if (!s.started && s.qos_bytes != 0) qos_.adjust(s.qos_dir, s.qos_bytes, 0);  // refused: moved nothing
  // Persistent grants stay mapped (the frontend keeps them granted); a
  // request mapped on its own is unmapped before it is answered.
  // The iteration's time, not a clock read per request (a system call on
  // a PV dom0): idle timeouts are a minute.
  if (pgrants_ && s.nhandles != 0) pgrants_->release(std::span(s.handles.data(), s.nhandles), worker_.reactor().now());
  s.nhandles = 0;
  s.own.reset();
  if (s.started) --active_;
  if (&s == barrier_) barrier_ = nullptr;
  s.rsp_status = status;
  const uint32_t b = s.burst;
  if (b == kNoBurst) {
    respond(s);
    return;
  }
  s.next = bursts_[b].done;
  bursts_[b].done = &s;
  put_burst(b);
}

void VbdQueue::time_response(const Slot& s) noexcept {
  LatencyHistogram* h = nullptr;
  switch (s.a.op) {
    case BLKIF_OP_READ:
      h = &stats_.read_latency;
      break;
    case BLKIF_OP_WRITE:
      h = &stats_.write_latency;
      break;
    case BLKIF_OP_FLUSH_DISKCACHE:
    case BLKIF_OP_WRITE_BARRIER:
      h = &stats_.flush_latency;
      break;
    default:
      return;
  }
  h->record(s.taken, worker_.reactor().fine_now());
}

void VbdQueue::respond(Slot& s) noexcept {
  // Timed as count_op counts: requests that ran and succeeded (a refused
  // one has no admitted op). No clock read when the request was not stamped.
  if (s.started && s.rsp_status == BLKIF_RSP_OKAY && s.taken != std::chrono::steady_clock::time_point{}) {
    time_response(s);
  }
  // Each consumed request frees the slot its response takes.
  (void)ring_->push_response(s.req.id, s.req.op, s.rsp_status);
  responses_pending_ = true;
  free_slot(s);
}

}  // namespace xenpath
