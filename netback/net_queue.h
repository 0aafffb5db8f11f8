// One VIF queue (a TX ring, an RX ring, one or two event channels) between a
// guest and a PacketPort queue: the poller that drives its two paths.
//
// The guest TX path (ring -> port) is VifTxPath (net_queue_tx.h), the guest
// RX path (port -> ring) VifRxPath (net_queue_rx.h); what they share (the
// configuration, counters, log, halt state) is VifQueueCore
// (net_queue_core.h). VifQueue owns both paths, binds the event channels,
// and per reactor iteration collects released TX pages, runs TX then RX,
// collects again, and pushes each ring's responses with at most one
// notification per ring (one in all when the rings share a channel). Before
// the reactor sleeps it re-arms the channels and makes the final checks
// (released pages, cut bursts, new TX requests, steered packets, RX buffers
// for waiting packets), so no work is left behind an unarmed event.
//
// A frontend caught lying (net_protocol_tx.h's fatal cases, ring overflow)
// halts the queue for good, as Linux disables the vif; the halt callback
// tells the device.
//
// Threads: a VifQueue and its NetWorker belong to one reactor thread
// (start/stop/destruction run there); the exceptions are its paths' (the TX
// page free callback, the steering inboxes). Guest memory: through its
// paths only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "common/guest_channel.h"
#include "common/reactor.h"
#include "common/xen/event_channel.h"
#include "netback/net_ctrl.h"
#include "netback/net_queue_core.h"
#include "netback/net_queue_rx.h"
#include "netback/net_queue_tx.h"
#include "netback/net_rate.h"

namespace xenpath {

class VifQueue final : public XenRingPoller {
 public:
  static constexpr unsigned kMaxBurst = kVifMaxBurst;
  static constexpr std::chrono::milliseconds kHousekeepingPeriod = kVifHousekeepingPeriod;
  static constexpr uint16_t kTxCopyBelowDefault = kVifTxCopyBelowDefault;
  using Config = VifQueueConfig;
  using HaltSink = VifHaltSink;

  // On the worker's thread: maps both rings, binds the event channel(s),
  // starts polling. Worker, stats, port and pool must outlive the queue.
  static Result<std::unique_ptr<VifQueue>> start(NetWorker& worker, const Config& config, VifQueueStats& stats,
                                                 HaltSink on_halt = {}) noexcept;
  // On the worker's thread. EBUSY while guest pages are still attached to
  // packets somewhere (in the port, a peer, a queue); once it returns ok
  // nothing of the guest stays mapped or bound.
  Status stop() noexcept;
  // On the worker's thread, when stop() kept failing (a packet holding a
  // guest page never came back): stops everything else (polling, channels,
  // rings) but keeps the TX data mappings, so a late reader never sees an
  // unmapped page. The caller then leaks the queue on purpose (never
  // destroys it: the free callback may still run).
  void abandon() noexcept;
  ~VifQueue() override;

  // Queue thread: the control ring's hash configuration (RX packets then
  // carry a HASH extra when the algorithm is Toeplitz); null for none.
  // The hash is always this VIF's own (its key, its types): a hash the
  // packet carries (PacketMeta::hash: another guest's TX extra, a NIC's
  // RSS) is never passed on, as Linux's xenvif_set_skb_hash recomputes
  // skb->hash and only a software hash of its own becomes an extra.
  void set_hash(std::shared_ptr<const NetifCtrl> hash) noexcept { rx_.set_hash(std::move(hash)); }
  // Queue thread: the backend's "rate" key changed (xen_net_rate_changed).
  void set_rate(const RateSpec& spec) noexcept { tx_.set_rate(spec); }
  // Queue thread: the frontend rewrote request-multicast-control. Off lets
  // every multicast frame through; on filters against the list the guest
  // built (kept while off, as Linux keeps it).
  void set_multicast_control(bool on) noexcept { rx_.set_multicast_control(on); }
  [[nodiscard]] bool multicast_control() const noexcept { return core_.config.multicast_control; }

  [[nodiscard]] bool halted() const noexcept { return core_.halted; }
  [[nodiscard]] bool rx_stalled() const noexcept { return rx_.stalled(); }
  [[nodiscard]] size_t rx_queued() const noexcept { return rx_.queued(); }
  [[nodiscard]] unsigned tx_pages_in_flight() const noexcept { return tx_.pages_in_flight(); }

  // The reactor's and the worker's calls (queue thread): one iteration's
  // work, the re-arm before sleeping, an event on one of our channels.
  bool poll() noexcept override;
  bool arm() noexcept override;
  void on_event(EvtchnPort local) noexcept override;

 private:
  VifQueue(NetWorker& worker, const Config& config, VifQueueStats& stats, HaltSink on_halt) noexcept;
  Status init() noexcept override;
  void teardown() noexcept override { shut_down(/*keep_tx_pages=*/false); }
  // teardown(), or abandon()'s (keep_tx_pages).
  void shut_down(bool keep_tx_pages) noexcept;
  bool publish() noexcept;
  void arm_housekeeping() noexcept;

  VifQueueCore core_;
  VifTxPath tx_;
  VifRxPath rx_;

  GuestEvtchn tx_evtchn_;
  GuestEvtchn rx_evtchn_;  // unbound when the rings share tx_evtchn_
  bool shared_evtchn_ = true;
  bool stopped_ = false;
  // Housekeeping: a one-shot timer armed by arm() for `period_` from now,
  // only while something needs it (VifQueue::arm), so an idle queue on a
  // port with a receive wake-up has no periodic wake-up at all.
  Reactor::TimerId timer_ = 0;
  bool have_timer_ = false;
  bool timer_armed_ = false;
  std::chrono::microseconds period_{0};
};

}  // namespace xenpath
