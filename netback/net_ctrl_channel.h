// The transport of the netif control ring (feature-ctrl-ring): the ring page
// the frontend granted (ctrl-ring-ref), its event channel
// (event-channel-ctrl), and the requests on it answered by NetifCtrl
// (net_ctrl.h), as Linux's xenvif_ctrl_action()/process_ctrl_request():
// one response per request, in order, pushed after each burst with a
// notification when the ring macros ask for one.
//
// After a burst that changed the hash configuration (algorithm, flags, key
// or mapping) the owner is handed an immutable snapshot of it: the VIF's
// queues run on other threads and each takes the snapshot through its own
// reactor, never through shared mutable state.
//
// A producer index beyond the ring (a broken or hostile frontend) halts the
// channel for good and tells the owner (the device fails), as Linux
// disables the vif.
//
// Threads: started, polled and stopped on one worker reactor (the one of
// the VIF's queue 0). Guest memory: the ring page (mapped) and the key and
// mapping pages, read by grant copy only.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/guest_channel.h"
#include "common/log.h"
#include "common/reactor.h"
#include "common/ring.h"
#include "common/ring_types.h"
#include "common/stats.h"
#include "common/xen/grant_table.h"
#include "netback/net_ctrl.h"
#include "netback/net_queue.h"

namespace xenpath {

struct NetifCtrlStats {
  RingQueueStats ring;
  Counter hash_updates;  // bursts that changed the hash configuration
};

class NetifCtrlChannel final : public XenRingPoller {
 public:
  static constexpr unsigned kBurst = 32;

  struct Config {
    DomId frontend = 0;
    GrantRef ring_ref = 0;
    EvtchnPort remote_port = 0;
    uint32_t num_queues = 1;  // the VIF's queues (mapping entries must be below)
    std::string log_prefix = "vif ctrl: ";
  };
  // On the channel's thread, after a burst that changed the hash state.
  using HashSink = std::function<void(std::shared_ptr<const NetifCtrl>)>;
  using HaltSink = std::function<void(int error)>;

  // On the worker's thread: maps the ring, binds the channel, polls.
  static Result<std::unique_ptr<NetifCtrlChannel>> start(NetWorker& worker, const Config& config, NetifCtrlStats& stats,
                                                         HashSink on_hash = {}, HaltSink on_halt = {}) noexcept;
  // On the worker's thread: unbinds and unmaps.
  ~NetifCtrlChannel() override;

  [[nodiscard]] const NetifCtrl& state() const noexcept { return ctrl_; }
  [[nodiscard]] bool halted() const noexcept { return halted_; }

  // The reactor's and the worker's calls (channel thread).
  bool poll() noexcept override;
  bool arm() noexcept override;
  void on_event(EvtchnPort local) noexcept override;

 private:
  NetifCtrlChannel(NetWorker& worker, const Config& config, NetifCtrlStats& stats, HashSink on_hash,
                   HaltSink on_halt) noexcept;
  Status init() noexcept override;
  void teardown() noexcept override;

  Config config_;
  NetifCtrlStats& stats_;
  HashSink on_hash_;
  HaltSink on_halt_;
  DeviceLog log_;
  NetifCtrl ctrl_;
  GrantMapping ring_map_;
  BackRing<NetifCtrlRing> ring_;
  GuestEvtchn evtchn_;
  bool halted_ = false;
};

}  // namespace xenpath
