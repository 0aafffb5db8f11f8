#include "netback/net_queue_rx.h"

#include <sys/epoll.h>

#include <algorithm>

#include "common/guest_channel.h"
#include "common/xen/platform.h"

namespace xenpath {

namespace {

constexpr size_t kMaxRxSegs = 64;  // segments of one packet we deliver without dropping it
// Bytes of a frame's headers hashed for the control ring's HASH extra
// (Ethernet + tags + IPv6 with extension headers + the TCP ports).
constexpr size_t kHashHeaderBytes = 256;

}  // namespace

VifRxPath::~VifRxPath() = default;

Status VifRxPath::init() noexcept {
  const VifQueueConfig& config = core_.config;
  XP_TRY(map_guest_ring(core_.worker, config.frontend, {&config.rx_ring_ref, 1}, ring_map_, ring_, &core_.stats.rx_ring,
                        core_.log, "RX"));
  try {
    carry_.resize(ring_.size());
    pkts_.resize(config.rx_backlog);
    info_.resize(config.rx_backlog);
    if (config.inboxes.size() > 1) {
      if (config.queue_index >= config.inboxes.size()) return unexpected(EINVAL);
      steer_out_.resize(config.inboxes.size());
    }
    copies_.resize(static_cast<size_t>(ring_.size()) * 2 + kMaxRxSegs);
    rsps_.resize(ring_.size());
    batch_ = std::make_unique<RxBatch>(copies_.segs, copies_.owner, rsps_);
    segs_.resize(kMaxRxSegs);
    scratch_.resize(std::max<size_t>(kMaxRxSegs, ring_.size()));
  } catch (...) {
    return unexpected(ENOMEM);
  }
  Reactor& reactor = core_.worker.reactor();
  if (!steer_out_.empty()) {
    SteerInbox* inbox = config.inboxes[config.queue_index];
    XP_TRY(reactor.watch_fd(inbox->fd(), EPOLLIN, [inbox](uint32_t) { inbox->clear_wakeup(); }));
    watching_inbox_ = true;
  }
  fd_ = config.port->rx_wait_fd(config.port_queue);
  if (fd_ >= 0) {
    fd_watched_ = reactor.watch_fd(fd_, EPOLLIN, [](uint32_t) {}).has_value();
    if (!fd_watched_) {
      core_.log.warn("cannot watch the port's receive fd: polling it instead");
      fd_ = -1;
    }
  }
  return ok();
}

void VifRxPath::teardown() noexcept {
  Reactor& reactor = core_.worker.reactor();
  if (fd_watched_) reactor.unwatch_fd(fd_);
  fd_watched_ = false;
  if (watching_inbox_) reactor.unwatch_fd(core_.config.inboxes[core_.config.queue_index]->fd());
  watching_inbox_ = false;
  for (auto& b : steer_out_) b.release();
  drop_all();
  ring_map_.reset();
}

void VifRxPath::drop_all() noexcept {
  while (len_ > 0) {
    pkt::free(pkts_[head_]);
    pop();
  }
}

void VifRxPath::drop_queued() noexcept {
  // Packets waiting for the guest may hold guest pages (ours, when the
  // wire loops back; another VIF's): give them back, and what the port
  // has queued for us too (bounded).
  drop_all();
  for (auto& b : steer_out_) b.release();
  if (!steer_out_.empty()) (void)core_.config.inboxes[core_.config.queue_index]->discard();
  for (unsigned i = 0; i < 64; ++i) {
    PacketBuf* in[kVifMaxBurst];
    const size_t n = core_.config.port->rx_burst(core_.config.port_queue, in);
    if (n == 0) break;
    pkt::free_bulk({in, n});
  }
}

void VifRxPath::update_wait_fd(bool halted) noexcept {
  if (fd_ < 0) return;
  // A guest that takes nothing would otherwise keep the reactor spinning.
  const bool want = !halted && (stalled_ || len_ < pkts_.size());
  if (want && !fd_watched_) {
    fd_watched_ = core_.worker.reactor().watch_fd(fd_, EPOLLIN, [](uint32_t) {}).has_value();
  } else if (!want && fd_watched_) {
    core_.worker.reactor().unwatch_fd(fd_);
    fd_watched_ = false;
  }
}

bool VifRxPath::inbox_pending() const noexcept {
  return !steer_out_.empty() && !core_.config.inboxes[core_.config.queue_index]->empty();
}

bool VifRxPath::final_check() noexcept { return len_ > 0 && ring_.final_check(); }

void VifRxPath::push(PacketBuf* p, const FrameHash* hash, TimePoint now) noexcept {
  if (len_ == pkts_.size()) {
    core_.stats.rx_dropped.add();
    pkt::free(p);
    return;
  }
  // The guest's lack of buffers is measured from when a packet starts
  // waiting for them.
  if (len_ == 0) progress_ = now;
  const size_t slot = (head_ + len_) % pkts_.size();
  pkts_[slot] = p;
  Info& info = info_[slot];
  info.queued = now;
  info.has_hash = hash != nullptr;
  if (hash != nullptr) info.hash = *hash;
  ++len_;
}

void VifRxPath::pop() noexcept {
  head_ = (head_ + 1) % pkts_.size();
  --len_;
}

void VifRxPath::queue(PacketBuf* p, TimePoint now) noexcept {
  if (core_.config.multicast_control) {
    MulticastFilter::Mac dst{};
    if (pkt::copy_out(p, 0, {reinterpret_cast<std::byte*>(dst.data()), dst.size()}) != dst.size() ||
        !core_.config.multicast->accepts(dst)) {
      core_.stats.rx_dropped.add();
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
    if (target != core_.config.queue_index && target < steer_out_.size()) {
      SteeredRx& b = steer_out_[target];
      b.pkts[b.n] = p;
      b.hashes[b.n] = hash;
      if (++b.n == SteeredRx::kMax) {
        if (!core_.config.inboxes[target]->push(std::move(b))) core_.stats.rx_dropped.add(SteeredRx::kMax);
        b.n = 0;
      }
      return;
    }
  }
  admit(p, hp, now);
}

void VifRxPath::flush_steered() noexcept {
  for (size_t t = 0; t < steer_out_.size(); ++t) {
    SteeredRx& b = steer_out_[t];
    if (b.n == 0) continue;
    const unsigned n = b.n;
    // A refused batch (out of memory) frees its packets.
    if (!core_.config.inboxes[t]->push(std::move(b))) core_.stats.rx_dropped.add(n);
    b.n = 0;
  }
}

bool VifRxPath::take_steered() noexcept {
  if (steer_out_.empty()) return false;
  SteerInbox* inbox = core_.config.inboxes[core_.config.queue_index];
  if (inbox->empty()) return false;
  const auto now = core_.worker.reactor().now();
  // Bounded: a few batches per iteration.
  const size_t got = inbox->drain(
      [&](SteeredRx&& b) {
        for (unsigned i = 0; i < b.n; ++i) admit(b.pkts[i], &b.hashes[i], now);
        b.n = 0;  // every packet is ours now
      },
      4);
  return got > 0;
}

void VifRxPath::admit(PacketBuf* p, const FrameHash* hp, TimePoint now) noexcept {
  if (stalled_) {
    // Carrier off: what the host sends a stalled guest is dropped here
    // rather than held (Linux stops the vif's queue; the stack drops).
    core_.stats.rx_stall_dropped.add();
    pkt::free(p);
    return;
  }
  const PacketMeta m = pkt::meta(p);
  // Whether the guest takes a blank L4 checksum of this address family.
  const bool csum_offload = m.has(PacketMeta::kIpv6) ? core_.config.rx_ipv6_csum_offload : core_.config.rx_csum_offload;
  if (m.has(PacketMeta::kSegment)) {
    const bool supported = (m.has(PacketMeta::kIpv4) && core_.config.rx_gso_tcpv4) ||
                           (m.has(PacketMeta::kIpv6) && core_.config.rx_gso_tcpv6);
    if (!supported) {
      // The frontend cannot take it whole: cut it here.
      auto n = core_.config.pool->segment(p, {scratch_.data(), kMaxRxSegs});
      if (!n) {
        core_.stats.rx_dropped.add();
        pkt::free(p);
        return;
      }
      if (*n > 0) {
        pkt::free(p);  // the segments hold their own references
        core_.stats.rx_gso_segmented.add();
        for (size_t i = 0; i < *n; ++i) {
          PacketBuf* s = scratch_[i];
          // New lengths: the IPv4 header checksum is always redone here; the
          // L4 one too for a frontend without checksum offload, else its
          // partial form (pseudo-header) is rewritten for csum_blank.
          const bool ok = csum_offload ? pkt::complete_checksums(s, false) && pkt::prepare_partial_checksum(s)
                                       : pkt::complete_checksums(s, true);
          if (!ok || (!core_.config.rx_sg && pkt::length(s) > kPageSize)) {
            core_.stats.rx_dropped.add();
            pkt::free(s);
            continue;
          }
          push(s, hp, now);
        }
        return;
      }
    }
  }
  // A frontend without feature-sg takes one slot per packet (Linux caps
  // such a vif's MTU at 1500).
  if (!core_.config.rx_sg && pkt::length(p) > kPageSize) {
    core_.stats.rx_dropped.add();
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
    core_.stats.rx_dropped.add();
    pkt::free(p);
    return;
  }
  push(p, hp, now);
}

void VifRxPath::fetch() noexcept {
  // A stalled guest's packets are dropped as they come, so the port is
  // drained at full burst; otherwise only as far as the backlog has room.
  const size_t room = stalled_ ? core_.config.burst : std::min<size_t>(pkts_.size() - len_, core_.config.burst);
  if (room == 0) return;  // the guest is not taking: the port queue backs up and drops
  PacketBuf* in[kVifMaxBurst];
  size_t n = core_.config.port->rx_burst(core_.config.port_queue, {in, room});
  if (n == 0) return;
  if (core_.config.rx_gro && core_.config.rx_gso_tcpv4 && core_.config.rx_csum_offload && core_.config.rx_sg && n > 1) {
    pkt::CoalesceStats cs;
    pkt::CoalesceOptions co;
    co.max_segments = static_cast<uint16_t>(kMaxRxSegs);
    n = pkt::coalesce_tcp({in, n}, co, &cs);
    core_.stats.rx_gro_packets.add(cs.merged_packets);
    core_.stats.rx_gro_merged.add(cs.merged_frames);
  }
  const auto now = core_.worker.reactor().now();
  for (size_t i = 0; i < n; ++i) queue(in[i], now);
  flush_steered();
}

bool VifRxPath::check_stall(TimePoint now) noexcept {
  // Buffers the guest posted and we have not used yet.
  const bool posted = carry_len_ > 0 || ring_.unconsumed() > 0;
  if (stalled_) {
    if (!posted) return false;
    stalled_ = false;
    core_.stats.rx_stalled.set(0);
    progress_ = now;
    core_.log.info("guest RX resumed: it posts buffers again (carrier on)");
    return true;
  }
  bool work = false;
  // Packets older than the drain timeout are dropped (FIFO: the oldest
  // is at the head), so a slow guest cannot hold host memory for long.
  while (len_ > 0 && now - info_[head_].queued >= core_.config.rx_drain_timeout) {
    pkt::free(pkts_[head_]);
    pop();
    core_.stats.rx_expired.add();
    work = true;
  }
  if (core_.config.rx_stall_timeout.count() > 0 && len_ > 0 && !posted &&
      now - progress_ >= core_.config.rx_stall_timeout) {
    stalled_ = true;
    core_.stats.rx_stalls.add();
    core_.stats.rx_stalled.set(1);
    const size_t dropped = len_;
    while (len_ > 0) {
      pkt::free(pkts_[head_]);
      pop();
    }
    core_.stats.rx_stall_dropped.add(dropped);
    // Once per stall (not per packet): the guest may stay like this for good.
    core_.log.warn("guest RX stalled: no buffer posted for {} ms; {} queued packets dropped, carrier off",
                   core_.config.rx_stall_timeout.count(), dropped);
    work = true;
  }
  return work;
}

bool VifRxPath::deliver() noexcept {
  if (len_ == 0) return false;
  if (carry_len_ < carry_.size()) {
    auto n = ring_.consume({carry_.data() + carry_len_, carry_.size() - carry_len_});
    if (!n) {
      core_.halt("RX ring producer overflow");
      return false;
    }
    carry_len_ += *n;
  }
  RxBatch& batch = *batch_;
  batch.reset({carry_.data(), carry_len_}, core_.config.frontend);
  size_t planned = 0;  // packets moved to scratch_ for freeing after the copy
  bool dropped = false;
  again_ = false;
  while (len_ > 0 && planned < scratch_.size()) {
    PacketBuf* p = pkts_[head_];
    const Info& info = info_[head_];
    RxPacket rp;
    if (info.has_hash) {
      rp.has_hash = true;
      rp.hash_type = info.hash.type;
      rp.hash_value = info.hash.value;
    }
    RxVerdict v = RxVerdict::kTooBig;
    if (pkt::segment_count(p) <= segs_.size()) {
      const size_t ns = pkt::segments(p, segs_);
      rp.segs = {segs_.data(), ns};
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
      again_ = true;
      break;
    }
    pop();
    if (v == RxVerdict::kPlanned) {
      scratch_[planned++] = p;
    } else {
      core_.stats.rx_dropped.add();
      pkt::free(p);
      dropped = true;
    }
  }
  if (len_ > 0 && planned == scratch_.size()) again_ = true;
  if (batch.requests_used() == 0) return dropped;
  if (!batch.copies().empty()) {
    core_.stats.rx_copy_calls.add();
    auto r = core_.worker.grant_table().copy(batch.copies());
    if (!r) {
      for (auto& c : batch.copies()) c.status = GNTST_general_error;
    }
    const unsigned failed = batch.apply_copy_status();
    if (failed != 0) {
      core_.stats.rx_copy_failures.add(failed);
      core_.log.guest("RX: {} grant copies into the guest failed", failed);
    }
  }
  for (const auto& rsp : batch.responses()) (void)ring_.push_response(rsp);
  responses_ = true;
  core_.stats.rx_packets.add(batch.packets());
  core_.stats.rx_bytes.add(batch.bytes());
  pkt::free_bulk({scratch_.data(), planned});
  const unsigned used = batch.requests_used();
  std::copy(carry_.begin() + used, carry_.begin() + carry_len_, carry_.begin());
  carry_len_ -= used;
  progress_ = core_.worker.reactor().now();
  return true;
}

bool VifRxPath::poll() noexcept {
  bool work = take_steered();
  fetch();
  if (len_ > 0 || stalled_) work = check_stall(core_.worker.reactor().now());
  return deliver() || work;
}

}  // namespace xenpath
